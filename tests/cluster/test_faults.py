"""Faults under load: pods keep getting credentials while the webhook restarts, loses a replica,
rotates its CA, races a new ServiceAccount, or the API server restarts.

Each scenario creates pods at a steady rate through a Deployment scaling up (see load.py), with
the chart's defaults (failurePolicy Ignore), injects its fault, and counts the pods admitted
without credentials. The target is 0. Figures go to $LOCAL_CLUSTER_FIGURES (JSON lines) and
are recorded in docs/reliability.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from . import load
from .conftest import RELEASE, RELEASE_NAMESPACE, Kubectl
from .test_chart_lifecycle import CHART, IMAGE_VALUES

PODS = int(os.environ.get("LOCAL_CLUSTER_FAULT_PODS", "300"))
# 10 pods/s (the issue asks for at least 5): 300 pods in 30 s, so the six scenarios fit the CI
# budget; the fault comes 5 s in, leaving 25 s of pods after it, longer than a rolling restart
# of the two replicas takes here.
RATE = float(os.environ.get("LOCAL_CLUSTER_FAULT_RATE", "10"))
FAULT_AT = 5.0
# How long the API server may keep calling a replica that died: kubelet's PLEG relist (1 s),
# the pod status update, the endpoints controller, the API server's endpoints informer.
ENDPOINT_WINDOW = 5.0
FIGURES = os.environ.get("LOCAL_CLUSTER_FIGURES", "")
CLUSTER = Path(__file__).resolve().parents[2] / "tools" / "kind" / "cluster.py"


@pytest.fixture
def load_namespace(kubectl: Kubectl, namespace: str) -> Iterator[str]:
    kubectl.apply(load.service_account(namespace), load.deployment(namespace))
    _wait_webhook_knows(kubectl, namespace)
    yield namespace
    kubectl("-n", namespace, "delete", "deployment", "--all", "--wait=false", check=False)
    kubectl("-n", namespace, "delete", "pods", "--all", "--grace-period=0", "--force", "--wait=false", check=False)


def _wait_webhook_knows(kubectl: Kubectl, namespace: str) -> None:
    """A dry-run pod comes back mutated: the scenario does not start before the cache has the SA."""
    probe = load.deployment(namespace)["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "probe-", "namespace": namespace},
           "spec": probe["spec"]}
    kubectl.wait_mutated(pod, '"AWS_ROLE_ARN"', "the webhook never mutated a probe pod")


def _webhook_ready(kubectl: Kubectl) -> None:
    kubectl("-n", RELEASE_NAMESPACE, "rollout", "status", f"deployment/{RELEASE}", "--timeout=300s", timeout=320)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        deployment = kubectl.json("-n", RELEASE_NAMESPACE, "get", "deployment", RELEASE)
        status = deployment["status"]
        if status.get("readyReplicas") == 2 and status.get("updatedReplicas") == 2 and status.get("replicas") == 2:
            return
        time.sleep(1)
    raise AssertionError(f"the webhook Deployment did not settle: {status}")


def _run_scenario(kubectl: Kubectl, namespace: str, name: str, fault: Callable[[], None] | None,
                  notes: list[str] | None = None, *, all_mutated: bool = True) -> load.Figures:
    before = load.webhook_histogram(kubectl)
    failures_before = load.webhook_failures(kubectl)
    seconds = load.ramp(kubectl, namespace, total=PODS, per_second=RATE, fault_at=FAULT_AT, fault=fault)
    _webhook_ready(kubectl)
    created, unmutated = load.count_pods(kubectl, namespace)
    p99, calls = load.p99_ms(before, load.webhook_histogram(kubectl))
    figures = load.Figures(name, created, len(unmutated), round(seconds, 1), round(created / seconds, 2),
                           round(p99, 1) if p99 is not None else None, calls,
                           int(max(0.0, load.webhook_failures(kubectl) - failures_before)), notes or [])
    print(f"\n{name}: {figures.as_dict()}", file=sys.stderr)
    if FIGURES:
        load.write_figures(FIGURES, figures)
    assert created >= PODS
    if all_mutated:
        assert unmutated == [], f"{len(unmutated)} of {created} pods admitted without credentials: {unmutated[:10]}"
    return figures


def _webhook_pids() -> dict[str, int]:
    """Pod name → host PID of the webhook container's first process (its supervisor). In kind the
    container's PID namespace is nested in the node's: PID 1 in the last, innermost one."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
        if len(nspid) >= 2 and nspid[-1] == "1" and any(b"pod-identity-injector" in a for a in cmdline) \
                and b"serve" in cmdline:
            host = next((e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"HOSTNAME=")), "")
            found[host] = int(entry.name)
    return found


def test_rollout_restart_of_the_webhook(kubectl: Kubectl, load_namespace: str) -> None:
    def fault() -> None:
        kubectl("-n", RELEASE_NAMESPACE, "rollout", "restart", f"deployment/{RELEASE}")
    _run_scenario(kubectl, load_namespace, "rollout restart of the webhook Deployment", fault)


