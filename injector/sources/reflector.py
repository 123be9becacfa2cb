"""Sync once, then only watch: client-go's reflector, for any kind of object.
It knows no kind of object and no identity rule: the source that runs it does.

The initial sync is a watch with `sendInitialEvents=true` (the API server's WatchList: the
current objects as ADDED events, then a bookmark annotated `k8s.io/initial-events-end`), which
the server answers from its watch cache without a LIST; a server that refuses it (WatchList
off, or older than 1.27) gets a LIST instead, and is not asked again. The LIST asks for
resourceVersion "0", as client-go's first one does: the server answers from its watch cache, in
one response, without reading etcd (a consistent LIST, with no version, is read from etcd in
pages: at 100k ServiceAccounts 200 of them, 7-10 s instead of about 1.5 s). Either way
`on_replace(all items, by namespace/name)` then takes the whole set, and the watch carries on
from the sync's resourceVersion with bookmarks, resumed from the last version seen whenever a
watch request ends. The set is fetched again only when it must be: on 410 Gone (the version
fell out of the server's history) or when a resume fails (any other error, after a back-off).

There is no periodic relist. A watch with bookmarks loses nothing that a relist would heal,
and at 100k ServiceAccounts a relist is hundreds of pages per replica. (`--resync-period` in
the Go webhook is client-go's informer resync, which re-delivers the informer's own cache to
its handlers and sends no request; this table is that cache, so there is nothing to
re-deliver.)
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import structlog

from injector.kube.client import KubeError, ListCall, list_page, watch_events

log = structlog.get_logger(__name__)

PAGE_SIZE = 500
WATCH_TIMEOUT = 300.0  # seconds: the longest one watch request lasts before we resume
MAX_BACKOFF = 30.0
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
# What a server that does not serve sendInitialEvents answers: 422 Invalid (WatchList gate off),
# 400 (a parameter it does not accept), 403 from something in front of it that filters them.
_REFUSED = frozenset({400, 403, 422})


class _Gone(Exception):
    """The watch's resourceVersion is too old: sync again."""


class _RelistRequested(Exception):
    pass


class _NoInitialEvents(Exception):
    """The watch-list stream ended or failed before its initial-events-end bookmark."""

    def __init__(self, reason: str, refused: bool = False) -> None:
        super().__init__(reason)
        self.refused = refused


def unchanged(obj: dict[str, Any]) -> dict[str, Any]:
    return obj


def _metadata(obj: Any) -> dict[str, Any]:
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def object_key(obj: Any) -> str:
    return _key(_metadata(obj))


def _key(metadata: dict[str, Any]) -> str:
    """`namespace/name`, the key of `on_replace`'s items."""
    return f"{metadata.get('namespace') or ''}/{metadata.get('name') or ''}"


