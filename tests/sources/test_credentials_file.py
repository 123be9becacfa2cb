"""The EKS Pod Identity identities file, kept loaded (docs/reference.md#identity-files):
rewrites and volume swaps are picked up, invalid JSON keeps the previous set, a bad entry is
left out (logged once, counted) and the rest are used, a deleted or empty file means no
associations."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from injector.core.settings import MutationSettings
from injector.sources.credentials_file import CredentialsFileSource
from injector.sources.store import IdentityStore


def identities(*pairs: tuple[str, str]) -> str:
    return json.dumps({"identities": [{"namespace": ns, "serviceAccount": sa} for ns, sa in pairs]})


@pytest.fixture
def store() -> IdentityStore:
    return IdentityStore(MutationSettings())


def write(path: Path, text: str) -> None:
    """Write and make sure the change is visible to a stat-based check (new inode)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_the_file_is_loaded_at_start(tmp_path, store):
    path = tmp_path / "config.json"
    path.write_text(identities(("team", "app")))
    assert CredentialsFileSource(str(path), store).load() is True
    assert store.tables.pod_identities == {("team", "app")}


@pytest.mark.parametrize("text", ["", "  \n", '{"identities": null}', "{}"])
def test_an_empty_file_means_no_associations(tmp_path, store, text):
    path = tmp_path / "config.json"
    path.write_text(text)
    assert CredentialsFileSource(str(path), store).load() is True
    assert store.tables.pod_identities == frozenset()


def test_a_missing_file_means_no_associations(tmp_path, store):
    assert CredentialsFileSource(str(tmp_path / "absent.json"), store).load() is True
    assert store.tables.pod_identities == frozenset()


def test_a_rewrite_is_picked_up_and_an_unchanged_file_is_not_reread(tmp_path, store):
    path = tmp_path / "config.json"
    path.write_text(identities(("team", "app")))
    source = CredentialsFileSource(str(path), store)
    source.load()
    assert source.reload_if_changed() is False
    write(path, identities(("team", "app"), ("team", "worker")))
    assert source.reload_if_changed() is True
    assert store.tables.pod_identities == {("team", "app"), ("team", "worker")}


def test_a_kubernetes_volume_swap_is_picked_up(tmp_path, store):
    """ConfigMap volumes replace a `..data` symlink; the file itself is a link to it."""
    first, second = tmp_path / "..2024_01", tmp_path / "..2024_02"
    first.mkdir()
    second.mkdir()
    (first / "config.json").write_text(identities(("a", "one")))
    (second / "config.json").write_text(identities(("b", "two")))
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "config.json").symlink_to("..data/config.json")
    source = CredentialsFileSource(str(tmp_path / "config.json"), store)
    source.load()
    assert store.tables.pod_identities == {("a", "one")}
    (tmp_path / "..data_tmp").symlink_to(second.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert source.reload_if_changed() is True
    assert store.tables.pod_identities == {("b", "two")}


@pytest.mark.parametrize("text", ["{not json", '{"identities": "all"}', '{"Identities": {"namespace": "a"}}', "[]"])
def test_an_invalid_file_keeps_the_previous_set_and_says_why(tmp_path, store, text):
    path = tmp_path / "config.json"
    path.write_text(identities(("team", "app")))
    source = CredentialsFileSource(str(path), store)
    source.load()
    write(path, text)
    with capture_logs() as logs:
        assert source.reload_if_changed() is True
    assert store.tables.pod_identities == {("team", "app")}
    assert [entry["event"] for entry in logs] == ["pod identity file invalid; keeping previous identities"]
    assert logs[0]["path"] == str(path)


def test_keys_match_in_any_case_as_in_go(tmp_path, store):
    path = tmp_path / "config.json"
    path.write_text('{"Identities": [{"Namespace": "team", "ServiceAccount": "app"}]}')
    assert CredentialsFileSource(str(path), store).load() is True
    assert store.tables.pod_identities == {("team", "app")}


def test_a_bad_entry_is_skipped_with_one_warning_and_one_count_and_the_rest_are_used(tmp_path, store):
    path = tmp_path / "config.json"
    path.write_text(identities(("team", "app")))
    counted = []
    source = CredentialsFileSource(str(path), store, skipped=lambda: counted.append(1))
    source.load()
    write(path, '{"identities": [{"namespace": "team", "serviceAccount": "app"}, {"namespace": 7},'
                ' {"namespace": "team", "serviceAccount": "worker"}]}')
    with capture_logs() as logs:
        assert source.reload_if_changed() is True
    assert store.tables.pod_identities == {("team", "app"), ("team", "worker")}
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [(w["event"], w["index"], w["entry"], w["problem"]) for w in warnings] == [
        ("pod identity entry skipped", 1, '{"namespace":7}', '"namespace" must be a string')]
    assert warnings[0]["path"] == str(path)
    assert len(counted) == 1


def test_a_bad_entry_is_reported_once_across_rewrites_that_keep_it(tmp_path, store):
    path = tmp_path / "config.json"
    bad = '{"namespace": "team"}'
    path.write_text(f'{{"identities": [{bad}]}}')
    counted = []
    source = CredentialsFileSource(str(path), store, skipped=lambda: counted.append(1))
    with capture_logs() as logs:
        source.load()
        write(path, f'{{"identities": [{{"namespace": "team", "serviceAccount": "app"}}, {bad}]}}')
        assert source.reload_if_changed() is True
        assert store.tables.pod_identities == {("team", "app")}
        write(path, f'{{"identities": [{bad}, "again"]}}')
        assert source.reload_if_changed() is True
    skipped = [(entry["index"], entry["entry"]) for entry in logs if entry["event"] == "pod identity entry skipped"]
    assert skipped == [(0, '{"namespace":"team"}'), (1, '"again"')]
    assert len(counted) == 2


def test_a_bad_entry_fixed_and_broken_again_is_reported_again(tmp_path, store):
    path = tmp_path / "config.json"
    path.write_text('{"identities": [{"namespace": "team"}]}')
    counted = []
    source = CredentialsFileSource(str(path), store, skipped=lambda: counted.append(1))
    source.load()
    write(path, identities(("team", "app")))
    source.reload_if_changed()
    write(path, '{"identities": [{"namespace": "team"}]}')
    source.reload_if_changed()
    assert len(counted) == 2


def test_deleting_the_file_clears_the_associations(tmp_path, store):
    path = tmp_path / "config.json"
    path.write_text(identities(("team", "app")))
    source = CredentialsFileSource(str(path), store)
    source.load()
    path.unlink()
    assert source.reload_if_changed() is True
    assert store.tables.pod_identities == frozenset()


async def test_watch_polls_until_cancelled(tmp_path, store):
    path = tmp_path / "config.json"
    path.write_text(identities(("team", "app")))
    source = CredentialsFileSource(str(path), store)
    source.load()
    task = asyncio.create_task(source.watch(interval=0.01))
    write(path, identities(("team", "other")))
    async with asyncio.timeout(5):
        while store.tables.pod_identities != {("team", "other")}:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
