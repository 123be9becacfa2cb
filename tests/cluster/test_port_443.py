"""Port 443 as UID 65532, as the Go webhook's manifests ask for it (no --port), on a node whose
containerd keeps unprivileged ports at 1024 (docs/image.md#port-443): the released image binds it
with the default capabilities, and without NET_BIND_SERVICE it exits 2 with one line."""

from __future__ import annotations

import time
from pathlib import Path

from .conftest import Kubectl, released
from serving import EXAMPLES, make_certs

ARGS = ["--port=443", "--metrics-port=0", "--tls-cert=/certs/tls.crt", "--tls-key=/certs/tls.key",
        "--service-account=/manifests/serviceaccount.yaml"]


def webhook_pod(namespace: str, name: str, security_context: dict | None = None) -> dict:
    """Our released image as the Go manifests run it: `/webhook` and flags, no securityContext."""
    container = {"name": "webhook", "image": released()["image"], "command": ["/webhook", *ARGS],
                 "volumeMounts": [{"name": "certs", "mountPath": "/certs", "readOnly": True},
                                  {"name": "manifests", "mountPath": "/manifests", "readOnly": True}],
                 "readinessProbe": {"httpGet": {"path": "/readyz", "port": 443, "scheme": "HTTPS"}, "periodSeconds": 2}}
    if security_context:
        container["securityContext"] = security_context
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                     "terminationGracePeriodSeconds": 1, "containers": [container],
                     "volumes": [{"name": "certs", "secret": {"secretName": "serving"}},
                                 {"name": "manifests", "configMap": {"name": "manifests"}}]}}


def prepare(kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    make_certs(tmp_path)
    kubectl("-n", namespace, "create", "secret", "tls", "serving", f"--cert={tmp_path / 'tls.crt'}",
            f"--key={tmp_path / 'tls.key'}")
    kubectl("-n", namespace, "create", "configmap", "manifests",
            f"--from-file=serviceaccount.yaml={EXAMPLES / 'serviceaccount.yaml'}")


def wait_for(kubectl: Kubectl, namespace: str, pod: str, done, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = kubectl.json("-n", namespace, "get", "pod", pod)
        if done(state):
            return state
        assert time.monotonic() < deadline, f"{namespace}/{pod}: {state.get('status')}"
        time.sleep(1)


def test_the_image_binds_443_as_nonroot_with_the_default_capabilities(
        kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    prepare(kubectl, namespace, tmp_path)
    kubectl.apply(webhook_pod(namespace, "on-443"))
    pod = wait_for(kubectl, namespace, "on-443", lambda p: any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in p["status"].get("conditions") or []))
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    logs = kubectl("-n", namespace, "logs", "on-443")
    assert '"effective":true' in logs and '"event":"port below 1024: NET_BIND_SERVICE"' in logs
    assert '"port":443' in logs and "Traceback" not in logs


def test_without_net_bind_service_it_exits_2_with_one_line(kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    prepare(kubectl, namespace, tmp_path)
    kubectl.apply(webhook_pod(namespace, "no-cap", {"capabilities": {"drop": ["ALL"]}}))
    pod = wait_for(kubectl, namespace, "no-cap", lambda p: p["status"].get("phase") == "Failed")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 2
    logs = kubectl("-n", namespace, "logs", "no-cap")
    assert "Traceback" not in logs
    assert logs.strip().splitlines()[-1].startswith(
        "pod-identity-injector: --port=443: cannot listen: permission denied. Ports below 1024 need NET_BIND_SERVICE")
