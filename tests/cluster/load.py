"""Load for the fault scenarios: pods created at a steady rate, then counted mutated or not.

Pods come from Deployments scaling up, as in real clusters: the ReplicaSet controller creates
them and the API server calls the webhook for each. They carry a scheduling gate, so the
scheduler and the kubelet never act on them: what is measured is admission, and a 2-core node
could not run hundreds of containers anyway (the IRSA chain tests run real containers).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from .conftest import IMAGE, Kubectl

WEBHOOK_NAME = "pod-identity-webhook.amazonaws.com"
# Ours: the default entry and the strict one (strict.<name>).
_OURS = re.compile(r'name="(?:strict\.)?' + re.escape(WEBHOOK_NAME) + '"')
ROLE_ARN = "arn:aws:iam::111122223333:role/load"
GATE = "local-cluster/never-scheduled"
LABEL = "load-generator"


@dataclass
class Figures:
    """What one scenario measured."""

    scenario: str
    pods_created: int = 0
    pods_unmutated: int = 0
    seconds: float = 0.0
    rate_per_second: float = 0.0
    admission_p99_ms: float | None = None
    admission_calls: int = 0
    admission_rejected_or_failed: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def service_account(namespace: str, name: str = "load") -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace, "annotations": {"eks.amazonaws.com/role-arn": ROLE_ARN}}}


def deployment(namespace: str, name: str = "load", replicas: int = 0, service_account_name: str = "load",
               pod_labels: dict[str, str] | None = None) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {LABEL: "true"}},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name, LABEL: "true", **(pod_labels or {})}}, "spec": {
                "serviceAccountName": service_account_name,
                "schedulingGates": [{"name": GATE}],
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "app", "image": IMAGE, "imagePullPolicy": "Never",
                                "command": ["sleep", "infinity"]}]}},
        },
    }


def count_pods(kubectl: Kubectl, namespace: str) -> tuple[int, list[str]]:
    """(pods, names of those without the injected env) in `namespace`."""
    created, unmutated = unmutated_pods(kubectl, namespace)
    return created, [p["metadata"]["name"] for p in unmutated]


def unmutated_pods(kubectl: Kubectl, namespace: str) -> tuple[int, list[dict]]:
    """(pods, those without the injected env) in `namespace`."""
    pods = kubectl.json("-n", namespace, "get", "pods", "-l", f"{LABEL}=true")["items"]
    unmutated = [p for p in pods
                 if not any(e.get("name") == "AWS_ROLE_ARN" for c in p["spec"]["containers"] for e in c.get("env", []))]
    return len(pods), unmutated


def ramp(kubectl: Kubectl, namespace: str, *, total: int, per_second: float, name: str = "load",
         fault_at: float | None = None, fault: Callable[[], None] | None = None) -> float:
    """Scale the Deployment from 0 to `total` at `per_second`, running `fault` (in a thread) after
    `fault_at` seconds; waits until all pods exist. Returns the seconds the ramp took."""
    started = time.monotonic()
    fault_thread: threading.Thread | None = None
    errors: list[BaseException] = []

    def run_fault() -> None:
        try:
            assert fault is not None
            fault()
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    step = max(1, round(per_second))
    replicas = 0
    while replicas < total:
        replicas = min(total, replicas + step)
        kubectl("-n", namespace, "scale", f"deployment/{name}", f"--replicas={replicas}", check=False)
        if fault is not None and fault_thread is None and time.monotonic() - started >= (fault_at or 0):
            fault_thread = threading.Thread(target=run_fault, daemon=True)
            fault_thread.start()
        next_tick = started + replicas / per_second
        time.sleep(max(0.0, next_tick - time.monotonic()))
    # A scale call may have failed while the API server was away: insist on the last one, then
    # wait for the ReplicaSet controller to have created every pod.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        kubectl("-n", namespace, "scale", f"deployment/{name}", f"--replicas={total}", check=False)
        try:
            if count_pods(kubectl, namespace)[0] >= total:
                break
        except (AssertionError, ValueError):
            pass
        time.sleep(1)
    if fault_thread is not None:
        fault_thread.join(timeout=300)
    if errors:
        raise errors[0]
    return time.monotonic() - started


# -- the API server's view of admission latency ---------------------------------------------------
_BUCKET = re.compile(r'^apiserver_admission_webhook_admission_duration_seconds_bucket\{(?P<labels>[^}]*)\} (?P<v>\S+)$')


def webhook_histogram(kubectl: Kubectl) -> dict[float, float]:
    """Cumulative bucket counts (upper bound → count) of our webhook's admission calls."""
    buckets: dict[float, float] = {}
    for line in kubectl("get", "--raw", "/metrics").splitlines():
        match = _BUCKET.match(line)
        if not match or not _OURS.search(match["labels"]) or 'operation="CREATE"' not in match["labels"]:
            continue
        le = re.search(r'le="([^"]+)"', match["labels"])
        bound = math.inf if le is None or le[1] == "+Inf" else float(le[1])
        buckets[bound] = buckets.get(bound, 0.0) + float(match["v"])
    return buckets


def webhook_failures(kubectl: Kubectl) -> float:
    """Calls of our webhook the API server counted as failed: rejections, and calls that failed
    and were let through (failurePolicy Ignore: `fail_open_count`)."""
    total = 0.0
    for line in kubectl("get", "--raw", "/metrics").splitlines():
        if line.startswith(("apiserver_admission_webhook_rejection_count{",
                            "apiserver_admission_webhook_fail_open_count{")) and _OURS.search(line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def p99_ms(before: dict[float, float], after: dict[float, float]) -> tuple[float | None, int]:
    """p99 of the calls between two snapshots (linear within a bucket), and their number. A
    restarted API server starts from zero: then `after` alone is used."""
    if any(after.get(b, 0) < v for b, v in before.items()):
        before = {}
    delta = sorted((b, after[b] - before.get(b, 0.0)) for b in after)
    if not delta or delta[-1][1] <= 0:
        return None, 0
    total = delta[-1][1]
    target = 0.99 * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in delta:
        if count >= target:
            if math.isinf(bound):
                return lower_bound * 1000, int(total)
            width = count - lower_count
            fraction = (target - lower_count) / width if width else 1.0
            return (lower_bound + (bound - lower_bound) * fraction) * 1000, int(total)
        lower_bound, lower_count = bound, count
    return None, int(total)


def write_figures(path: str, figures: Figures) -> None:
    """Append one scenario's figures (JSON lines) for docs/reliability.md."""
    with open(path, "a") as out:
        out.write(json.dumps(figures.as_dict()) + "\n")
