"""Admission warnings on the real API server (docs/mutation.md#warnings): `kubectl apply` of a
pod whose container presets AWS_ROLE_ARN prints our warning on stderr, and a pod with a volume
named aws-iam-token is stored unchanged with its warning (§volume-collision); a container whose
preset env names our token file is stored with the mount Go would leave out, and a hostNetwork
pod with its warning; an opted-in ServiceAccount's pods are stored with the session name."""

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
    assert ("Warning: pod-identity-injector: container app: AWS_ROLE_ARN without AWS_WEB_IDENTITY_TOKEN_FILE; "
            "nothing injected") in proc.stderr


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


async def test_a_preset_pair_naming_our_file_is_stored_with_the_mount_and_a_host_network_pod_is_warned(
        tools, control_plane, admin, namespace, tmp_path):  # noqa: F811
    _, kubectl = tools
    env = [{"name": "AWS_ROLE_ARN", "value": ROLE},
           {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"},
           {"name": "AWS_REGION", "value": "eu-west-1"}, {"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"}]
    manifest = pod_manifest("preset-pair", hostNetwork=True,
                            containers=[{"name": "app", "image": "registry.k8s.io/pause:3.10", "env": env}])
    proc = apply(kubectl, control_plane.kubeconfig, namespace, manifest, tmp_path)
    assert "Warning: pod-identity-injector: container app names the token file but does not mount it; mount added" \
        in proc.stderr
    assert "Warning: pod-identity-injector: hostNetwork pod: an SDK that misses its token may use the node's role" \
        in proc.stderr
    stored = await admin.read_pod(namespace, "preset-pair")
    (container,) = stored["spec"]["containers"]
    assert [m["name"] for m in container["volumeMounts"] if m["name"] == "aws-iam-token"] == ["aws-iam-token"]
    assert container["env"] == env  # the user's env, untouched


async def test_an_opted_in_service_account_gets_the_session_name_from_the_downward_api(
        tools, control_plane, admin, namespace, tmp_path):  # noqa: F811
    _, kubectl = tools
    await admin.service_account(namespace, "named", {ROLE_ANNOTATION: ROLE,
                                                     "eks.amazonaws.com/role-session-name-from-pod": "true",
                                                     "eks.amazonaws.com/region": "eu-central-1"})
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "named"},
                "spec": {"serviceAccountName": "named",
                         "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}}
    apply(kubectl, control_plane.kubeconfig, namespace, manifest, tmp_path)
    stored = await admin.read_pod(namespace, "named")
    env = {e["name"]: e for e in stored["spec"]["containers"][0]["env"]}
    assert env["AWS_ROLE_SESSION_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["AWS_REGION"]["value"] == env["AWS_DEFAULT_REGION"]["value"] == "eu-central-1"