class Reflector:
    """Keeps a local copy of one list of objects current through the callbacks.

    `transform` turns each object of a sync into what `on_replace` receives, as it arrives, so a
    sync of 100k objects never holds 100k whole objects (events still get the object);
    `on_replace` gets them by `namespace/name`.
    `watch_list=False` goes straight to the LIST.
    """

    def __init__(self, name: str, call: ListCall, *, on_replace: Callable[[dict[str, Any]], None],
                 on_event: Callable[[str, dict[str, Any]], None], on_synced: Callable[[], None] | None = None,
                 transform: Callable[[dict[str, Any]], Any] = unchanged, watch_list: bool = True,
                 **selectors: Any) -> None:
        self.name = name
        self.call = call
        self.on_replace = on_replace
        self.on_event = on_event
        self.on_synced = on_synced
        self.transform = transform
        self.watch_list = watch_list
        self.selectors = selectors
        self.synced = False
        # The last resourceVersion seen; a `run` cancelled after the sync and started again (the
        # supervisor's, across its fork: injector/server/processes.py) resumes the watch from it.
        self.version = ""
        self._relist = asyncio.Event()

    def relist(self) -> None:
        """List again now, then watch from there (the debug handler's refill after a clear)."""
        self._relist.set()

    async def run(self) -> None:
        # An asyncio.Event belongs to the loop that first waits on it; the supervisor runs this
        # in one loop for its sync and in another after its fork, so each run has its own (a
        # relist asked for meanwhile carries over).
        asked, self._relist = self._relist.is_set(), asyncio.Event()
        if asked:
            self._relist.set()
        backoff = 0.5
        version = self.version if self.synced else ""
        while True:
            try:
                if not version:
                    version = await self._sync()
                backoff = 0.5
                while True:  # resume for as long as the server lets us
                    version = await self._watch_unless_relisting(version)
            except asyncio.CancelledError:
                raise
            except _Gone:
                version = ""
                log.info("watch expired; relisting", source=self.name)
            except _RelistRequested:
                version = ""
                log.info("relisting on request", source=self.name)
            except Exception as exc:
                version = ""
                delay = backoff * (1 + random.random() / 2)
                log.warning("list/watch failed; retrying", source=self.name, error=str(exc) or type(exc).__name__,
                            retry_in=round(delay, 2))
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _watch_unless_relisting(self, version: str) -> str:
        """`_watch`, ended early by `relist`."""
        if not self._relist.is_set():
            watch = asyncio.ensure_future(self._watch(version))
            asked = asyncio.ensure_future(self._relist.wait())
            try:
                await asyncio.wait((watch, asked), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (watch, asked):
                    task.cancel()
                await asyncio.gather(watch, asked, return_exceptions=True)
            if not self._relist.is_set():
                return watch.result()
        self._relist.clear()
        raise _RelistRequested

    # -- the sync --------------------------------------------------------------------------
    async def _sync(self) -> str:
        """The whole set once, by watch-list where the server serves it, else by LIST; returns
        the resourceVersion to watch from. A watch-list that fails for another reason falls back
        to a LIST at once, as client-go does: progress beats waiting on a feature."""
        if self.watch_list:
            try:
                return await self._watch_list()
            except _NoInitialEvents as exc:
                if exc.refused:
                    self.watch_list = False
                    log.info("the API server does not serve watch-list; listing instead", source=self.name,
                             reason=str(exc))
                else:
                    log.warning("watch-list failed; listing instead", source=self.name, reason=str(exc))
        return await self._list()

    def _replaced(self, items: dict[str, Any], how: str) -> None:
        self.on_replace(items)
        if not self.synced:
            self.synced = True
            log.info("initial sync complete", source=self.name, count=len(items), by=how)
            if self.on_synced:
                self.on_synced()

    async def _watch_list(self) -> str:
        """`watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan` with no
        resourceVersion (a consistent read): ADDED events until the initial-events-end bookmark,
        then `on_replace`, then this same stream goes on as the watch until it ends."""
        pending: dict[str, Any] | None = {}
        version = ""
        events = watch_events(self.call, allow_watch_bookmarks=True, send_initial_events=True,
                              resource_version_match="NotOlderThan", **self.selectors)
        try:
            async with asyncio.timeout(WATCH_TIMEOUT):
                async for event in events:
                    kind, obj = event.get("type"), event.get("object") or {}
                    if pending is None:  # past the initial events: the watch itself
                        version = self._follow(kind, obj, version)
                        continue
                    if kind == "ERROR":
                        code = int(obj.get("code") or 0)
                        raise _NoInitialEvents(f"{code}: {obj.get('message') or obj}", refused=code in _REFUSED)
                    metadata = _metadata(obj)
                    version = metadata.get("resourceVersion") or version
                    if kind == "BOOKMARK":
                        if (metadata.get("annotations") or {}).get(INITIAL_EVENTS_END) == "true":
                            self.version = version
                            self._replaced(pending, "watch-list")
                            pending = None
                    elif kind == "DELETED":
                        pending.pop(_key(metadata), None)
                    else:
                        pending[_key(metadata)] = self.transform(obj)
        except TimeoutError:
            pass  # our deadline: resume from `version`
        except KubeError as exc:
            if pending is None:
                if exc.status == 410:
                    raise _Gone() from None
                raise
            raise _NoInitialEvents(str(exc), refused=exc.status in _REFUSED) from None
        finally:
            await events.aclose()
        if pending is not None:
            raise _NoInitialEvents("the stream ended before the initial-events-end bookmark")
        return version

    async def _list(self) -> str:
        """Pages of PAGE_SIZE from resourceVersion "0": the API server answers from its watch cache
        in one response whatever the limit (no etcd read), or, with its watch cache off, in pages
        from etcd."""
        items: dict[str, Any] = {}
        token: str | None = None
        while True:
            params: dict[str, Any] = {"limit": PAGE_SIZE, **self.selectors}
            if token:
                params["_continue"] = token
            else:
                params["resource_version"] = "0"
            try:
                page = await list_page(self.call, **params)
            except KubeError as exc:
                if exc.status == 410 and token:  # the continue token expired: start over
                    items, token = {}, None
                    continue
                raise
            for obj in page.get("items") or []:
                items[object_key(obj)] = self.transform(obj)
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                version = metadata.get("resourceVersion", "")
                break
        self.version = version
        self._replaced(items, "list")
        return version

    # -- the watch -------------------------------------------------------------------------
    def _follow(self, kind: Any, obj: dict[str, Any], version: str) -> str:
        """One event of a running watch (a plain one, or a watch-list past its initial events):
        an ERROR raises (410: sync again); any other moves the version on, and all but bookmarks
        go to `on_event`. Returns the version to resume from."""
        if kind == "ERROR":
            code = int(obj.get("code") or 0)
            raise _Gone() if code == 410 else KubeError(code, str(obj.get("message") or obj))
        version = self.version = _metadata(obj).get("resourceVersion") or version
        if kind != "BOOKMARK":
            self.on_event(kind, obj)
        return version

    async def _watch(self, version: str) -> str:
        """One watch request from `version`; returns the last version seen when it ends, to
        resume from. The server ends it when its --min-request-timeout says (no timeoutSeconds is
        sent); WATCH_TIMEOUT ends one that lasts longer, which also bounds a connection that died
        without a word."""
        events = watch_events(self.call, resource_version=version, allow_watch_bookmarks=True, **self.selectors)
        try:
            async with asyncio.timeout(WATCH_TIMEOUT):
                async for event in events:
                    version = self._follow(event.get("type"), event.get("object") or {}, version)
        except TimeoutError:
            pass  # our deadline: resume
        except KubeError as exc:
            if exc.status == 410:
                raise _Gone() from None
            raise
        finally:
            await events.aclose()
        return version
