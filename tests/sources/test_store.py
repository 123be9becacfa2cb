"""The identity store: updates, readiness, the direct lookup on a miss
(docs/reference.md#lookup-grace), and problems in what arrives logged once, in one place,
whichever way it arrived (docs/mutation.md#service-account-annotations)."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from injector.core.identity import parse_config_map, service_account_entry
from injector.core.settings import MutationSettings
from injector.sources.store import IdentityStore

SETTINGS = MutationSettings()
ROLE = "arn:aws:iam::111122223333:role/app"
BAD = service_account_entry({"eks.amazonaws.com/role-arn": ROLE, "eks.amazonaws.com/token-expiration": "1h"},
                            SETTINGS)


def problems(logs: list[dict]) -> list[tuple[str, str]]:
    return [(entry["service_account"], entry["problem"]) for entry in logs
            if entry["event"] == "service account annotation problem"]


def test_a_problem_is_logged_whether_a_list_or_an_event_brought_it():
    store = IdentityStore(SETTINGS)
    with capture_logs() as logs:
        store.replace_service_accounts({"ns/listed": BAD})
        store.put_service_account("ns", "watched", BAD)
    assert [key for key, _ in problems(logs)] == ["ns/listed", "ns/watched"]
    assert "token-expiration '1h' is not an integer" in problems(logs)[0][1]


def test_a_relist_or_an_unchanged_update_repeats_nothing():
    store = IdentityStore(SETTINGS)
    store.replace_service_accounts({"ns/a": BAD})
    with capture_logs() as logs:
        store.replace_service_accounts({"ns/a": BAD})
        store.put_service_account("ns", "a", BAD)
    assert problems(logs) == []


def test_a_sync_shares_equal_entries_and_reports_every_entry_with_news_however_they_interleave():
    store = IdentityStore(SETTINGS)
    plain, also_plain = service_account_entry(None, SETTINGS), service_account_entry(None, SETTINGS)
    no_role = service_account_entry({"eks.amazonaws.com/audience": "other"}, SETTINGS)
    told: list[str] = []
    store.problem_listeners.append(lambda key, entry: told.append(key))
    with capture_logs() as logs:
        store.replace_service_accounts({"ns/a": plain, "ns/bad": BAD, "ns/b": plain, "ns/c": also_plain,
                                        "ns/no-role": no_role, "ns/d": plain, "ns/bad-too": BAD})
    table = store.tables.service_accounts
    assert all(table[key] is table["ns/a"] for key in ("ns/b", "ns/c", "ns/d"))
    assert [key for key, _ in problems(logs)] == ["ns/bad", "ns/bad-too"]
    assert told == ["ns/bad", "ns/no-role", "ns/bad-too"]


def test_the_offline_store_logs_nothing():
    store = IdentityStore(SETTINGS, log_problems=False)
    with capture_logs() as logs:
        store.replace_service_accounts({"ns/a": BAD})
        store.replace_config_map(parse_config_map({"no-slash": {"RoleARN": ROLE}}, SETTINGS))
    assert logs == []


def test_a_rejected_config_map_key_is_logged_once():
    store = IdentityStore(SETTINGS)
    mapping = parse_config_map({"no-slash": {"RoleARN": ROLE}, "ns/ok": {"RoleARN": ROLE}}, SETTINGS)
    with capture_logs() as logs:
        store.replace_config_map(mapping)
        store.replace_config_map(parse_config_map({"no-slash": {"RoleARN": ROLE}, "ns/ok": {"RoleARN": ROLE}},
                                                  SETTINGS))
    assert [entry["event"] for entry in logs] == ["config map entry rejected"]


def test_ready_means_every_expected_source_has_loaded():
    store = IdentityStore(SETTINGS)
    store.expect("serviceaccounts")
    store.expect("configmap")
    store.mark_ready("configmap")
    assert store.waiting_for == ("serviceaccounts",)
    store.mark_ready("serviceaccounts")
    assert store.waiting_for == ()


async def test_a_miss_is_fetched_and_waited_for_at_most_the_grace_period():
    store = IdentityStore(SETTINGS, lookup_grace=1.0)
    fetched = []

    async def fetch(namespace: str, name: str) -> bool:
        fetched.append((namespace, name))
        store.put_service_account(namespace, name, service_account_entry({"eks.amazonaws.com/role-arn": ROLE},
                                                                         SETTINGS))
        return True

    store.fetch_missing = fetch
    resolution = await store.resolve_waiting("ns", "app")
    assert fetched == [("ns", "app")] and resolution.identity is not None and resolution.identity.role_arn == ROLE
    assert (await store.resolve_waiting("ns", "app")).service_account_known and len(fetched) == 1


async def test_a_slow_lookup_gives_up_after_the_grace_period_without_cancelling_the_fetch():
    store = IdentityStore(SETTINGS, lookup_grace=0.05)
    release = asyncio.Event()
    fetch_task: list[asyncio.Task] = []

    def fetch(namespace: str, name: str) -> asyncio.Task:
        fetch_task.append(asyncio.ensure_future(release.wait()))
        return fetch_task[0]

    store.fetch_missing = fetch
    resolution = await store.resolve_waiting("ns", "slow")
    assert (resolution.identity, resolution.reason) == (None, "service-account-not-found")
    assert not fetch_task[0].cancelled()
    release.set()
    await fetch_task[0]


async def test_no_fetch_without_a_grace_period_or_a_name():
    for grace, name in ((0.0, "app"), (1.0, "")):
        store = IdentityStore(SETTINGS, lookup_grace=grace)
        store.fetch_missing = lambda namespace, name: (_ for _ in ()).throw(AssertionError("fetched"))
        assert (await store.resolve_waiting("ns", name)).identity is None