def _kill_one_replica(kubectl: Kubectl, killed_at: list[float]) -> Callable[[], None]:
    """SIGKILL of a webhook container's main process: the whole replica dies at once."""
    pods = {p["metadata"]["name"] for p in kubectl.json("-n", RELEASE_NAMESPACE, "get", "pods")["items"]}

    def fault() -> None:
        pids = {name: pid for name, pid in _webhook_pids().items() if name in pods}
        assert pids, "no webhook process found"
        killed_at.append(time.time())
        os.kill(pids[sorted(pids)[0]], signal.SIGKILL)
    return fault


def test_sigkill_of_one_replica(kubectl: Kubectl, load_namespace: str) -> None:
    """With failurePolicy Ignore the API server lets through the calls it had sent to the dead
    replica: it retries neither a reset nor a refused connection, and needs about a second to
    drop the endpoint. What is measured: that the damage stays inside that window."""
    killed_at: list[float] = []
    _run_scenario(kubectl, load_namespace, "SIGKILL of one replica's process", _kill_one_replica(kubectl, killed_at),
                  all_mutated=False)
    _, unmutated = load.unmutated_pods(kubectl, load_namespace)
    late = [p["metadata"]["name"] for p in unmutated
            if not killed_at[0] - 2 <= _created(p) <= killed_at[0] + ENDPOINT_WINDOW]
    assert late == [], f"pods unmutated outside the {ENDPOINT_WINDOW:.0f} s after the kill: {late}"


def test_sigkill_of_one_replica_strict_pods_never_start_without_credentials(
        kubectl: Kubectl, namespace: str) -> None:
    """The same kill, for pods that opted into the strict webhook (failurePolicy Fail): a
    failed call refuses the pod, the ReplicaSet controller creates it again, so every pod that
    exists has its credentials."""
    strict = {"pod-identity-injector/strict": "true"}
    kubectl.helm("upgrade", RELEASE, CHART, "-n", RELEASE_NAMESPACE, "--reuse-values",
                 "--set", "webhook.strict.enabled=true", "--wait", "--timeout", "5m", timeout=320)
    try:
        kubectl.apply(load.service_account(namespace), load.deployment(namespace, pod_labels=strict))
        _wait_webhook_knows(kubectl, namespace)
        _run_scenario(kubectl, namespace, "SIGKILL of one replica's process, strict pods (failurePolicy Fail)",
                      _kill_one_replica(kubectl, []))
    finally:
        kubectl("-n", namespace, "delete", "deployment", "--all", "--wait=false", check=False)
        kubectl.helm("upgrade", RELEASE, CHART, "-n", RELEASE_NAMESPACE, "--reset-values", *IMAGE_VALUES,
                     "--wait", "--timeout", "5m", timeout=320)
        _webhook_ready(kubectl)


def _created(pod: dict) -> float:
    return datetime.strptime(pod["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC).timestamp()


def test_tls_secret_deleted_ca_rollover(kubectl: Kubectl, load_namespace: str) -> None:
    def fault() -> None:
        kubectl("-n", RELEASE_NAMESPACE, "delete", "secret", f"{RELEASE}-tls")
    _run_scenario(kubectl, load_namespace, "TLS Secret deleted (CA rollover)", fault)


def test_api_server_restart(kubectl: Kubectl, load_namespace: str) -> None:
    def fault() -> None:
        subprocess.run([sys.executable, str(CLUSTER), "restart", "kube-apiserver"], check=True, timeout=120)
        deadline = time.monotonic() + 120
        while kubectl("get", "--raw", "/readyz", check=False).strip() != "ok":
            assert time.monotonic() < deadline, "the API server did not come back"
            time.sleep(0.5)
    _run_scenario(kubectl, load_namespace, "API server restarted", fault)


def test_service_account_and_deployment_in_one_apply(kubectl: Kubectl, namespace: str) -> None:
    """The cache race: each apply creates a new ServiceAccount and a Deployment using it at once."""
    per_apply = 5
    applies = PODS // per_apply
    before = load.webhook_histogram(kubectl)
    started = time.monotonic()
    for i in range(applies):
        kubectl.apply(load.service_account(namespace, f"sa-{i}"),
                      load.deployment(namespace, f"app-{i}", replicas=per_apply, service_account_name=f"sa-{i}"))
        time.sleep(max(0.0, started + (i + 1) * per_apply / RATE - time.monotonic()))
    deadline = time.monotonic() + 300
    while load.count_pods(kubectl, namespace)[0] < applies * per_apply and time.monotonic() < deadline:
        time.sleep(1)
    seconds = time.monotonic() - started
    created, unmutated = load.count_pods(kubectl, namespace)
    p99, calls = load.p99_ms(before, load.webhook_histogram(kubectl))
    figures = load.Figures("ServiceAccount and Deployment in one kubectl apply", created, len(unmutated),
                           round(seconds, 1), round(created / seconds, 2), round(p99, 1) if p99 else None, calls)
    print(f"\n{figures.scenario}: {figures.as_dict()}", file=sys.stderr)
    if FIGURES:
        load.write_figures(FIGURES, figures)
    kubectl("-n", namespace, "delete", "deployment", "--all", "--wait=false", check=False)
    kubectl("-n", namespace, "delete", "pods", "--all", "--grace-period=0", "--force", "--wait=false", check=False)
    assert created >= applies * per_apply
    assert unmutated == [], f"{len(unmutated)} of {created} pods admitted without credentials: {unmutated[:10]}"
