"""EKS Pod Identity end to end: the identities file reaches the webhook through the chart, the
webhook injects container credentials, and boto3 gets them from a Pod Identity Agent stand-in at
169.254.170.23 that validates the pod's projected token with a real TokenReview."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import RELEASE, RELEASE_NAMESPACE, Kubectl
from .sdk import sdk_pod, sdk_report
from .standin_fixtures import ACCOUNT, Standin, new_secret, start_agent, start_sts
from .test_chart_lifecycle import CHART, IMAGE_VALUES

ROLE = f"arn:aws:iam::{ACCOUNT}:role/pod-identity-app"


@pytest.fixture
def pod_identity(kubectl: Kubectl, namespace: str, tmp_path: Path) -> Iterator[tuple[Standin, Standin]]:
    """The chart with containerCredentials on (a ConfigMap it creates), and both stand-ins; the
    default install again afterwards."""
    secret = new_secret()
    agent = start_agent(tmp_path, secret, [{"namespace": namespace, "serviceAccount": "app", "roleArn": ROLE}])
    sts = start_sts(tmp_path, secret, {})
    kubectl.helm("upgrade", RELEASE, CHART, "-n", RELEASE_NAMESPACE, "--reuse-values",
                 "--set", "containerCredentials.enabled=true",
                 "--set", "containerCredentials.source=configMap",
                 "--set", "containerCredentials.configMap.create=true",
                 "--set", f"containerCredentials.configMap.identities[0].namespace={namespace}",
                 "--set", "containerCredentials.configMap.identities[0].serviceAccount=app",
                 "--wait", "--timeout", "5m", timeout=320)
    # `--wait` returns once the new replicas are ready; the old ones may still answer for a few
    # seconds (their shutdown delay), without the identities file. Wait for the new answer.
    probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "probe-", "namespace": namespace},
             "spec": {"serviceAccountName": "app", "containers": [{"name": "c", "image": "probe"}]}}
    kubectl.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": namespace}})
    kubectl.wait_mutated(probe, "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                         "the upgraded webhook never injected container credentials")
    try:
        yield agent, sts
    finally:
        agent.stop()
        sts.stop()
        kubectl.helm("upgrade", RELEASE, CHART, "-n", RELEASE_NAMESPACE, "--reset-values", *IMAGE_VALUES,
                     "--wait", "--timeout", "5m", timeout=320)


def test_the_sdk_gets_container_credentials_from_the_agent(
        kubectl: Kubectl, namespace: str, pod_identity: tuple[Standin, Standin]) -> None:
    agent, _ = pod_identity
    kubectl.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": namespace}},
                  sdk_pod(namespace, "sdk", "app"))
    report = sdk_report(kubectl, namespace, "sdk")
    assert report["env"]["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == "http://169.254.170.23/v1/credentials"
    assert "AWS_ROLE_ARN" not in report["env"]
    assert report["token"]["aud"] == ["pods.eks.amazonaws.com"]
    assert report["method"] == "container-role"
    assert report["ok"], report
    assert report["arn"].startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/pod-identity-app/")
    served = [d for d in agent.decisions() if d.get("verdict") == "allow"]
    assert served, agent.decisions()
