"""A live switch from the Go webhook to ours and back, under load (docs/migrate.md#both-registered).

The Go webhook runs from its own deploy/ manifests (tests/cluster/go_webhook.py). While pods are
created at 5 a second: our chart is installed, then the Go webhook removed; then the reverse,
as a rollback. Every pod must carry credentials, exactly once: no pod without AWS_ROLE_ARN, and
no container with an env entry or a mount twice, no pod with a volume twice."""

from __future__ import annotations

import collections
import json
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from . import go_webhook, load
from .conftest import RELEASE, RELEASE_NAMESPACE, Kubectl
from .test_chart_lifecycle import CHART, IMAGE_VALUES

RATE = 5  # pods a second
PODS_PER_SWITCH = 300  # a minute of load per direction: bounded


def duplicates(pod: dict) -> list[str]:
    """What the pod carries more than once: env names and mount paths per container, volume names."""
    found = []
    spec = pod["spec"]
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        for what, items, key in (("env", container.get("env", []), "name"),
                                 ("mount", container.get("volumeMounts", []), "mountPath")):
            counts = collections.Counter(item[key] for item in items)
            found += [f"{container['name']}: {what} {k} x{n}" for k, n in counts.items() if n > 1]
    counts = collections.Counter(volume["name"] for volume in spec.get("volumes", []))
    found += [f"volume {k} x{n}" for k, n in counts.items() if n > 1]
    return found


TIMEOUT_SECONDS = 10  # the chart's webhook.timeoutSeconds
# Only our webhook warns (the Go webhook sends no warnings): an answer that carries this one
# comes from ours.
OUR_WARNING = "skip-containers names no-such-container, which is no container of this pod"


def wait_ours_answers(kubectl: Kubectl, probe: dict, timeout: float = 120) -> None:
    """Dry-run `probe`, once a second, until our webhook's warning comes back."""
    pod = {**probe, "metadata": {**probe["metadata"],
                                 "annotations": {"eks.amazonaws.com/skip-containers": "no-such-container"}}}
    deadline = time.monotonic() + timeout
    while True:
        answer = subprocess.run([kubectl.binary, "create", "--dry-run=server", "-o", "name", "-f", "-"],
                                input=json.dumps(pod), capture_output=True, text=True, env=kubectl.env, timeout=60,
                                check=False)
        if OUR_WARNING in answer.stderr:
            return
        assert time.monotonic() < deadline, f"our webhook never answered: {answer.stderr[-500:]}"
        time.sleep(1)


def switch_under_load(kubectl: Kubectl, namespace: str, name: str, steps: Callable[[], None]) -> tuple[int, float]:
    """Run `steps` while a Deployment scales to PODS_PER_SWITCH at RATE; assert every pod it made
    has credentials once. Returns (pods, seconds the steps took)."""
    kubectl.apply(load.deployment(namespace, name=name))
    took: list[float] = []

    def timed() -> None:
        started = time.monotonic()
        steps()
        took.append(time.monotonic() - started)

    load.ramp(kubectl, namespace, total=PODS_PER_SWITCH, per_second=RATE, name=name, fault_at=3, fault=timed)
    pods = [p for p in kubectl.json("-n", namespace, "get", "pods", "-l", f"app={name}")["items"]]
    unmutated = [p["metadata"]["name"] for p in pods
                 if not any(e.get("name") == "AWS_ROLE_ARN" for c in p["spec"]["containers"] for e in c.get("env", []))]
    doubled = {p["metadata"]["name"]: d for p in pods if (d := duplicates(p))}
    assert len(pods) >= PODS_PER_SWITCH
    assert unmutated == [], f"{len(unmutated)} of {len(pods)} pods without credentials: {unmutated[:5]}"
    assert doubled == {}, f"{len(doubled)} pods with duplicates: {list(doubled.items())[:3]}"
    assert took, "the switch did not finish"
    return len(pods), took[0]


@pytest.fixture
def go_installed(kubectl: Kubectl) -> Iterator[list[dict]]:
    """The Go webhook from its manifests, alone (our default release uninstalled); afterwards the
    Go webhook removed and our default release back."""
    archive, deploy = go_webhook.build()
    go_webhook.load_image(archive)
    documents = go_webhook.manifests(deploy, go_webhook.image_of(archive))
    kubectl.helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", "--timeout", "3m", timeout=200)
    try:
        go_webhook.install(kubectl, documents)
        yield documents
    finally:
        go_webhook.remove(kubectl)
        if RELEASE not in kubectl.helm("list", "-n", RELEASE_NAMESPACE, "-q"):
            kubectl.helm("install", RELEASE, CHART, "-n", RELEASE_NAMESPACE, "--create-namespace", *IMAGE_VALUES,
                         "--wait", "--timeout", "5m", timeout=320)


def test_from_go_to_ours_and_back_no_pod_goes_without_credentials_or_gets_them_twice(
        kubectl: Kubectl, namespace: str, go_installed: list[dict]) -> None:
    kubectl.apply(load.service_account(namespace))
    probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "probe-", "namespace": namespace},
             "spec": {"serviceAccountName": "load", "containers": [{"name": "c", "image": "probe"}]}}
    kubectl.wait_mutated(probe, load.ROLE_ARN, "the Go webhook never mutated a pod")

    def to_ours() -> None:
        kubectl.helm("install", RELEASE, CHART, "-n", RELEASE_NAMESPACE, "--create-namespace", *IMAGE_VALUES,
                     "--wait", "--timeout", "5m", timeout=320)
        wait_ours_answers(kubectl, probe)
        # A pod whose call to ours hung before ours was reachable (a new Service's ClusterIP is
        # routed only once kube-proxy has synced it) comes to the Go webhook only after
        # timeoutSeconds: keep the Go webhook that long (docs/migrate.md).
        time.sleep(TIMEOUT_SECONDS + 2)
        go_webhook.remove(kubectl)

    pods, seconds = switch_under_load(kubectl, namespace, "to-ours", to_ours)
    print(f"Go -> ours: {pods} pods, 0 without credentials, 0 duplicated; switch took {seconds:.0f} s")

    # In our chart's own namespace, which the chart never sends to its webhook: only the Go
    # webhook can mutate it (docs/migrate.md). Not the skip label: the Go manifests skip it too.
    go_only = {**probe, "metadata": {**probe["metadata"], "namespace": RELEASE_NAMESPACE},
               "spec": {**probe["spec"], "serviceAccountName": "go-probe"}}

    def back_to_go() -> None:
        go_webhook.install(kubectl, go_installed)
        kubectl.apply(load.service_account(RELEASE_NAMESPACE, "go-probe"))
        # Its Deployment has no readiness probe: rolled out is not yet answering.
        kubectl.wait_mutated(go_only, load.ROLE_ARN, "the Go webhook never mutated a pod", timeout=120)
        kubectl("-n", RELEASE_NAMESPACE, "delete", "serviceaccount", "go-probe")
        time.sleep(TIMEOUT_SECONDS + 2)
        kubectl.helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", "--timeout", "3m", timeout=200)

    pods, seconds = switch_under_load(kubectl, namespace, "back-to-go", back_to_go)
    print(f"ours -> Go: {pods} pods, 0 without credentials, 0 duplicated; switch took {seconds:.0f} s")
