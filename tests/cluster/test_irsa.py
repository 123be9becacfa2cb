"""The IRSA chain end to end, in real pods: the webhook injects, the kubelet projects the token,
boto3's default chain calls AssumeRoleWithWebIdentity on an STS stand-in that checks the token
against the cluster's discovery document and JWKS and the role's trust policy, as AWS does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Kubectl
from .sdk import sdk_pod, sdk_report
from .standin_fixtures import ACCOUNT, ISSUER, Standin, new_secret, start_sts, trust_policy

ROLE = f"arn:aws:iam::{ACCOUNT}:role"


@pytest.fixture
def sts(tmp_path: Path, namespace: str) -> Iterator[Standin]:
    roles = {
        f"{ROLE}/irsa-app": trust_policy(namespace, "app"),
        f"{ROLE}/irsa-custom": trust_policy(namespace, "custom", audience="custom-audience"),
        f"{ROLE}/irsa-other": trust_policy(namespace, "somebody-else"),
    }
    standin = start_sts(tmp_path, new_secret(), roles)
    yield standin
    standin.stop()


def service_account(namespace: str, name: str, role: str, **annotations: str) -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
        "name": name, "namespace": namespace,
        "annotations": {"eks.amazonaws.com/role-arn": f"{ROLE}/{role}",
                        **{f"eks.amazonaws.com/{k.replace('_', '-')}": v for k, v in annotations.items()}}}}


def test_the_sdk_assumes_the_role_with_the_injected_token(kubectl: Kubectl, namespace: str, sts: Standin) -> None:
    kubectl.apply(service_account(namespace, "app", "irsa-app"), sdk_pod(namespace, "sdk", "app"))
    report = sdk_report(kubectl, namespace, "sdk")
    assert report["method"] == "assume-role-with-web-identity"
    assert report["ok"], report
    assert report["arn"].startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/irsa-app/")
    assert report["account"] == ACCOUNT
    assert report["token"]["iss"] == ISSUER and report["token"]["aud"] == ["sts.amazonaws.com"]
    allowed = [d for d in sts.decisions() if d.get("action") == "AssumeRoleWithWebIdentity"]
    assert allowed and allowed[-1]["verdict"] == "allow"
    assert allowed[-1]["sub"] == f"system:serviceaccount:{namespace}:app"


def test_audience_expiration_and_regional_sts_annotations_reach_the_sdk(
        kubectl: Kubectl, namespace: str, sts: Standin) -> None:
    kubectl.apply(service_account(namespace, "custom", "irsa-custom", audience="custom-audience",
                                  token_expiration="3600", sts_regional_endpoints="true"),
                  sdk_pod(namespace, "sdk", "custom"))
    report = sdk_report(kubectl, namespace, "sdk")
    assert report["ok"], report
    assert report["arn"].startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/irsa-custom/")
    assert report["token"]["aud"] == ["custom-audience"]
    assert report["token"]["exp"] - report["token"]["iat"] == 3600
    assert report["env"]["AWS_STS_REGIONAL_ENDPOINTS"] == "regional"


def test_a_trust_policy_for_another_service_account_is_refused_as_aws_refuses_it(
        kubectl: Kubectl, namespace: str, sts: Standin) -> None:
    kubectl.apply(service_account(namespace, "other", "irsa-other"), sdk_pod(namespace, "sdk", "other"))
    report = sdk_report(kubectl, namespace, "sdk")
    assert report["ok"] is False
    assert (report["code"], report["message"]) == ("AccessDenied",
                                                   "Not authorized to perform sts:AssumeRoleWithWebIdentity")
