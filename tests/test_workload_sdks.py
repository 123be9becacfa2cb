"""The SDK programs of the cluster tier's workload image (tests/cluster/workload), each built as
the image gets it, run here as processes against the AWS stand-ins on 127.0.0.1: boto3, the AWS
SDKs for Go v2, Java v2 and JavaScript v3, each through its default credential chain.

Each program is given the environment `pod-identity-injector mutate` gives the pod (the token
files are where the kubelet would project them, here a file of this test's), plus the endpoint,
CA and region the cluster tier's pods set, and nothing else: no home directory, profile or
instance metadata. The cluster tier runs the same programs in pods (tests/cluster/sdk.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster.sdk import SDKS, refused, used_provider
from cluster.workload.build import build_context
from test_standins import ACCOUNT, AgentWorld, World, running_agent, running_world


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Path:
    return build_context(tmp_path_factory.mktemp("workload"))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    """The stand-ins and what plays around them, as tests/test_standins.py runs them."""
    with running_world(tmp_path_factory.mktemp("standins")) as running:
        yield running


@pytest.fixture(scope="module")
def agent(world: World, tmp_path_factory) -> Iterator[AgentWorld]:
    with running_agent(world, tmp_path_factory.mktemp("agent")) as running:
        yield running


def injected_env(tmp_path: Path, service_account: dict, *extra: str) -> dict[str, str]:
    """The env `mutate` gives the pod's container, as (name, value) pairs."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sdk", "namespace": "demo"},
           "spec": {"serviceAccountName": service_account["metadata"]["name"],
                    "containers": [{"name": "sdk", "image": "sdk"}]}}
    (tmp_path / "pod.json").write_text(json.dumps(pod))
    (tmp_path / "sa.json").write_text(json.dumps(service_account))
    result = subprocess.run([sys.executable, "-m", "injector", "mutate", "-f", str(tmp_path / "pod.json"),
                             "--service-account", str(tmp_path / "sa.json"), "-o", "pod", *extra],
                            capture_output=True, text=True, check=True, timeout=60)
    return {e["name"]: e["value"] for e in json.loads(result.stdout)["spec"]["containers"][0]["env"]}


def run_sdk(context: Path, sdk: str, env: dict[str, str], world: World, tmp_path: Path) -> dict:
    """`run.py SDK --exit` with the pod's env and what the cluster tier's pod spec sets."""
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp_path / "no-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-creds"),
            "AWS_ENDPOINT_URL_STS": world.sts.url, "AWS_CA_BUNDLE": str(world.pki.ca),
            "NODE_EXTRA_CA_CERTS": str(world.pki.ca), "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    result = subprocess.run([sys.executable, str(context / "sdk" / "run.py"), sdk, "--exit"], env=base | env,
                            capture_output=True, text=True, timeout=300, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("SDK ")]
    assert result.returncode == 0 and lines, f"{sdk}: exit {result.returncode}: {result.stdout} {result.stderr}"
    return json.loads(lines[-1][4:])


@pytest.mark.parametrize("sdk", SDKS)
def test_each_sdk_assumes_the_role_with_the_token_file_the_webhook_names(
        sdk: str, context: Path, world: World, tmp_path: Path) -> None:
    env = injected_env(tmp_path, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
        "name": "app", "namespace": "demo", "annotations": {"eks.amazonaws.com/role-arn": world.role("app")}}})
    assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"
    (tmp_path / "token").write_text(world.token())
    report = run_sdk(context, sdk, env | {"AWS_WEB_IDENTITY_TOKEN_FILE": str(tmp_path / "token")}, world, tmp_path)

    assert report["ok"], report
    assert used_provider(report, "web-identity"), report
    assert re.fullmatch(rf"arn:aws:sts::{ACCOUNT}:assumed-role/app/[\w+=,.@-]{{2,64}}", report["arn"]), report
    assert report["account"] == ACCOUNT


@pytest.mark.parametrize("sdk", SDKS)
def test_each_sdk_is_refused_as_aws_refuses_a_role_that_does_not_trust_the_service_account(
        sdk: str, context: Path, world: World, tmp_path: Path) -> None:
    env = injected_env(tmp_path, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
        "name": "app", "namespace": "demo", "annotations": {"eks.amazonaws.com/role-arn": world.role("s3-only")}}})
    (tmp_path / "token").write_text(world.token())
    report = run_sdk(context, sdk, env | {"AWS_WEB_IDENTITY_TOKEN_FILE": str(tmp_path / "token")}, world, tmp_path)

    assert refused(report, "AccessDenied", "403"), report
    assert "Not authorized to perform sts:AssumeRoleWithWebIdentity" in report["error"], report


@pytest.mark.parametrize("sdk", SDKS)
def test_each_sdk_gets_container_credentials_from_the_agent(
        sdk: str, context: Path, agent: AgentWorld, tmp_path: Path) -> None:
    identities = tmp_path / "identities.json"
    identities.write_text(json.dumps({"identities": [{"namespace": "demo", "serviceAccount": "app"}]}))
    env = injected_env(tmp_path, {"apiVersion": "v1", "kind": "ServiceAccount",
                                  "metadata": {"name": "app", "namespace": "demo"}},
                       "--container-credentials-config", str(identities))
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == "http://169.254.170.23/v1/credentials"
    (tmp_path / "token").write_text(agent.pod_token())
    # The agent's address here is a port of 127.0.0.1, which every SDK also allows for plain http.
    report = run_sdk(context, sdk, env | {"AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{agent.agent.url}/v1/credentials",
                                          "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(tmp_path / "token")},
                     agent.world, tmp_path)

    assert report["ok"], report
    assert used_provider(report, "container-credentials"), report
    assert re.fullmatch(rf"arn:aws:sts::{ACCOUNT}:assumed-role/pod-role/eks-local-app-pod-[0-9a-f-]+",
                        report["arn"]), report
    assert agent.agent.last_decision()["verdict"] == "allow"
