"""The IRSA chain end to end, in real pods: the webhook injects, the kubelet projects the token,
each SDK's default chain (boto3, Go v2, Java v2, JavaScript v3: tests/cluster/sdk.py) calls
AssumeRoleWithWebIdentity on an STS stand-in that checks the token against the cluster's
discovery document and JWKS and the role's trust policy, as AWS does.

For each pod, `pod-identity-injector doctor` runs live against the same cluster with the same
trust policy, and its verdict must be the stand-in's: credentials or not, and the same error
message (docs/doctor.md#trust-policy)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import STATE, Kubectl
from .sdk import SDKS, refused, sdk_pod, sdk_report, used_provider
from .standin_fixtures import ACCOUNT, ISSUER, Standin, new_secret, start_sts, trust_policy

ROLE = f"arn:aws:iam::{ACCOUNT}:role"


def roles(namespace: str) -> dict[str, dict]:
    """Role ARN → trust policy, as the stand-in's IAM holds them."""
    return {
        f"{ROLE}/irsa-app": trust_policy(namespace, "app"),
        f"{ROLE}/irsa-custom": trust_policy(namespace, "custom", audience="custom-audience"),
        f"{ROLE}/irsa-other": trust_policy(namespace, "somebody-else"),
    }


@pytest.fixture
def sts(tmp_path: Path, namespace: str) -> Iterator[Standin]:
    standin = start_sts(tmp_path, new_secret(), roles(namespace))
    yield standin
    standin.stop()


def doctor(tmp_path: Path, namespace: str, pod: str, role: str) -> dict:
    """`doctor POD -n NS --trust-policy FILE -o json`, live, with the role's policy."""
    policy = tmp_path / f"{role}-trust-policy.json"
    policy.write_text(json.dumps(roles(namespace)[f"{ROLE}/{role}"]))
    # --ca-file: the cluster's private CA, which the STS stand-in trusts too (AWS would need a
    # public one: doctor still warns that the issuer is private).
    result = subprocess.run([sys.executable, "-m", "injector", "doctor", pod, "-n", namespace,
                             "--trust-policy", str(policy), "--ca-file", str(STATE / "pki" / "ca.crt"),
                             "-o", "json"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode in (0, 1), f"doctor exited {result.returncode}: {result.stderr}"
    report = json.loads(result.stdout)
    assert report["exitCode"] == result.returncode
    return report


def trust_finding(report: dict) -> dict:
    (finding,) = [f for f in report["findings"] if f["section"] == "trust-policy"]
    return finding


def service_account(namespace: str, name: str, role: str, **annotations: str) -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
        "name": name, "namespace": namespace,
        "annotations": {"eks.amazonaws.com/role-arn": f"{ROLE}/{role}",
                        **{f"eks.amazonaws.com/{k.replace('_', '-')}": v for k, v in annotations.items()}}}}


@pytest.mark.parametrize("sdk", SDKS)
def test_the_sdk_assumes_the_role_with_the_injected_token(kubectl: Kubectl, namespace: str, sts: Standin,
                                                          tmp_path: Path, sdk: str) -> None:
    kubectl.apply(service_account(namespace, "app", "irsa-app"), sdk_pod(namespace, "sdk", "app", sdk))
    report = sdk_report(kubectl, namespace, "sdk")
    assert report["ok"], report
    assert report["sdk"] == sdk and used_provider(report, "web-identity"), report
    assert report["arn"].startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/irsa-app/")
    assert report["account"] == ACCOUNT
    assert report["token"]["iss"] == ISSUER and report["token"]["aud"] == ["sts.amazonaws.com"]
    allowed = [d for d in sts.decisions() if d.get("action") == "AssumeRoleWithWebIdentity"]
    assert allowed and allowed[-1]["verdict"] == "allow"
    assert allowed[-1]["sub"] == f"system:serviceaccount:{namespace}:app"
    verdict = doctor(tmp_path, namespace, "sdk", "irsa-app")
    assert verdict["credentials"] is True and verdict["exitCode"] == 0, verdict["findings"]
    assert trust_finding(verdict)["code"] == "trust-policy-allows"


@pytest.mark.parametrize("sdk", SDKS)
def test_audience_expiration_and_regional_sts_annotations_reach_the_sdk(
        kubectl: Kubectl, namespace: str, sts: Standin, tmp_path: Path, sdk: str) -> None:
    kubectl.apply(service_account(namespace, "custom", "irsa-custom", audience="custom-audience",
                                  token_expiration="3600", sts_regional_endpoints="true"),
                  sdk_pod(namespace, "sdk", "custom", sdk))
    report = sdk_report(kubectl, namespace, "sdk")
    assert report["ok"], report
    assert report["arn"].startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/irsa-custom/")
    assert report["token"]["aud"] == ["custom-audience"]
    assert report["token"]["exp"] - report["token"]["iat"] == 3600
    assert report["env"]["AWS_STS_REGIONAL_ENDPOINTS"] == "regional"
    verdict = doctor(tmp_path, namespace, "sdk", "irsa-custom")
    assert verdict["exitCode"] == 0 and trust_finding(verdict)["code"] == "trust-policy-allows", verdict["findings"]


@pytest.mark.parametrize("sdk", SDKS)
def test_a_trust_policy_for_another_service_account_is_refused_as_aws_refuses_it(
        kubectl: Kubectl, namespace: str, sts: Standin, tmp_path: Path, sdk: str) -> None:
    kubectl.apply(service_account(namespace, "other", "irsa-other"), sdk_pod(namespace, "sdk", "other", sdk))
    report = sdk_report(kubectl, namespace, "sdk")
    assert refused(report, "AccessDenied", "403"), report
    assert "Not authorized to perform sts:AssumeRoleWithWebIdentity" in report["error"], report
    verdict = doctor(tmp_path, namespace, "sdk", "irsa-other")
    assert verdict["credentials"] is False and verdict["exitCode"] == 1
    finding = trust_finding(verdict)
    assert (finding["code"], finding["status"]) == ("trust-policy-condition", "fail")
    assert "AccessDenied: Not authorized to perform sts:AssumeRoleWithWebIdentity" in finding["message"]
    assert [f["code"] for f in verdict["findings"] if f["status"] == "fail"] == ["trust-policy-condition"]


@pytest.mark.parametrize("sdk", SDKS)
def test_an_opted_in_service_account_names_each_session_after_its_pod(
        kubectl: Kubectl, namespace: str, sts: Standin, sdk: str) -> None:
    """docs/mutation.md#session-name: the session STS sees, and CloudTrail would log, is the
    pod's name, also for a pod made from generateName, whose name is chosen after admission;
    every SDK reads AWS_ROLE_SESSION_NAME."""
    kubectl.apply(service_account(namespace, "app", "irsa-app", role_session_name_from_pod="true"))
    pod = sdk_pod(namespace, "", "app", sdk)
    del pod["metadata"]["name"]
    pod["metadata"]["generateName"] = "reporter-"
    name = kubectl("create", "-f", "-", "-o", "jsonpath={.metadata.name}", stdin=json.dumps(pod))
    assert name.startswith("reporter-") and len(name) == len("reporter-") + 5
    report = sdk_report(kubectl, namespace, name)
    assert report["ok"], report
    assert report["arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/irsa-app/{name}"
    sessions = [d["session"] for d in sts.decisions() if d.get("action") == "AssumeRoleWithWebIdentity"
                and d.get("verdict") == "allow"]
    assert sessions and set(sessions) == {name}
