"""The ServiceAccount source's rate limit for direct lookups (docs/reference.md#lookup-grace):
a token bucket of 10 a second with a burst of 20, like the Go webhook's."""

from __future__ import annotations

import asyncio
import time

from injector.sources.serviceaccounts import TokenBucket


async def test_the_burst_is_available_at_once():
    bucket = TokenBucket()
    started = time.monotonic()
    for _ in range(20):
        await bucket.acquire()
    assert time.monotonic() - started < 0.09  # the 21st would need a tenth of a second
    assert bucket.tokens < 1


async def test_past_the_burst_tokens_come_at_the_rate():
    bucket = TokenBucket(rate=50.0, burst=2)
    await bucket.acquire()
    await bucket.acquire()
    started = time.monotonic()
    for _ in range(3):
        await bucket.acquire()
    assert time.monotonic() - started >= 3 / 50 - 0.005


async def test_idle_time_refills_up_to_the_burst_only():
    bucket = TokenBucket(rate=1000.0, burst=3)
    for _ in range(3):
        await bucket.acquire()
    await asyncio.sleep(0.05)  # worth 50 tokens at this rate
    await bucket.acquire()
    assert bucket.tokens <= 2


async def test_waiters_are_served_one_token_each():
    bucket = TokenBucket(rate=100.0, burst=1)
    started = time.monotonic()
    await asyncio.gather(*(bucket.acquire() for _ in range(4)))
    assert time.monotonic() - started >= 3 / 100 - 0.005


# -- what the API server sends, whatever its shape ------------------------------------------------
def _source():
    from injector.core.settings import MutationSettings
    from injector.sources.serviceaccounts import ServiceAccountSource
    from injector.sources.store import IdentityStore

    store = IdentityStore(MutationSettings())
    source = ServiceAccountSource.__new__(ServiceAccountSource)  # no API client: only the callbacks
    source.store = store
    return source, store


def sync(source, objects: list) -> None:
    """What the reflector does with a sync: each object reduced by `_entry` under its key, then
    one `_replace`."""
    from injector.sources.reflector import object_key

    source._replace({object_key(obj): source._entry(obj) for obj in objects})


def test_annotations_that_are_not_a_map_count_as_none_and_the_list_still_completes():
    source, store = _source()
    sync(source, [
        {"metadata": {"namespace": "ns", "name": "odd", "annotations": ["eks.amazonaws.com/role-arn"]}},
        {"metadata": {"namespace": "ns", "name": "app",
                      "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/app"}}},
    ])
    odd, app = store.tables.service_accounts["ns/odd"], store.tables.service_accounts["ns/app"]
    assert odd.role_arn == "" and "not a map" in odd.problems[0]
    assert app.role_arn == "arn:aws:iam::111122223333:role/app"


def test_objects_without_a_namespace_and_name_are_skipped_on_a_list_and_on_an_event():
    source, store = _source()
    sync(source, ["text", {"metadata": "x"}, {"metadata": {"name": 3, "namespace": "ns"}},
                     {"metadata": {"namespace": "ns", "name": "ok"}}])
    assert list(store.tables.service_accounts) == ["ns/ok"]
    source._event("ADDED", {"metadata": {"name": "no-namespace"}})
    source._event("DELETED", {"metadata": None})
    assert list(store.tables.service_accounts) == ["ns/ok"]


def test_service_accounts_with_the_same_identity_share_one_entry():
    """Most ServiceAccounts carry none of our annotations: they cost a key, not an entry each."""
    source, store = _source()
    sync(source, [{"metadata": {"namespace": "ns", "name": f"sa-{i}"}} for i in range(3)])
    source._event("ADDED", {"metadata": {"namespace": "other", "name": "late"}})
    entries = list(store.tables.service_accounts.values())
    assert len(entries) == 4 and all(entry is entries[0] for entry in entries)


def test_a_service_account_with_only_foreign_annotations_gets_the_flag_defaults_like_one_without():
    source, store = _source()
    sync(source, [{"metadata": {"namespace": "ns", "name": "plain"}},
                  {"metadata": {"namespace": "ns", "name": "foreign", "annotations": {"team": "a", "x/y": "z"}}},
                  {"metadata": {"namespace": "ns", "name": "ours",
                                "annotations": {"team": "a", "eks.amazonaws.com/audience": "other"}}}])
    plain, foreign, ours = (store.tables.service_accounts[f"ns/{n}"] for n in ("plain", "foreign", "ours"))
    assert foreign is plain and plain.audience == "sts.amazonaws.com" and not plain.role_arn
    assert ours.audience == "other"


async def test_lookups_past_the_pending_limit_are_shed_at_once_counted_and_summarised():
    """docs/reference.md#lookups: made-up names cannot queue lookups without end. Duplicates
    share one lookup; past MAX_PENDING_LOOKUPS a miss is answered "not found" at once."""
    from kubernetes_asyncio import client
    from structlog.testing import capture_logs

    from injector.core.settings import MutationSettings
    from injector.sources.serviceaccounts import MAX_PENDING_LOOKUPS, ServiceAccountSource
    from injector.sources.store import IdentityStore

    shed: list[int] = []
    api = client.ApiClient()
    source = ServiceAccountSource(api, IdentityStore(MutationSettings()), shed=lambda: shed.append(1))
    gate = asyncio.Event()

    async def slow_lookup(namespace: str, name: str) -> bool:
        await gate.wait()
        return False

    source._fetch = slow_lookup
    try:
        pending = [source.fetch("ns", f"sa-{i}") for i in range(MAX_PENDING_LOOKUPS)]
        assert source.fetch("ns", "sa-0") is pending[0]
        with capture_logs() as logs:
            over = [source.fetch("ns", f"made-up-{i}") for i in range(50)]
        assert all(f.done() and f.result() is False for f in over) and len(shed) == 50
        assert [(line["event"], line["count"]) for line in logs] == [
            ("service account lookups shed: too many pending", 1)]
        gate.set()
        await asyncio.gather(*pending)
        await asyncio.sleep(0)
        assert not source.fetch("ns", "after-the-flood").done()  # room again
    finally:
        gate.set()
        await api.close()
