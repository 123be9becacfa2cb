"""Identity sources: what feeds the lookup tables, and the store the server reads.

A source writes one member of `IdentityTables` (ServiceAccounts, the ConfigMap mapping or
the Pod Identity list) and says when it has completed its first load; the store answers
lookups from memory so admission never waits on I/O in the common case.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from ..identity import (
    ConfigMapMapping,
    IdentityTables,
    Resolution,
    RoleMapping,
    resolve,
)
from ..settings import MutationSettings

log = structlog.get_logger(__name__)


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
        self.lookup_grace = lookup_grace
        # One object per distinct entry: most ServiceAccounts carry none of our annotations and
        # share the entry of flag defaults; a value with problems keeps its own (for the logs).
        self._shared: dict[RoleMapping, RoleMapping] = {}
        # Called with (namespace/name, entry) when an update brings problems or warnings not
        # reported before for that ServiceAccount (Kubernetes Events on the ServiceAccount).
        self.problem_listeners: list[Callable[[str, RoleMapping], None]] = []

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
        for key, entry in entries.items():
            self._report(key, entry, previous.get(key))
            entries[key] = self._share(entry)
        self.tables.service_accounts = entries

    def put_service_account(self, namespace: str, name: str, entry: RoleMapping) -> None:
        key = f"{namespace}/{name}"
        self._report(key, entry, self.tables.service_accounts.get(key))
        self.tables.service_accounts[key] = self._share(entry)

    def _share(self, entry: RoleMapping) -> RoleMapping:
        if entry.problems or len(self._shared) >= 65536:  # bounded: distinct roles, not ServiceAccounts
            return entry
        return self._shared.setdefault(entry, entry)

    def remove_service_account(self, namespace: str, name: str) -> None:
        self.tables.service_accounts.pop(f"{namespace}/{name}", None)

    def replace_config_map(self, mapping: ConfigMapMapping) -> None:
        previous = self.tables.config_map
        if self.log_problems and (mapping != previous or mapping.rejected != previous.rejected):
            for problem in mapping.rejected:
                log.error("config map entry rejected", problem=problem)
        self.tables.config_map = mapping

    def replace_pod_identities(self, pairs: frozenset[tuple[str, str]]) -> None:
        self.tables.pod_identities = pairs

    def _report(self, key: str, entry: RoleMapping, previous: RoleMapping | None) -> None:
        """Say each problem once: a relist or an unchanged update repeats nothing."""
        if not self.log_problems or (previous == entry and previous.problems == entry.problems):
            return
        for problem in entry.problems:
            log.warning("service account annotation problem", service_account=key, problem=problem)
        if entry.problems or entry.warnings:
            for listener in self.problem_listeners:
                listener(key, entry)

    def clear(self) -> None:
        """The debug handler's reset: the sources repopulate on their next event."""
        self.tables = IdentityTables()

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
