"""Prometheus metrics: our own names plus the Go webhook's, so its dashboards keep working.
Counting only; nothing here decides or logs.

With several serving processes, prometheus-client's multiprocess mode is used (the
supervisor sets PROMETHEUS_MULTIPROC_DIR before this module is imported) and the
supervisor exposes the sum. The Go webhook's counters had no `_total` suffix; they are
re-exported under those exact names as untyped samples next to the conventional ones.
"""

from __future__ import annotations

import os
from collections import Counter as Counter_
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    Summary,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from injector.core.decision import SKIPPED

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_GO_COMPAT = {
    "pod_identity_webhook_pod_count": "Pods for which a patch was built, per mode (Go webhook name).",
    "pod_identity_webhook_missing_sa_count": "Lookups that ended without the ServiceAccount (Go webhook name).",
    "http_request_count": "Requests by verb, path and response code (Go webhook name).",
}
# The Go webhook's request latencies are in microseconds, in buckets from 125 ms to 8 s.
GO_LATENCY_BUCKETS = tuple(125_000.0 * 2**n for n in range(7))
UNPUBLISHED_LIMIT = 50_000  # admissions counted before the serving path publishes them itself
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Counted by the ServiceAccount Events job (injector/kube/events.py), which `wiring` builds before the
# process has a `Metrics`: so this one counter belongs to the module, and every `Metrics` registers it.
SERVICE_ACCOUNT_EVENTS = Counter(
    "pod_identity_injector_service_account_events",
    "Kubernetes Events about ServiceAccount annotations, by outcome (docs/reference.md#service-account-events).",
    ["outcome"], registry=None)


# Lookups of missing ServiceAccounts not made because too many were pending (sources/serviceaccounts.py).
LOOKUPS_SHED = Counter(
    "pod_identity_injector_service_account_lookups_shed",
    "Direct lookups of missing ServiceAccounts not made because too many were pending (docs/reference.md#lookups).",
    registry=None)


def count_lookup_shed() -> None:
    LOOKUPS_SHED.inc()


# Entries of the EKS Pod Identity identities file left out as unusable (sources/credentials_file.py).
IDENTITIES_SKIPPED = Counter(
    "pod_identity_injector_pod_identity_entries_skipped",
    "Entries of the identities file left out as unusable, each counted when it first appears "
    "(docs/reference.md#identity-files).",
    registry=None)


def count_identity_skipped() -> None:
    IDENTITIES_SKIPPED.inc()


# When the self-managed certificate controller last completed a check (certificates/controller.py);
# an alert fires when it has not for three check intervals (a frozen API server, a stuck call).
CERTIFICATE_CHECKED = Gauge(
    "pod_identity_injector_certificate_check_success_timestamp_seconds",
    "When the self-managed certificate check last completed (Unix time).", registry=None,
    multiprocess_mode="max")


def mark_certificate_checked() -> None:
    CERTIFICATE_CHECKED.set_to_current_time()


# Counted by jobs that wiring builds before the process has a `Metrics`: every one registers them.
EDGE_METRICS = (SERVICE_ACCOUNT_EVENTS, LOOKUPS_SHED, IDENTITIES_SKIPPED, CERTIFICATE_CHECKED)


