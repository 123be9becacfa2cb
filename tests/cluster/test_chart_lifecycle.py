"""The chart's life as an admin lives it: `helm test`, an upgrade that changes a flag while pods
are being created, and an uninstall that leaves nothing behind (then the default install again)."""

from __future__ import annotations

import json
import time

from . import load
from .conftest import RELEASE, RELEASE_NAMESPACE, STATE, Kubectl, released

# The released chart as `up` pulled it back from the node's registry (the bytes `helm install
# oci://…` installed); its defaults name the released image, so upgrades set no image values.
CHART = str(released()["chart_package"]) if (STATE / "release.json").exists() else ""
IMAGE_VALUES: list[str] = []


def _container_args(kubectl: Kubectl) -> list[str]:
    deployment = kubectl.json("-n", RELEASE_NAMESPACE, "get", "deployment", RELEASE)
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_helm_test_runs_its_pod_and_passes(kubectl: Kubectl) -> None:
    out = kubectl.helm("test", RELEASE, "-n", RELEASE_NAMESPACE, "--logs", "--timeout", "5m", timeout=320)
    assert "Phase:          Succeeded" in out or "Succeeded" in out, out


def test_an_upgrade_that_changes_a_flag_rolls_out_with_no_failed_admission(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(load.service_account(namespace), load.deployment(namespace))
    before_args = _container_args(kubectl)
    failures = load.webhook_failures(kubectl)

    def upgrade() -> None:
        kubectl.helm("upgrade", RELEASE, CHART, "-n", RELEASE_NAMESPACE, "--reuse-values",
                     "--set", "config.logLevel=debug", "--wait", "--timeout", "5m", timeout=320)

    try:
        load.ramp(kubectl, namespace, total=100, per_second=5, fault_at=3, fault=upgrade)
        created, unmutated = load.count_pods(kubectl, namespace)
        assert created >= 100 and unmutated == []
        assert load.webhook_failures(kubectl) == failures
        assert any("debug" in a for a in _container_args(kubectl)) and before_args != _container_args(kubectl)
    finally:
        kubectl.helm("upgrade", RELEASE, CHART, "-n", RELEASE_NAMESPACE, "--reset-values", *IMAGE_VALUES,
                     "--wait", "--timeout", "5m", timeout=320)
        kubectl("-n", namespace, "delete", "deployment", "--all", "--wait=false", check=False)


def _leftovers(kubectl: Kubectl) -> list[str]:
    selector = f"app.kubernetes.io/instance={RELEASE}"
    found = []
    namespaced = "deployments,replicasets,pods,services,endpoints,serviceaccounts,configmaps,secrets,roles," \
                 "rolebindings,poddisruptionbudgets,networkpolicies"
    for item in kubectl.json("-n", RELEASE_NAMESPACE, "get", namespaced)["items"]:
        name = item["metadata"]["name"]
        if item["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == RELEASE or name.startswith(RELEASE):
            found.append(f"{item['kind']}/{name}")
    for item in kubectl.json("get", "clusterroles,clusterrolebindings,mutatingwebhookconfigurations",
                             "-l", selector)["items"]:
        found.append(f"{item['kind']}/{item['metadata']['name']}")
    return found


def test_uninstall_leaves_nothing_behind_then_the_default_install_comes_back(kubectl: Kubectl) -> None:
    kubectl("-n", RELEASE_NAMESPACE, "get", "secret", f"{RELEASE}-tls")  # exists before
    kubectl.helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", "--timeout", "3m", timeout=200)
    deadline = time.monotonic() + 120
    left = _leftovers(kubectl)
    while left and time.monotonic() < deadline:  # the garbage collector removes the owned Secret
        time.sleep(1)
        left = _leftovers(kubectl)
    try:
        assert left == []
        # Not even an unlabelled one of ours; others' (cert-manager's, when a test installed it) stay.
        ours = [c["metadata"]["name"] for c in kubectl.json("get", "mutatingwebhookconfigurations")["items"]
                if c["metadata"]["name"].startswith(RELEASE)
                or any(w.get("clientConfig", {}).get("service", {}).get("namespace") == RELEASE_NAMESPACE
                       for w in c.get("webhooks") or [])]
        assert ours == []
    finally:
        kubectl.helm("install", RELEASE, CHART, "-n", RELEASE_NAMESPACE, "--create-namespace", *IMAGE_VALUES,
                     "--wait", "--timeout", "5m", timeout=320)
    values = json.loads(kubectl.helm("get", "values", RELEASE, "-n", RELEASE_NAMESPACE, "-o", "json"))
    assert not values
