"""kOps's configuration of the Go webhook, end to end with ours (docs/migrate.md#kops): role
mappings from the watched ConfigMap (no annotation on the ServiceAccount), the audience
`amazonaws.com`, regional STS, a default region, and `failurePolicy: Fail` behind kOps's
objectSelector. boto3 in a pod gets credentials from the STS stand-in, which trusts the OIDC
provider for the audience `amazonaws.com` only, as kOps registers it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import RELEASE, RELEASE_NAMESPACE, Kubectl
from .sdk import sdk_pod, sdk_report, used_provider
from .standin_fixtures import ACCOUNT, ISSUER, Standin, new_secret, start_sts, trust_policy
from .test_chart_lifecycle import CHART, IMAGE_VALUES

ROLE = f"arn:aws:iam::{ACCOUNT}:role/kops-app"
AUDIENCE = "amazonaws.com"
REGION = "eu-west-1"
# kOps's objectSelector: its own static pods and the API server never go to the webhook.
KOPS_OBJECT_SELECTOR = {"matchExpressions": [
    {"key": "kops.k8s.io/managed-by", "operator": "NotIn", "values": ["kops"]},
    {"key": "k8s-app", "operator": "NotIn", "values": ["kube-apiserver"]}]}


def kops_values(namespace: str) -> list[str]:
    mapping = {f"{namespace}/app": {"RoleARN": ROLE, "Audience": AUDIENCE, "UseRegionalSTS": True,
                                    "TokenExpiration": 86400}}
    return ["--set", f"config.tokenAudience={AUDIENCE}", "--set", "config.stsRegionalEndpoint=true",
            "--set", f"config.awsDefaultRegion={REGION}",
            "--set", "configMap.enabled=true", "--set", "configMap.create=true",
            "--set-json", f"configMap.config={json.dumps(mapping)}",
            "--set", "webhook.failurePolicy=Fail",
            "--set-json", f"webhook.objectSelector={json.dumps(KOPS_OBJECT_SELECTOR)}"]


def probe(namespace: str, labels: dict[str, str] | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "probe-", "namespace": namespace, "labels": labels or {}},
            "spec": {"serviceAccountName": "app", "containers": [{"name": "c", "image": "probe"}]}}


def dry_run(kubectl: Kubectl, pod: dict) -> subprocess.CompletedProcess:
    """A server-side dry run of `pod`: its answer, or the API server's refusal on stderr."""
    return subprocess.run([kubectl.binary, "create", "--dry-run=server", "-o", "json", "-f", "-"],
                          input=json.dumps(pod), capture_output=True, text=True, env=kubectl.env, timeout=60,
                          check=False)


@pytest.fixture
def kops(kubectl: Kubectl, namespace: str, tmp_path: Path) -> Iterator[Standin]:
    """The chart configured as kOps configures the Go webhook, and the STS stand-in; the
    default install again afterwards."""
    roles = {ROLE: trust_policy(namespace, "app", audience=AUDIENCE)}
    sts = start_sts(tmp_path, new_secret(), roles)
    sts.write_config({"account": ACCOUNT, "providers": {ISSUER: [AUDIENCE]}, "roles": roles})
    # The ServiceAccount carries no annotation: its role comes from the ConfigMap alone.
    kubectl.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": namespace}})
    try:
        kubectl.helm("upgrade", RELEASE, CHART, "-n", RELEASE_NAMESPACE, "--reuse-values", *kops_values(namespace),
                     "--wait", "--timeout", "5m", timeout=320)
        kubectl.wait_mutated(probe(namespace), ROLE, "the kOps-configured webhook never injected the mapped role")
        yield sts
    finally:
        sts.stop()
        kubectl.helm("upgrade", RELEASE, CHART, "-n", RELEASE_NAMESPACE, "--reset-values", *IMAGE_VALUES,
                     "--wait", "--timeout", "5m", timeout=320)


def test_boto3_gets_credentials_from_the_config_map_role_with_kops_flags(
        kubectl: Kubectl, namespace: str, kops: Standin) -> None:
    pod = sdk_pod(namespace, "sdk", "app")
    container = pod["spec"]["containers"][0]
    # The region is the webhook's (--aws-default-region), so none of the pod's own.
    container["env"] = [e for e in container["env"] if e["name"] not in ("AWS_DEFAULT_REGION", "AWS_REGION")]
    kubectl.apply(pod)
    report = sdk_report(kubectl, namespace, "sdk")
    assert report["ok"], report
    assert used_provider(report, "web-identity"), report
    assert report["arn"].startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/kops-app/")
    assert report["token"]["aud"] == [AUDIENCE]
    assert report["env"]["AWS_ROLE_ARN"] == ROLE
    assert report["env"]["AWS_STS_REGIONAL_ENDPOINTS"] == "regional"
    assert (report["env"]["AWS_DEFAULT_REGION"], report["env"]["AWS_REGION"]) == (REGION, REGION)
    allowed = [d for d in kops.decisions() if d.get("action") == "AssumeRoleWithWebIdentity"]
    assert allowed and allowed[-1]["verdict"] == "allow"


def test_fail_behind_the_object_selector_refuses_only_the_pods_it_selects(
        kubectl: Kubectl, namespace: str, kops: Standin) -> None:
    (hook,) = kubectl.json("get", "mutatingwebhookconfiguration", RELEASE)["webhooks"]
    assert hook["failurePolicy"] == "Fail"
    for expression in KOPS_OBJECT_SELECTOR["matchExpressions"]:
        assert expression in hook["objectSelector"]["matchExpressions"]
    kops_pod = probe(namespace, {"kops.k8s.io/managed-by": "kops"})
    answer = dry_run(kubectl, kops_pod)
    assert answer.returncode == 0 and ROLE not in answer.stdout, answer.stderr

    # With no webhook replica, a selected pod is refused; kOps's own pods are still created.
    replicas = kubectl.json("-n", RELEASE_NAMESPACE, "get", "deployment", RELEASE)["spec"]["replicas"]
    kubectl("-n", RELEASE_NAMESPACE, "scale", "deployment", RELEASE, "--replicas=0")
    kubectl("-n", RELEASE_NAMESPACE, "wait", "--for=delete", "pod", "-l", f"app.kubernetes.io/instance={RELEASE}",
            "--timeout=120s", check=False, timeout=130)
    refused = dry_run(kubectl, probe(namespace))
    assert refused.returncode != 0 and "failed calling webhook" in refused.stderr, refused
    assert dry_run(kubectl, kops_pod).returncode == 0
    kubectl("-n", RELEASE_NAMESPACE, "scale", "deployment", RELEASE, f"--replicas={replicas}")
    kubectl("-n", RELEASE_NAMESPACE, "rollout", "status", "deployment", RELEASE, "--timeout=180s", timeout=190)
    kubectl.wait_mutated(probe(namespace), ROLE, "the webhook did not come back")