def count_service_account_event(outcome: str) -> None:
    SERVICE_ACCOUNT_EVENTS.labels(outcome).inc()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def use_multiprocess_dir(path: str) -> None:
    """Multiprocess mode for every metric created from now on, in this process and the ones it
    forks. prometheus-client chooses how values are stored when it is imported, which happens
    before `serve` knows how many workers it runs, so the choice is made again here."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    values.ValueClass = values.get_value_class()


class Metrics:
    """The process's metric objects; in multiprocess mode their values go to shared files."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # `_created` samples only add noise here
        reg = registry if registry is not None else CollectorRegistry()
        if multiprocess_dir() is None:
            ProcessCollector(registry=reg)  # per-process CPU/memory; meaningless once summed
        self.registry = reg
        self.admissions = Counter(
            "pod_identity_injector_admissions", "Admission decisions by mode and decision.",
            ["mode", "decision"], registry=reg)
        self.admission_seconds = Histogram(
            "pod_identity_injector_admission_duration_seconds", "Time to answer one /mutate request.",
            buckets=LATENCY_BUCKETS, registry=reg)
        self.skipped = Counter(
            "pod_identity_injector_skipped", "Pods with an identity left unchanged on purpose, by reason.",
            ["reason"], registry=reg)
        for metric in EDGE_METRICS:  # module-level: their jobs count before a Metrics exists
            reg.register(metric)
        self.http_requests = Counter(
            "pod_identity_injector_http_requests", "HTTP requests on the webhook port.",
            ["method", "path", "code"], registry=reg)
        # The Go webhook's request metrics, under its names and labels, so its dashboards work.
        self.go_requests = Counter("http_request_count", _GO_COMPAT["http_request_count"], ["verb", "path", "code"],
                                   registry=reg)
        self.go_latencies = Histogram(
            "http_request_latencies", "Response latency distribution in microseconds for each verb and path "
            "(Go webhook name).", ["verb", "path"], buckets=GO_LATENCY_BUCKETS, registry=reg)
        self.go_latency_summary = Summary(
            "http_request_duration_microseconds", "Response latency summary in microseconds for each verb and path "
            "(Go webhook name).", ["verb", "path"], registry=reg)
        self.pod_count = Counter(
            "pod_identity_webhook_pod_count", _GO_COMPAT["pod_identity_webhook_pod_count"],
            ["method"], registry=reg)
        self.missing_sa = Counter(
            "pod_identity_webhook_missing_sa_count", _GO_COMPAT["pod_identity_webhook_missing_sa_count"],
            registry=reg)
        self.used = Gauge(
            "pod_identity_webhook_used", "1 once any ServiceAccount is known (Go webhook name).",
            registry=reg, multiprocess_mode="max")
        self.cert_expiry = Gauge(
            "pod_identity_injector_serving_certificate_expiry_timestamp_seconds",
            "Unix time at which the loaded serving certificate expires.",
            registry=reg, multiprocess_mode="min")
        self.ready = Gauge(
            "pod_identity_injector_ready", "1 while this process reports ready.",
            registry=reg, multiprocess_mode="min")
        self._children: dict[tuple, Any] = {}
        self._admission_counts: Counter_[tuple[str, str]] = Counter_()
        self._request_counts: Counter_[tuple[str, str, int]] = Counter_()
        self._request_durations: list[tuple[str, str, float]] = []
        self._durations: list[float] = []

    def _child(self, metric: Any, *labels: str) -> Any:
        """Label children are looked up once and then reused."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # The serving path only counts; `publish()` adds the counts to the Prometheus objects, at
    # every scrape of this process and every second (`routes.refresh_gauges`), so a worker's counts
    # reach the shared files within a second. A lock and several calls per admission were 3 %
    # of its CPU.
    def count_admission(self, mode: str, decision: str, seconds: float) -> None:
        self._admission_counts[mode, decision] += 1
        self._durations.append(seconds)
        if len(self._durations) >= UNPUBLISHED_LIMIT:  # nothing published them for a long while
            self.publish()

    def count_request(self, method: str, path: str, status: int, seconds: float) -> None:
        self._request_counts[method, path, status] += 1
        self._request_durations.append((method, path, seconds))
        if len(self._request_durations) >= UNPUBLISHED_LIMIT:
            self.publish()

    def publish(self) -> None:
        admissions, self._admission_counts = self._admission_counts, Counter_()
        requests, self._request_counts = self._request_counts, Counter_()
        durations, self._durations = self._durations, []
        request_durations, self._request_durations = self._request_durations, []
        for (mode, decision), count in admissions.items():
            self._child(self.admissions, mode or "none", decision).inc(count)
            if decision in SKIPPED:
                self._child(self.skipped, decision).inc(count)
            if mode:
                self._child(self.pod_count, mode).inc(count)
        for seconds in durations:
            self.admission_seconds.observe(seconds)
        for (method, path, status), count in requests.items():
            self._child(self.http_requests, method, path, str(status)).inc(count)
            self._child(self.go_requests, method, path, str(status)).inc(count)
        for method, path, seconds in request_durations:
            microseconds = seconds * 1_000_000
            self._child(self.go_latencies, method, path).observe(microseconds)
            self._child(self.go_latency_summary, method, path).observe(microseconds)


class _GoCompatCollector:
    """Re-exports the Go webhook's counters under their exact, suffix-free names."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self):
        for family in self.source.collect():
            if family.name in _GO_COMPAT:
                compat = Metric(family.name, family.documentation, "unknown")
                for sample in family.samples:
                    if sample.name == family.name + "_total":
                        compat.add_sample(family.name, sample.labels, sample.value)
                yield compat


class Exposition:
    """Renders /metrics for this process, or for every worker in multiprocess mode."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        path = multiprocess_dir()
        if path:
            self.primary = CollectorRegistry()
            MultiProcessCollector(self.primary, path=path)
        else:
            self.primary = metrics.registry
        self.compat = CollectorRegistry()
        self.compat.register(_GoCompatCollector(self.primary))

    def render(self) -> bytes:
        self.metrics.publish()  # this process's counts; other workers publish their own every second
        return generate_latest(self.primary) + generate_latest(self.compat)
