"""injector/server/metrics.py: what the serving path counts, and when it shows in the registry."""

from __future__ import annotations

from injector.server.metrics import Exposition, Metrics, count_identity_skipped


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_counts_reach_the_registry_when_published_and_only_once():
    metrics = Metrics()
    metrics.count_admission("sts_web_identity", "mutated", 0.002)
    metrics.count_admission("sts_web_identity", "mutated", 0.004)
    metrics.count_request("POST", "/mutate", 200, 0.003)
    admissions = {"mode": "sts_web_identity", "decision": "mutated"}
    assert sample(metrics, "pod_identity_injector_admissions_total", **admissions) is None
    metrics.publish()
    metrics.publish()  # nothing new: nothing added twice
    assert sample(metrics, "pod_identity_injector_admissions_total", **admissions) == 2
    assert sample(metrics, "pod_identity_webhook_pod_count_total", method="sts_web_identity") == 2
    assert sample(metrics, "pod_identity_injector_http_requests_total", method="POST", path="/mutate", code="200") == 1
    assert sample(metrics, "pod_identity_injector_admission_duration_seconds_count") == 2
    assert abs(sample(metrics, "pod_identity_injector_admission_duration_seconds_sum") - 0.006) < 1e-9
    assert sample(metrics, "pod_identity_injector_admission_duration_seconds_bucket", le="0.0025") == 1


def test_a_skipped_pod_and_a_decision_without_mode_are_counted_as_such():
    metrics = Metrics()
    metrics.count_admission("sts_web_identity", "volume-collision", 0.001)
    metrics.count_admission("", "no-identity", 0.001)
    metrics.publish()
    assert sample(metrics, "pod_identity_injector_skipped_total", reason="volume-collision") == 1
    assert sample(metrics, "pod_identity_injector_admissions_total", mode="none", decision="no-identity") == 1
    assert sample(metrics, "pod_identity_webhook_pod_count_total", method="sts_web_identity") == 1


def test_a_scrape_publishes_first_and_shows_the_go_webhook_names():
    metrics = Metrics()
    metrics.count_admission("sts_web_identity", "mutated", 0.001)
    text = Exposition(metrics).render().decode()
    assert 'pod_identity_injector_admissions_total{decision="mutated",mode="sts_web_identity"} 1.0' in text
    assert 'pod_identity_webhook_pod_count{method="sts_web_identity"} 1.0' in text


def test_counts_nothing_publishes_are_published_before_they_pile_up(monkeypatch):
    from injector.server import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "UNPUBLISHED_LIMIT", 10)
    metrics = Metrics()
    for _ in range(25):
        metrics.count_admission("sts_web_identity", "mutated", 0.001)
    assert sample(metrics, "pod_identity_injector_admission_duration_seconds_count") == 20
    metrics.publish()
    assert sample(metrics, "pod_identity_injector_admission_duration_seconds_count") == 25


def test_the_go_webhooks_request_metrics_keep_their_names_labels_and_microseconds():
    """docs/reference.md#metrics: http_request_count{verb,path,code} without a suffix,
    http_request_latencies{verb,path} in microseconds with Go's buckets (125 ms to 8 s), and
    http_request_duration_microseconds, so the Go webhook's dashboards keep working."""
    metrics = Metrics()
    metrics.count_request("POST", "/mutate", 200, 0.0004)
    metrics.count_request("POST", "/mutate", 200, 0.3)
    metrics.count_request("POST", "/debug/alpha/500", 500, 0.0001)
    text = Exposition(metrics).render().decode()
    assert 'http_request_count{code="200",path="/mutate",verb="POST"} 2.0' in text
    assert 'http_request_count{code="500",path="/debug/alpha/500",verb="POST"} 1.0' in text
    go = {"verb": "POST", "path": "/mutate"}
    assert sample(metrics, "http_request_latencies_bucket", **go, le="125000.0") == 1
    assert sample(metrics, "http_request_latencies_bucket", **go, le="500000.0") == 2
    assert sample(metrics, "http_request_latencies_bucket", **go, le="8e+06") == 2
    assert abs(sample(metrics, "http_request_latencies_sum", **go) - 300_400) < 1e-6
    assert sample(metrics, "http_request_duration_microseconds_count", **go) == 2


def test_skipped_identities_entries_show_in_every_metrics_registry():
    """The identities file's source counts before any `Metrics` exists (server/wiring.py)."""
    name = "pod_identity_injector_pod_identity_entries_skipped_total"
    before = sample(Metrics(), name)
    count_identity_skipped()
    assert sample(Metrics(), name) == before + 1
