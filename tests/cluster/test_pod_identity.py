"""EKS Pod Identity end to end: the identities file reaches the webhook through the chart, the
webhook injects container credentials, and each SDK (boto3, Go v2, Java v2, JavaScript v3:
tests/cluster/sdk.py) gets them from a Pod Identity Agent stand-in at 169.254.170.23 that
validates the pod's projected token with a real TokenReview."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .conftest import RELEASE, RELEASE_NAMESPACE, Kubectl
from .sdk import SDKS, sdk_pod, sdk_report, used_provider
from .standin_fixtures import ACCOUNT, Standin, new_secret, start_agent, start_sts
from .test_chart_lifecycle import CHART, IMAGE_VALUES

ROLE = f"arn:aws:iam::{ACCOUNT}:role/pod-identity-app"


@dataclass
class PodIdentity:
    namespace: str
    agent: Standin
    sts: Standin


@pytest.fixture(scope="module")
def pod_identity(kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodIdentity]:
    """A namespace with the ServiceAccount `app`, the chart with containerCredentials on for it
    (a ConfigMap it creates), and both stand-ins, for all the SDKs' tests of this module; the
    default install again afterwards."""
    tmp_path = tmp_path_factory.mktemp("pod-identity")
    namespace = f"smoke-{uuid.uuid4().hex[:8]}"
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
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
        yield PodIdentity(namespace, agent, sts)
    finally:
        agent.stop()
        sts.stop()
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        kubectl.helm("upgrade", RELEASE, CHART, "-n", RELEASE_NAMESPACE, "--reset-values", *IMAGE_VALUES,
                     "--wait", "--timeout", "5m", timeout=320)


@pytest.mark.parametrize("sdk", SDKS)
def test_the_sdk_gets_container_credentials_from_the_agent(kubectl: Kubectl, pod_identity: PodIdentity,
                                                           sdk: str) -> None:
    namespace = pod_identity.namespace
    kubectl.apply(sdk_pod(namespace, f"sdk-{sdk}", "app", sdk))
    report = sdk_report(kubectl, namespace, f"sdk-{sdk}")
    assert report["env"]["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == "http://169.254.170.23/v1/credentials"
    assert "AWS_ROLE_ARN" not in report["env"]
    assert report["token"]["aud"] == ["pods.eks.amazonaws.com"]
    assert report["ok"], report
    assert report["sdk"] == sdk and used_provider(report, "container-credentials"), report
    assert report["arn"].startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/pod-identity-app/")
    served = [d for d in pod_identity.agent.decisions() if d.get("verdict") == "allow"]
    assert served and served[-1]["pod"] == f"sdk-{sdk}", pod_identity.agent.decisions()
