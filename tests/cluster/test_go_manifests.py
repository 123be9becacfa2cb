"""The Go project's deploy/ manifests, exactly as it publishes them in its Go module
(tools/go-webhook, pinned), with only the image replaced by ours: cert-manager issues the
certificate and injects the caBundle, our image listens on 443 as UID 65532 on a node whose
containerd keeps unprivileged ports from 1024 (kind's node, configured so), the API server
sends v1beta1 reviews and pods are mutated
(docs/migrate.md#go-manifests)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from . import go_webhook, load
from .conftest import RELEASE, RELEASE_NAMESPACE, Kubectl, released
from .test_cert_manager import ensure_cert_manager
from .test_chart_lifecycle import CHART, IMAGE_VALUES


@pytest.fixture
def go_manifests_with_our_image(kubectl: Kubectl) -> Iterator[list[dict]]:
    """Our release uninstalled (so that only these manifests' webhook answers), the manifests
    applied; afterwards removed and our default release back."""
    ensure_cert_manager(kubectl)
    _, deploy = go_webhook.build()
    documents = go_webhook.published(deploy, released()["image"])
    kubectl.helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", "--timeout", "3m", timeout=200)
    try:
        kubectl.apply(*documents)
        kubectl("-n", go_webhook.NAMESPACE, "wait", "--for=condition=Ready", f"certificate/{go_webhook.NAME}",
                "--timeout=180s", timeout=190)
        kubectl("-n", go_webhook.NAMESPACE, "rollout", "status", f"deployment/{go_webhook.NAME}",
                "--timeout=180s", timeout=190)
        yield documents
    finally:
        go_webhook.remove(kubectl)
        kubectl.helm("install", RELEASE, CHART, "-n", RELEASE_NAMESPACE, "--create-namespace", *IMAGE_VALUES,
                     "--wait", "--timeout", "5m", timeout=320)


def test_only_the_image_changes_and_pods_are_mutated_through_v1beta1(
        kubectl: Kubectl, namespace: str, go_manifests_with_our_image: list[dict]) -> None:
    (hook,) = kubectl.json("get", "mutatingwebhookconfiguration", go_webhook.NAME)["webhooks"]
    assert hook["admissionReviewVersions"] == ["v1beta1"] and hook["clientConfig"].get("caBundle")
    (deployment,) = [d for d in go_manifests_with_our_image if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "--port" not in " ".join(container["command"]) and container["imagePullPolicy"] == "Always"

    kubectl.apply(load.service_account(namespace))
    probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "probe-", "namespace": namespace},
             "spec": {"serviceAccountName": "load", "containers": [{"name": "c", "image": "probe"}]}}
    kubectl.wait_mutated(probe, load.ROLE_ARN, "the Go manifests with our image never mutated a pod")
    pod = json.loads(kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(probe)))
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["AWS_ROLE_ARN"] == load.ROLE_ARN
    assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"

    logs = kubectl("-n", go_webhook.NAMESPACE, "logs", f"deployment/{go_webhook.NAME}")
    assert '"port":443' in logs and '"effective":true' in logs and "Traceback" not in logs
    assert any('"event":"admission"' in line and '"decision":"mutated"' in line for line in logs.splitlines())
