"""The supervisor → worker table stream (injector/server/table_feed.py): what a worker's copy of the
tables can rely on."""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import pytest

from injector.core.identity import ConfigMapMapping, RoleMapping, service_account_entry
from injector.core.settings import MutationSettings
from injector.server.table_feed import FeedError, TableFeed, TableFeedClient, decode_update, encode_update, read_message
from injector.sources.store import IdentityStore

SETTINGS = MutationSettings()
ROLE = "arn:aws:iam::111122223333:role/app"
# Every field set to something other than its default, so a field the feed forgets shows.
ENTRY = RoleMapping(ROLE, "sts.amazonaws.com", True, 3600, ("a problem",), ("a warning",), ("audience",),
                    "eu-central-1", True)


def test_the_entry_in_these_tests_sets_every_field_of_a_role_mapping():
    defaults = RoleMapping("", "", False, 0)
    assert all(getattr(ENTRY, f.name) != getattr(defaults, f.name) for f in dataclasses.fields(RoleMapping))


def roundtrip(update):
    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(encode_update(update))
        reader.feed_eof()
        message = await read_message(reader)
        assert await read_message(reader) is None
        return decode_update(message)

    return asyncio.run(go())


@pytest.mark.parametrize("update", [
    ("put", "ns/app", ENTRY),
    ("remove", "ns/app"),
    ("clear",),
    ("pod_identities", frozenset({("ns", "a"), ("other", "b")})),
    ("config_map", ConfigMapMapping({"ns/app": ENTRY}, (("team-*", "app", ENTRY),), ("key 'x' rejected",))),
])
def test_every_kind_of_update_arrives_as_it_was_sent(update):
    got = roundtrip(update)
    assert got == update
    if update[0] == "put":  # problems take no part in equality; they travel all the same
        assert [getattr(got[2], f.name) for f in dataclasses.fields(RoleMapping)] == [
            getattr(ENTRY, f.name) for f in dataclasses.fields(RoleMapping)]
    if update[0] == "config_map":
        assert got[1].rejected == update[1].rejected


def test_an_unknown_message_is_an_error_not_data():
    with pytest.raises(FeedError):
        decode_update(["upsert", "ns/app"])


def test_apply_changes_the_tables_without_reporting_or_notifying():
    store = IdentityStore(SETTINGS)
    reported, notified = [], []
    store.problem_listeners.append(lambda key, entry: reported.append(key))
    store.update_listeners.append(notified.append)
    store.apply(("put", "ns/app", ENTRY))
    assert store.resolve("ns", "app").identity.role_arn == ROLE
    store.apply(("pod_identities", frozenset({("ns", "app")})))
    assert store.resolve("ns", "app").reason == "pod-identity-association"
    store.apply(("remove", "ns/app"))
    store.apply(("clear",))  # as the Go webhook's clear: the Pod Identity list stays
    assert not store.tables.service_accounts and store.tables.pod_identities == frozenset({("ns", "app")})
    assert reported == [] and notified == []


def test_a_relist_reports_only_what_changed():
    store = IdentityStore(SETTINGS)
    plain = service_account_entry(None, SETTINGS)
    store.replace_service_accounts({"ns/a": plain, "ns/b": plain, "ns/gone": plain})
    updates = []
    store.update_listeners.append(updates.append)
    store.replace_service_accounts({"ns/a": plain, "ns/b": ENTRY, "ns/new": plain})
    assert sorted(updates, key=str) == sorted([("put", "ns/b", ENTRY), ("put", "ns/new", plain),
                                               ("remove", "ns/gone")], key=str)


async def _pair(supervisor_store: IdentityStore, worker_store: IdentityStore, on_lost=None):
    ours, theirs = socket.socketpair()
    feed = TableFeed(supervisor_store, [ours])
    await feed.open()
    client = TableFeedClient(worker_store, theirs, on_lost=on_lost)
    await client.open()
    return feed, client


async def _eventually(check, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_every_change_of_the_supervisors_store_reaches_the_worker():
    supervisor, worker = IdentityStore(SETTINGS), IdentityStore(SETTINGS)
    feed, client = await _pair(supervisor, worker)
    tasks = [asyncio.create_task(feed.run()), asyncio.create_task(client.run())]
    supervisor.put_service_account("ns", "app", ENTRY)
    supervisor.put_service_account("ns", "other", ENTRY)
    supervisor.remove_service_account("ns", "other")
    supervisor.replace_config_map(ConfigMapMapping({"ns/cm": ENTRY}))
    await _eventually(lambda: client.applied == 4)
    assert worker.tables.service_accounts == {"ns/app": ENTRY}
    assert worker.resolve("ns", "cm").reason == "config-map"
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert not client.lost  # cancelled at shutdown: not a lost supervisor


async def test_a_workers_miss_is_fetched_by_the_supervisor_once_and_answered_after_the_change():
    supervisor, worker = IdentityStore(SETTINGS, 1.0), IdentityStore(SETTINGS, 1.0)
    fetched = []

    async def fetch(namespace: str, name: str) -> bool:
        fetched.append((namespace, name))
        await asyncio.sleep(0.05)
        supervisor.put_service_account(namespace, name, ENTRY)
        return True

    supervisor.fetch_missing = fetch
    feed, client = await _pair(supervisor, worker)
    worker.fetch_missing = client.fetch
    tasks = [asyncio.create_task(feed.run()), asyncio.create_task(client.run())]
    first, second = await asyncio.gather(worker.resolve_waiting("ns", "late"),
                                         worker.resolve_waiting("ns", "late"))
    assert first.identity.role_arn == ROLE and second.identity.role_arn == ROLE
    assert fetched == [("ns", "late")]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_the_end_of_the_stream_is_a_lost_supervisor_and_releases_waiters():
    supervisor, worker = IdentityStore(SETTINGS), IdentityStore(SETTINGS)
    lost = asyncio.Event()
    feed, client = await _pair(supervisor, worker, on_lost=lost.set)
    reader = asyncio.create_task(client.run())
    waiting = client.fetch("ns", "app")  # the feed serves no requests here: never answered
    await asyncio.sleep(0.05)
    feed.close()  # as the supervisor's death closes its end
    await asyncio.wait_for(lost.wait(), 5)
    assert client.lost and waiting.done() and waiting.result() is False
    assert (await client.fetch("ns", "other")) is False  # nobody left to ask
    await reader
