"""List-then-watch, the way client-go's reflector does it, for any kind of object.

Paginated list → `on_replace(all items)` → watch from the list's resourceVersion with
bookmarks, resuming from the last version seen when a watch ends. 410 Gone (the version
fell out of the server's history) means relist; any other error means back off and retry.
Every `resync` seconds (0: never) the watch is ended and the whole set relisted, which heals
anything a broken connection could have hidden.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import structlog

from ..kube import KubeError, ListCall, list_page, watch_events

log = structlog.get_logger(__name__)

PAGE_SIZE = 500
WATCH_TIMEOUT = 300.0  # seconds: the longest one watch request lasts before we resume
MAX_BACKOFF = 30.0


class _Gone(Exception):
    """The watch's resourceVersion is too old: relist."""


class Reflector:
    """Keeps a local copy of one list of objects current through the callbacks."""

    def __init__(self, name: str, call: ListCall, *, on_replace: Callable[[list[dict[str, Any]]], None],
                 on_event: Callable[[str, dict[str, Any]], None], resync: float = 0.0,
                 on_synced: Callable[[], None] | None = None, **selectors: Any) -> None:
        self.name = name
        self.call = call
        self.on_replace = on_replace
        self.on_event = on_event
        self.on_synced = on_synced
        self.resync = resync
        self.selectors = selectors
        self.synced = False

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                version = await self._list()
                backoff = 0.5
                await self._watch(version)
            except asyncio.CancelledError:
                raise
            except _Gone:
                log.info("watch expired; relisting", source=self.name)
            except Exception as exc:
                delay = backoff * (1 + random.random() / 2)
                log.warning("list/watch failed; retrying", source=self.name, error=str(exc) or type(exc).__name__,
                            retry_in=round(delay, 2))
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _list(self) -> str:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"limit": PAGE_SIZE, **self.selectors}
            if token:
                params["_continue"] = token
            try:
                page = await list_page(self.call, **params)
            except KubeError as exc:
                if exc.status == 410 and token:  # the continue token expired: start over
                    items, token = [], None
                    continue
                raise
            items.extend(page.get("items") or [])
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                version = metadata.get("resourceVersion", "")
                break
        self.on_replace(items)
        if not self.synced:
            self.synced = True
            log.info("initial list complete", source=self.name, count=len(items))
            if self.on_synced:
                self.on_synced()
        return version

    async def _watch(self, version: str) -> None:
        """Watch from `version` until the resync deadline, resuming from the last version seen
        whenever a watch request ends. The server ends each one when its --min-request-timeout
        says (no timeoutSeconds is sent); our own deadline, WATCH_TIMEOUT or the resync, ends
        one that lasts longer, which also bounds a connection that died without a word."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.resync if self.resync > 0 else None
        while deadline is None or loop.time() < deadline:
            limit = WATCH_TIMEOUT if deadline is None else max(0.0, min(WATCH_TIMEOUT, deadline - loop.time()))
            events = watch_events(self.call, resource_version=version, allow_watch_bookmarks=True, **self.selectors)
            try:
                async with asyncio.timeout(limit):
                    async for event in events:
                        kind, obj = event.get("type"), event.get("object") or {}
                        if kind == "ERROR":
                            if obj.get("code") == 410:
                                raise _Gone()
                            raise KubeError(int(obj.get("code") or 0), str(obj.get("message") or obj))
                        version = (obj.get("metadata") or {}).get("resourceVersion") or version
                        if kind != "BOOKMARK":
                            self.on_event(kind, obj)
            except TimeoutError:
                pass  # our deadline: resume (or relist, past the resync deadline)
            except KubeError as exc:
                if exc.status == 410:
                    raise _Gone() from None
                raise
            finally:
                await events.aclose()
