"""Fixtures of the cluster tier: the kind cluster of `make cluster-up`, used as an admin uses it.

The tier runs with the cluster's kubeconfig (`tools/kind/run -- pytest tests/cluster`, which
`make cluster-test` does), and only when LOCAL_CLUSTER_TIER=1: a plain `pytest` of the
repository does not collect it. Once collected it never skips: a cluster that is not up fails
every test. The cluster's addresses (CLUSTER: its host address on kind's network, the token
issuer, the Pod Identity Agent's address) are in STATE/cluster.json (tools/kind/cluster.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

if os.environ.get("LOCAL_CLUSTER_TIER") != "1":
    collect_ignore_glob = ["test_*.py"]

STATE = Path(os.environ.get("KIND_CLUSTER_STATE", "/var/lib/pii-kind-cluster"))
RELEASE = "pod-identity-injector"
RELEASE_NAMESPACE = "pod-identity-injector"
# The image test workloads run (python3, coreutils; loaded into the node by `up`). Ours is
# not preloaded: the chart was installed from the node's registry (RELEASED), the kubelet pulled it.
IMAGE = "localhost/aws-sdk-workload:dev"


def cluster() -> dict:
    """The cluster's addresses (tools/kind/cluster.py): host_ip (this host on kind's network, where
    the registry and the stand-ins listen), issuer, agent_ip, node_ip, name, node, network."""
    return json.loads((STATE / "cluster.json").read_text())


def released() -> dict:
    """What `up` released to the cluster's registry (tools/kind/cluster.py release()): registry,
    version, image and chart references and digests, the CA, the chart package pulled back."""
    return json.loads((STATE / "release.json").read_text())


class Kubectl:
    """kubectl as the cluster admin; JSON in and out."""

    def __init__(self, binary: str, helm: str, kubeconfig: Path) -> None:
        self.binary, self.helm_binary = binary, helm
        self.env = dict(os.environ, KUBECONFIG=str(kubeconfig))

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120) -> str:
        result = subprocess.run([self.binary, *args], input=stdin, capture_output=True, text=True,
                                env=self.env, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result.stdout

    def json(self, *args: str) -> dict:
        return json.loads(self(*args, "-o", "json"))

    def apply(self, *objects: dict) -> str:
        return self("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))

    def wait_mutated(self, pod: dict, marker: str, failure: str, timeout: float = 60) -> None:
        """Create `pod` as a server-side dry run, once a second, until the webhook's answer
        contains `marker` (a webhook just upgraded or a ServiceAccount just created)."""
        deadline = time.monotonic() + timeout
        while marker not in self("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(pod),
                                 check=False):
            assert time.monotonic() < deadline, failure
            time.sleep(1)

    def helm(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run([self.helm_binary, *args], capture_output=True, text=True, env=self.env,
                                timeout=timeout, check=False)
        if result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result.stdout


@pytest.fixture(scope="session")
def kubectl() -> Kubectl:
    kubeconfig = STATE / "admin.kubeconfig"
    if not kubeconfig.is_file() or not (STATE / "artifacts.json").is_file():
        pytest.fail(f"the kind cluster is not up ({kubeconfig} missing): run `make cluster-up` first")
    artifacts = json.loads((STATE / "artifacts.json").read_text())
    client = Kubectl(artifacts["kubectl"], artifacts["helm"], kubeconfig)
    try:
        client("get", "--raw", "/readyz")
    except (AssertionError, OSError) as exc:
        pytest.fail(f"the kind cluster's API server does not answer (`make cluster-up`): {exc}")
    return client


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (its pods with it)."""
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)
