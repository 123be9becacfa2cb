"""Admission warnings on the real API server (docs/mutation.md#warnings): `kubectl apply` of a
pod whose container presets AWS_ROLE_ARN prints our warning on stderr, and a pod with a volume
named aws-iam-token is stored unchanged with its warning (§volume-collision)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest_asyncio
import yaml

from .api import ROLE_ANNOTATION, Kube
from .test_chart import tools  # noqa: F401  (the fixture: helm and kubectl from tools/get-helm.sh)
from .webhooks import Webhook

ROLE = "arn:aws:iam::111122223333:role/e2e-warnings"


def apply(kubectl: str, kubeconfig: Path, namespace: str, manifest: dict, workdir: Path) -> subprocess.CompletedProcess:
    path = workdir / f"{manifest['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    proc = subprocess.run([kubectl, "apply", "-n", namespace, "-f", str(path)], capture_output=True, text=True,
                          env={**os.environ, "KUBECONFIG": str(kubeconfig)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def pod_manifest(name: str, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"serviceAccountName": "app", **spec}}


@pytest_asyncio.fixture(loop_scope="session")  # every e2e coroutine shares the session loop
async def namespace(admin: Kube, webhook: Webhook) -> str:
    ns = await admin.namespace("e2e-warnings", webhook.namespace_labels)
    await admin.service_account(ns, "app", {ROLE_ANNOTATION: ROLE})
    return ns


async def test_kubectl_apply_of_a_pod_with_a_preset_env_var_prints_our_warning(tools, control_plane, namespace,  # noqa: F811
                                                                              tmp_path):
    _, kubectl = tools
    preset = [{"name": "app", "image": "registry.k8s.io/pause:3.10",
               "env": [{"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::111122223333:role/hand-made"}]}]
    proc = apply(kubectl, control_plane.kubeconfig, namespace, pod_manifest("preset", containers=preset), tmp_path)
    assert "Warning: pod-identity-injector: container app presets AWS_ROLE_ARN; no credentials injected into it" \
        in proc.stderr


async def test_a_volume_collision_is_stored_unchanged_with_a_warning(tools, control_plane, admin, namespace,  # noqa: F811
                                                                     tmp_path):
    _, kubectl = tools
    manifest = pod_manifest("collision", containers=[{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
                            volumes=[{"name": "aws-iam-token", "emptyDir": {}}])
    proc = apply(kubectl, control_plane.kubeconfig, namespace, manifest, tmp_path)
    assert ("Warning: pod-identity-injector: volume aws-iam-token (emptyDir) already exists; pod left without AWS "
            "credentials") in proc.stderr
    stored = await admin.read_pod(namespace, "collision")
    assert [v["name"] for v in stored["spec"]["volumes"] if v["name"] == "aws-iam-token"] == ["aws-iam-token"]
    assert not any(e["name"].startswith("AWS_") for c in stored["spec"]["containers"] for e in c.get("env") or [])
