"""The identity store: the lookup tables the server reads, and how the sources feed them.
Lookups read memory; only a miss may wait, bounded by the grace period, on a source's lookup.

A source writes one member of `IdentityTables` (ServiceAccounts, the ConfigMap mapping or
the Pod Identity list) and says when it has completed its first load; the store answers
lookups from memory so admission never waits on I/O in the common case.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from injector.core.identity import (
    ConfigMapMapping,
    IdentityTables,
    Resolution,
    RoleMapping,
    resolve,
)
from injector.core.settings import MutationSettings

log = structlog.get_logger(__name__)

# One change to the tables: ("put", "ns/name", RoleMapping), ("remove", "ns/name"),
# ("config_map", ConfigMapMapping), ("pod_identities", frozenset of (ns, name)), ("clear",).
Update = tuple[Any, ...]


class IdentityStore:
    """The in-memory tables plus per-source readiness.

    Every update passes through here, so problems in what arrives (annotation values, ConfigMap
    keys) are logged in one place whether a file, the initial list, a relist, a watch event or
    a direct lookup brought them; `log_problems=False` keeps the offline command's output clean.
    """

    def __init__(self, settings: MutationSettings, lookup_grace: float = 0.0, *, log_problems: bool = True) -> None:
        self.settings = settings
        self.log_problems = log_problems
        self.tables = IdentityTables()
        self._pending: set[str] = set()
        # Set by a live ServiceAccount source: fetch one ServiceAccount missing from the table.
        self.fetch_missing: Callable[[str, str], Awaitable[object]] | None = None
        # Set by the watched sources: list again now (after `clear`).
        self.refill: list[Callable[[], None]] = []
        self.lookup_grace = lookup_grace
        # One object per distinct entry: most ServiceAccounts carry none of our annotations and
        # share the entry of flag defaults; a value with problems keeps its own (for the logs).
        self._shared: dict[RoleMapping, RoleMapping] = {}
        # Called with (namespace/name, entry) when an update brings problems, warnings or our
        # annotations without role-arn, not reported before (Events on the ServiceAccount).
        self.problem_listeners: list[Callable[[str, RoleMapping], None]] = []
        # Called with each change to the tables, as an `Update`, after it is made (the supervisor
        # streams them to its serving workers: injector/server/table_feed.py). A relist reports only
        # what differs from the table it replaces.
        self.update_listeners: list[Callable[[Update], None]] = []

    # -- readiness ---------------------------------------------------------------------
    def expect(self, source: str) -> None:
        """Register a source that must finish its first load before we are ready."""
        self._pending.add(source)

    def mark_ready(self, source: str) -> None:
        self._pending.discard(source)

    @property
    def waiting_for(self) -> tuple[str, ...]:
        return tuple(sorted(self._pending))

    # -- updates -----------------------------------------------------------------------
    def replace_service_accounts(self, entries: dict[str, RoleMapping]) -> None:
        previous = self.tables.service_accounts
        self._shared = {}
        # Most ServiceAccounts of a sync bring one entry object with nothing to report (the flag
        # defaults): after the first, each is its shared object again, without a hash.
        quiet = quiet_shared = None
        for key, entry in entries.items():
            if entry is quiet:
                entries[key] = quiet_shared
                continue
            self._report(key, entry, previous.get(key))
            entries[key] = shared = self._share(entry)
            if not _newsworthy(entry):
                quiet, quiet_shared = entry, shared
        self.tables.service_accounts = entries
        if self.update_listeners:
            for key, entry in entries.items():
                if not _unchanged(previous.get(key), entry):
                    self._notify(("put", key, entry))
            for key in previous.keys() - entries.keys():
                self._notify(("remove", key))

    def put_service_account(self, namespace: str, name: str, entry: RoleMapping) -> None:
        key = f"{namespace}/{name}"
        self._report(key, entry, self.tables.service_accounts.get(key))
        self.tables.service_accounts[key] = entry = self._share(entry)
        self._notify(("put", key, entry))

    def _share(self, entry: RoleMapping) -> RoleMapping:
        if entry.problems or len(self._shared) >= 65536:  # bounded: distinct roles, not ServiceAccounts
            return entry
        return self._shared.setdefault(entry, entry)

    def remove_service_account(self, namespace: str, name: str) -> None:
        key = f"{namespace}/{name}"
        if self.tables.service_accounts.pop(key, None) is not None:
            self._notify(("remove", key))

    def replace_config_map(self, mapping: ConfigMapMapping) -> None:
        previous = self.tables.config_map
        if self.log_problems and (mapping != previous or mapping.rejected != previous.rejected):
            for problem in mapping.rejected:
                log.error("config map entry rejected", problem=problem)
        self.tables.config_map = mapping
        self._notify(("config_map", mapping))

    def replace_pod_identities(self, pairs: frozenset[tuple[str, str]]) -> None:
        self.tables.pod_identities = pairs
        self._notify(("pod_identities", pairs))

    def _report(self, key: str, entry: RoleMapping, previous: RoleMapping | None) -> None:
        """Say each problem once: a relist or an unchanged update repeats nothing."""
        if not self.log_problems or _unchanged(previous, entry):
            return
        for problem in entry.problems:
            log.warning("service account annotation problem", service_account=key, problem=problem)
        if _newsworthy(entry):
            for listener in self.problem_listeners:
                listener(key, entry)

    def clear(self) -> None:
        """The debug handler's reset, as the Go webhook's: the ServiceAccount and ConfigMap
        tables are emptied and their sources list again (`refill`); the Pod Identity list, which
        nothing would refill before its file changes, is kept."""
        self.tables = IdentityTables(pod_identities=self.tables.pod_identities)
        self._notify(("clear",))
        for refill in self.refill:
            refill()

    def _notify(self, update: Update) -> None:
        for listener in self.update_listeners:
            listener(update)

    def apply(self, update: Update) -> None:
        """Make a change another process's store reported (a worker's copy of the supervisor's
        tables): no logging, no problem listeners, no update listeners; that process did those."""
        kind = update[0]
        if kind == "put":
            self.tables.service_accounts[update[1]] = self._share(update[2])
        elif kind == "remove":
            self.tables.service_accounts.pop(update[1], None)
        elif kind == "config_map":
            self.tables.config_map = update[1]
        elif kind == "pod_identities":
            self.tables.pod_identities = update[1]
        elif kind == "clear":
            self.tables = IdentityTables(pod_identities=self.tables.pod_identities)
        else:
            raise ValueError(f"unknown table update {kind!r}")

    # -- lookups -----------------------------------------------------------------------
    def resolve(self, namespace: str, name: str) -> Resolution:
        return resolve(namespace, name, self.tables, self.settings)

    async def resolve_waiting(self, namespace: str, name: str) -> Resolution:
        """`resolve`, but a ServiceAccount missing from the table is fetched first, waiting at
        most the lookup grace period (docs/reference.md#lookup-grace)."""
        resolution = self.resolve(namespace, name)
        if resolution.service_account_known or self.fetch_missing is None or self.lookup_grace <= 0 or not name:
            return resolution
        with contextlib.suppress(asyncio.TimeoutError):
            # shield: a waiter that gives up does not cancel the fetch others may share.
            await asyncio.wait_for(asyncio.shield(self.fetch_missing(namespace, name)), self.lookup_grace)
        return self.resolve(namespace, name)

    def dump(self) -> dict[str, dict]:
        """The ServiceAccount table in the Go webhook's debug format (sorted keys)."""
        return {key: entry.as_json() for key, entry in sorted(self.tables.service_accounts.items())}


def _newsworthy(entry: RoleMapping) -> bool:
    """Something to tell the admin: problems, warnings, or our annotations without role-arn."""
    return bool(entry.problems or entry.warnings or (entry.annotated and not entry.role_arn))


def _unchanged(previous: RoleMapping | None, entry: RoleMapping) -> bool:
    """The same entry, problems included (they take no part in equality)."""
    return previous is not None and previous == entry and previous.problems == entry.problems
