"""Sync once, then only watch, against a fake API call (docs/reference.md#watches): the
watch-list sync and its fallback to a paginated LIST, bookmarks, resumption, 410 Gone and
other errors, and no periodic relist. The fake speaks what kubernetes-asyncio returns with
`_preload_content=False`, so `kube.list_page`/`watch_events` run for real."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from injector.sources import reflector
from injector.sources.reflector import Reflector


class Content:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def iter_any(self):
        for chunk in self.chunks:
            yield chunk


class Response:
    """A raw aiohttp-like response: a list page, or a watch stream of JSON lines."""

    def __init__(self, status: int = 200, body: Any = None, events: list[dict] | None = None) -> None:
        self.status = status
        self.body = orjson.dumps(body) if body is not None else b""
        lines = b"".join(orjson.dumps(event) + b"\n" for event in events or [])
        # Split mid-line on purpose: watch_events must reassemble lines across chunks.
        self.content = Content([lines[:7], lines[7:]] if lines else [])

    async def read(self) -> bytes:
        return self.body

    def release(self) -> None:
        pass


class FakeApi:
    """Answers list and watch calls from two scripts; once a script is used up, the call
    waits forever (a watch the server keeps open)."""

    def __init__(self, lists: list[Response], watches: list[Response], watch_lasts: float = 0.0) -> None:
        self.lists, self.watches = list(lists), list(watches)
        self.watch_lasts = watch_lasts  # how long the server keeps each scripted watch open
        self.calls: list[tuple[str, dict]] = []
        self.changed = asyncio.Event()

    async def __call__(self, watch: bool = False, _preload_content: bool = True, _request_timeout: Any = None,
                       **params: Any) -> Response:
        assert _preload_content is False
        assert _request_timeout is not None  # every call has its deadlines (docs/reference.md#api-timeouts)
        self.calls.append(("watch" if watch else "list", params))
        self.changed.set()
        script = self.watches if watch else self.lists
        if not script:
            await asyncio.Event().wait()
        if watch and self.watch_lasts:
            await asyncio.sleep(self.watch_lasts)
        return script.pop(0)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]


def page(names: list[str], version: str = "10", continue_token: str = "") -> Response:
    metadata = {"resourceVersion": version, **({"continue": continue_token} if continue_token else {})}
    return Response(body={"items": [{"metadata": {"name": n}} for n in names], "metadata": metadata})


def event(kind: str, name: str, version: str) -> dict:
    return {"type": kind, "object": {"metadata": {"name": name, "resourceVersion": version}}}


class Recorder:
    def __init__(self) -> None:
        self.replaced: list[list[str]] = []
        self.events: list[tuple[str, str]] = []
        self.synced = 0

    def on_replace(self, items: dict[str, dict]) -> None:
        assert all(key == f"/{item['metadata']['name']}" for key, item in items.items())  # by namespace/name
        self.replaced.append([item["metadata"]["name"] for item in items.values()])

    def on_event(self, kind: str, obj: dict) -> None:
        self.events.append((kind, obj["metadata"]["name"]))

    def on_synced(self) -> None:
        self.synced += 1


async def run_until(api: FakeApi, done, watch_list: bool = False, **selectors: Any) -> Recorder:
    """Run a reflector until `done(api, recorder)` holds (at most 5 s), then stop it. Without
    `watch_list` it syncs by LIST from the start, as against a server without WatchList."""
    recorder = Recorder()
    r = Reflector("test", api, on_replace=recorder.on_replace, on_event=recorder.on_event,
                  on_synced=recorder.on_synced, watch_list=watch_list, **selectors)
    task = asyncio.create_task(r.run())
    try:
        async with asyncio.timeout(5):
            while not done(api, recorder):
                api.changed.clear()
                await asyncio.wait([asyncio.create_task(api.changed.wait()), task], timeout=0.05,
                                   return_when=asyncio.FIRST_COMPLETED)
                assert not task.done() or task.cancelled(), task.exception()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return recorder


async def test_pages_are_joined_into_one_replace_and_the_watch_starts_at_the_lists_version():
    api = FakeApi([page(["a", "b"], continue_token="next"), page(["c"], version="42")], [])
    recorder = await run_until(api, lambda api, _: "watch" in api.kinds(), field_selector="metadata.name=x")
    assert recorder.replaced == [["a", "b", "c"]] and recorder.synced == 1
    (_, first), (_, second), (_, watch) = api.calls
    # From the API server's watch cache (resourceVersion "0"), in pages where it pages at all.
    assert first == {"limit": 500, "field_selector": "metadata.name=x", "resource_version": "0"}
    assert second == {"limit": 500, "field_selector": "metadata.name=x", "_continue": "next"}
    assert watch["resource_version"] == "42" and watch["allow_watch_bookmarks"] is True
    assert watch["field_selector"] == "metadata.name=x"


async def test_events_are_delivered_and_a_bookmark_moves_the_version_without_an_event():
    api = FakeApi([page([], version="1")], [
        Response(events=[event("ADDED", "a", "2"), event("BOOKMARK", "", "5"), event("MODIFIED", "a", "6"),
                         event("DELETED", "a", "7"), event("BOOKMARK", "", "9")]),
    ])
    recorder = await run_until(api, lambda api, _: api.kinds().count("watch") == 2)
    assert recorder.events == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    assert [params["resource_version"] for kind, params in api.calls if kind == "watch"] == ["1", "9"]
    assert api.kinds().count("list") == 1  # a watch the server ended is resumed, not relisted


@pytest.mark.parametrize("gone", [
    Response(events=[{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}]),
    Response(status=410, body={"kind": "Status", "code": 410, "message": "too old"}),
])
async def test_410_gone_means_list_again_at_once(gone):
    api = FakeApi([page(["a"], version="1"), page(["a", "b"], version="20")], [gone])
    recorder = await run_until(api, lambda api, _: api.kinds() == ["list", "watch", "list", "watch"])
    assert recorder.replaced == [["a"], ["a", "b"]] and recorder.synced == 1
    assert api.calls[-1][1]["resource_version"] == "20"


async def test_an_expired_continue_token_restarts_the_list_from_the_first_page():
    api = FakeApi([page(["a"], continue_token="t1"), Response(status=410, body={"message": "expired"}),
                   page(["a"], continue_token="t2"), page(["b"], version="3")], [])
    recorder = await run_until(api, lambda api, _: "watch" in api.kinds())
    assert recorder.replaced == [["a", "b"]]
    assert ["_continue" in params for kind, params in api.calls if kind == "list"] == [False, True, False, True]


@pytest.mark.parametrize("failure", [
    Response(status=500, body={"message": "etcd unavailable"}),
    Response(events=[{"type": "ERROR", "object": {"code": 500, "message": "internal"}}]),
])
async def test_other_errors_back_off_then_list_again(monkeypatch, failure):
    monkeypatch.setattr(reflector.random, "random", lambda: 0.0)  # the first delay is exactly 0.5 s
    api = FakeApi([page(["a"], version="1"), page(["a"], version="2")], [failure])
    loop = asyncio.get_running_loop()
    started = loop.time()
    recorder = await run_until(api, lambda api, _: api.kinds() == ["list", "watch", "list", "watch"])
    assert loop.time() - started >= 0.5
    assert recorder.replaced == [["a"], ["a"]] and recorder.synced == 1


async def test_a_failing_first_list_leaves_the_source_unsynced_until_a_list_succeeds(monkeypatch):
    monkeypatch.setattr(reflector.random, "random", lambda: 0.0)
    api = FakeApi([Response(status=403, body={"message": "forbidden"}), page(["a"])], [])
    recorder = await run_until(api, lambda api, rec: rec.synced == 1)
    assert api.kinds()[:2] == ["list", "list"] and recorder.replaced == [["a"]]


async def test_there_is_no_periodic_relist_only_resumed_watches():
    """--resync-period sends nothing: watches the server ends are resumed, never relisted."""
    api = FakeApi([page(["a"], version="1")], [Response(events=[event("BOOKMARK", "", str(v))]) for v in range(2, 40)])
    recorder = await run_until(api, lambda api, _: api.kinds().count("watch") >= 30)
    assert api.kinds().count("list") == 1 and recorder.replaced == [["a"]]
    watches = [params for kind, params in api.calls if kind == "watch"]
    assert all("timeout_seconds" not in params for params in watches)  # the server's --min-request-timeout


async def test_a_watch_the_server_keeps_open_past_our_deadline_is_ended_and_resumed_from_its_version(monkeypatch):
    monkeypatch.setattr(reflector, "WATCH_TIMEOUT", 0.1)
    api = FakeApi([page([], version="1")], [Response(events=[event("ADDED", "a", "5")])])
    recorder = await run_until(api, lambda api, _: api.kinds().count("watch") == 3)  # the 2nd never answers
    watches = [params["resource_version"] for kind, params in api.calls if kind == "watch"]
    assert watches == ["1", "5", "5"] and api.kinds().count("list") == 1 and recorder.events == [("ADDED", "a")]


# -- the watch-list sync (sendInitialEvents) -------------------------------------------------------
def end_of_initial_events(version: str) -> dict:
    return {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": version,
                                                        "annotations": {reflector.INITIAL_EVENTS_END: "true"}}}}


async def test_the_sync_is_a_watch_with_initial_events_and_the_same_stream_goes_on_as_the_watch():
    api = FakeApi([], [Response(events=[
        event("ADDED", "a", "3"), event("ADDED", "b", "4"), event("BOOKMARK", "", "5"), event("DELETED", "b", "4"),
        end_of_initial_events("6"), event("MODIFIED", "a", "7")])])
    recorder = await run_until(api, lambda api, _: api.kinds().count("watch") == 2, watch_list=True,
                               field_selector="metadata.name=x")
    assert recorder.replaced == [["a"]] and recorder.synced == 1
    assert recorder.events == [("MODIFIED", "a")]  # events after the bookmark only
    (_, sync), (_, resume) = api.calls
    assert sync == {"allow_watch_bookmarks": True, "send_initial_events": True,
                    "resource_version_match": "NotOlderThan", "field_selector": "metadata.name=x"}
    assert resume["resource_version"] == "7" and "send_initial_events" not in resume
    assert "list" not in api.kinds()


@pytest.mark.parametrize("refusal", [
    Response(status=422, body={"kind": "Status", "code": 422, "message": "sendInitialEvents is forbidden"}),
    Response(events=[{"type": "ERROR", "object": {"kind": "Status", "code": 400, "message": "bad request"}}]),
])
async def test_a_server_that_refuses_watch_list_is_listed_and_never_asked_again(refusal):
    gone = Response(events=[{"type": "ERROR", "object": {"code": 410, "message": "too old"}}])
    api = FakeApi([page(["a"], version="1"), page(["a", "b"], version="9")], [refusal, gone])
    recorder = await run_until(api, lambda api, _: api.kinds() == ["watch", "list", "watch", "list", "watch"],
                               watch_list=True)
    assert recorder.replaced == [["a"], ["a", "b"]]
    assert [("send_initial_events" in params) for kind, params in api.calls if kind == "watch"] == [True, False, False]


async def test_a_watch_list_stream_that_ends_before_its_bookmark_falls_back_to_a_list_at_once():
    api = FakeApi([page(["a", "b"], version="8")], [Response(events=[event("ADDED", "a", "3")])])
    recorder = await run_until(api, lambda api, _: api.kinds() == ["watch", "list", "watch"], watch_list=True)
    assert recorder.replaced == [["a", "b"]] and recorder.synced == 1
    assert api.calls[-1][1]["resource_version"] == "8"


async def test_410_after_a_watch_list_sync_syncs_again_by_watch_list():
    gone = Response(events=[{"type": "ERROR", "object": {"code": 410, "message": "too old"}}])
    api = FakeApi([], [Response(events=[event("ADDED", "a", "2"), end_of_initial_events("2")]), gone,
                       Response(events=[event("ADDED", "b", "5"), end_of_initial_events("5")])])
    recorder = await run_until(api, lambda _, rec: len(rec.replaced) == 2, watch_list=True)
    assert recorder.replaced == [["a"], ["b"]] and recorder.synced == 1 and "list" not in api.kinds()


async def test_each_object_of_a_sync_is_transformed_as_it_arrives():
    kept: list[Any] = []
    api = FakeApi([], [Response(events=[event("ADDED", "a", "2"), end_of_initial_events("2")])])
    r = Reflector("test", api, on_replace=lambda items: kept.extend(items.values()), on_event=lambda *_: None,
                  transform=lambda obj: obj["metadata"]["name"].upper())
    task = asyncio.create_task(r.run())
    async with asyncio.timeout(5):
        while not kept:
            await asyncio.sleep(0.01)
    task.cancel()
    assert kept == ["A"]


# -- a watch stream that is not what it should be --------------------------------------------------
from injector.kube.client import KubeError, watch_events  # noqa: E402


class Stream:
    def __init__(self, chunks: list[bytes]) -> None:
        self.status = 200
        self.content = Content(chunks)

    def release(self) -> None:
        pass


async def _events(chunks: list[bytes], **kwargs: Any) -> list[dict]:
    async def call(**_: Any) -> Stream:
        return Stream(chunks)

    return [e async for e in watch_events(call, **kwargs)]


async def test_a_line_without_a_newline_cannot_grow_past_the_limit():
    with pytest.raises(KubeError, match="longer than 1000 bytes"):
        await _events([b'{"type": "ADDED", "object": {"x": "' + b"y" * 600, b"y" * 600], max_event_bytes=1000)


async def test_lines_split_across_chunks_are_reassembled_and_blank_lines_skipped():
    events = await _events([b'{"type":"ADDED","object":{}}\n\n{"type":', b'"DELETED","object":{}}\n'])
    assert [e["type"] for e in events] == ["ADDED", "DELETED"]
    events = await _events([b'{"type":"AD', b'DED","obj', b'ect":{}}\n  \n{"type":"MODIFIED"', b',"object":{}}\n'])
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED"]


@pytest.mark.parametrize("line", [b"not json", b"[1]", b'{"type": "ADDED", "object": "x"}'])
async def test_a_line_that_is_not_an_event_is_an_error_not_a_crash(line):
    with pytest.raises(KubeError):
        await _events([line + b"\n"])


async def test_relist_on_request_lists_again_at_once_and_watches_from_there():
    """The debug handler's refill after a clear (docs/reference.md#debug-routes): a watch the
    server keeps open is ended, the list is fetched again, and the watch resumes from it."""
    api = FakeApi([page(["a"], version="1"), page(["a", "b"], version="7")], [])
    recorder = Recorder()
    r = Reflector("test", api, on_replace=recorder.on_replace, on_event=recorder.on_event,
                  on_synced=recorder.on_synced, watch_list=False)
    task = asyncio.create_task(r.run())
    try:
        async with asyncio.timeout(5):
            while api.kinds() != ["list", "watch"]:
                await asyncio.sleep(0.01)
            r.relist()
            while api.kinds() != ["list", "watch", "list", "watch"]:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert recorder.replaced == [["a"], ["a", "b"]] and recorder.synced == 1
    assert [params["resource_version"] for kind, params in api.calls if kind == "watch"] == ["1", "7"]


def test_a_reflector_stopped_after_a_list_sync_resumes_its_watch_in_another_event_loop():
    """The supervisor syncs in an event loop of its own, stops the sources, closes the loop and
    forks; then it runs them again in the serving loop (injector/server/processes.py). After a
    LIST sync (a server without WatchList) the watch must go on from the listed version there,
    and keep going."""
    api = FakeApi([page(["a"], version="5")], [])
    recorder = Recorder()
    r = Reflector("test", api, on_replace=recorder.on_replace, on_event=recorder.on_event,
                  on_synced=recorder.on_synced, watch_list=False)

    async def run_until_calls(kinds: list[str]) -> None:
        task = asyncio.create_task(r.run())
        try:
            async with asyncio.timeout(5):
                while api.kinds() != kinds:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert not task.done(), "the reflector stopped by itself"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run_until_calls(["list", "watch"]))  # the sync, and the watch it went on to
    asyncio.run(run_until_calls(["list", "watch", "watch"]))  # another loop: resumed, not listed again
    assert [params["resource_version"] for kind, params in api.calls if kind == "watch"] == ["5", "5"]
    assert recorder.synced == 1
