"""ServiceAccounts from the API server: a cluster-wide sync+watch, and a direct GET on a miss.
The direct GET is paced by a token bucket; nothing here blocks past the lookup grace period.

Only what the rules need is kept per ServiceAccount (the parsed annotation entry), never
the object: each object of a sync is reduced to its entry as it arrives. A ServiceAccount
missing at admission time has almost always just been created (the API server's own
admission rejects pods whose ServiceAccount does not exist), so the store asks `fetch` for
it: one GET per name at a time, rate-limited, bounded by the lookup grace period. At most
`MAX_PENDING_LOOKUPS` names wait for their GET; a miss beyond that is shed, answered as an
unknown ServiceAccount at once, counted and logged in a summary (docs/reference.md#lookups),
so reviews naming made-up ServiceAccounts cannot queue lookups without end.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import structlog
from kubernetes_asyncio import client

from injector.core.identity import near_misses, service_account_entry
from injector.kube.client import KubeError, get_object
from injector.kube.rate_limit import TokenBucket
from injector.sources.reflector import Reflector
from injector.sources.store import IdentityStore

log = structlog.get_logger(__name__)
SOURCE = "serviceaccounts"
FETCH_TIMEOUT = 1.0
MAX_PENDING_LOOKUPS = 100  # ten seconds of lookups at the limiter's pace
SHED_SUMMARY_INTERVAL = 10.0


class ServiceAccountSource:
    """Feeds `store.tables.service_accounts` and answers cache misses."""

    def __init__(self, api: client.ApiClient, store: IdentityStore, *,
                 shed: Callable[[], Any] = lambda: None, clock: Callable[[], float] = time.monotonic) -> None:
        """`shed()` is told of every lookup shed (the server passes its metric's)."""
        self.core = client.CoreV1Api(api)
        self.store = store
        self.shed, self.clock = shed, clock
        self._shed_unlogged, self._shed_logged_at = 0, -SHED_SUMMARY_INTERVAL
        self.limiter = TokenBucket(rate=10.0, burst=20)  # direct lookups: 10/s, burst 20, like the Go webhook
        self._inflight: dict[str, asyncio.Task] = {}
        self.reflector = Reflector(SOURCE, self.core.list_service_account_for_all_namespaces,
                                   on_replace=self._replace, on_event=self._event, transform=self._entry,
                                   on_synced=lambda: store.mark_ready(SOURCE))
        store.expect(SOURCE)
        store.fetch_missing = self.fetch
        store.refill.append(self.reflector.relist)

    def reconnect(self, api: client.ApiClient) -> None:
        """Carry on with another client (the first one closed with its event loop); the watch
        resumes where it stopped."""
        self.core = client.CoreV1Api(api)
        self.reflector.call = self.core.list_service_account_for_all_namespaces
        self._inflight.clear()

    def _entry(self, obj: Any) -> Any:
        """The entry of one ServiceAccount object; None when the object does not carry its namespace
        and name as strings (such an object is skipped: the API server never sends one)."""
        metadata = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(metadata, dict):
            return None
        namespace, name = metadata.get("namespace"), metadata.get("name")
        if not (isinstance(namespace, str) and isinstance(name, str) and namespace and name):
            return None
        annotations = metadata.get("annotations")
        if not annotations or (isinstance(annotations, dict) and not self._ours(annotations)):
            return self._no_annotations  # most ServiceAccounts: parse nothing
        return service_account_entry(annotations, self.store.settings)

    def _ours(self, annotations: dict[str, Any]) -> bool:
        """A key under our prefix, or a near miss of one (another domain, case or spelling), which
        the entry's warnings name (docs/mutation.md#warnings)."""
        prefix = self.store.settings.annotation("")
        return (any(isinstance(key, str) and key.startswith(prefix) for key in annotations)
                or bool(near_misses(annotations, self.store.settings)))

    @functools.cached_property
    def _no_annotations(self) -> Any:
        """The entry of a ServiceAccount with none of our annotations: the flag defaults, built once."""
        return service_account_entry(None, self.store.settings)

    def _replace(self, items: dict[str, Any]) -> None:
        """The sync's items by namespace/name, already reduced to entries by `_entry` as they came."""
        entries = {key: entry for key, entry in items.items() if entry is not None}
        if len(entries) < len(items):
            log.warning("service accounts without a namespace and name skipped", source=SOURCE,
                        count=len(items) - len(entries))
        self.store.replace_service_accounts(entries)

    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        entry = self._entry(obj)
        if entry is None:
            log.warning("watch event without a service account namespace and name; ignored", type=kind)
            return
        metadata = obj["metadata"]
        if kind == "DELETED":
            self.store.remove_service_account(metadata["namespace"], metadata["name"])
        else:
            self.store.put_service_account(metadata["namespace"], metadata["name"], entry)

    async def run(self) -> None:
        await self.reflector.run()

    def fetch(self, namespace: str, name: str) -> asyncio.Future:
        """One GET per missing ServiceAccount at a time; every waiter shares its result."""
        key = f"{namespace}/{name}"
        task = self._inflight.get(key)
        if task is None and len(self._inflight) >= MAX_PENDING_LOOKUPS:
            return self._shed(key)
        if task is None:
            task = asyncio.create_task(self._fetch(namespace, name))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return task

    def _shed(self, key: str) -> asyncio.Future:
        """A lookup not made: its waiters hear "not found" now (a done future)."""
        self.shed()
        self._shed_unlogged += 1
        now = self.clock()
        if now - self._shed_logged_at >= SHED_SUMMARY_INTERVAL:
            log.warning("service account lookups shed: too many pending", count=self._shed_unlogged,
                        pending=len(self._inflight), limit=MAX_PENDING_LOOKUPS, latest=key,
                        note="counts since the previous line")
            self._shed_unlogged, self._shed_logged_at = 0, now
        done = asyncio.get_running_loop().create_future()
        done.set_result(False)
        return done

    async def _fetch(self, namespace: str, name: str) -> bool:
        await self.limiter.acquire()
        try:
            obj = await asyncio.wait_for(
                get_object(self.core.read_namespaced_service_account, name, namespace, timeout=FETCH_TIMEOUT),
                FETCH_TIMEOUT)
        except (TimeoutError, KubeError, OSError) as exc:
            log.warning("service account lookup failed", service_account=f"{namespace}/{name}",
                        error=str(exc) or type(exc).__name__)
            return False
        if obj is None:
            log.info("service account does not exist", service_account=f"{namespace}/{name}")
            return False
        entry = self._entry(obj)
        if entry is None:
            return False
        self.store.put_service_account(namespace, name, entry)
        log.info("service account fetched on cache miss", service_account=f"{namespace}/{name}")
        return True
