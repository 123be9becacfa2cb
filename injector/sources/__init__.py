"""Identity sources: what feeds the lookup tables, and the store the server reads.

A source writes one member of `IdentityTables` (ServiceAccounts, the ConfigMap mapping or
the Pod Identity list) and says when it has completed its first load; the store answers
lookups from memory so admission never waits on I/O in the common case.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from ..identity import (
    ConfigMapMapping,
    IdentityTables,
    Resolution,
    ServiceAccountEntry,
    resolve,
)
from ..settings import MutationSettings


class IdentityStore:
    """The in-memory tables plus per-source readiness."""

    def __init__(self, settings: MutationSettings, lookup_grace: float = 0.0) -> None:
        self.settings = settings
        self.tables = IdentityTables()
        self._pending: set[str] = set()
        # Set by a live ServiceAccount source: fetch one ServiceAccount missing from the table.
        self.fetch_missing: Callable[[str, str], Awaitable[object]] | None = None
        self.lookup_grace = lookup_grace

    # -- readiness ---------------------------------------------------------------------
    def expect(self, source: str) -> None:
        """Register a source that must finish its first load before we are ready."""
        self._pending.add(source)

    def mark_ready(self, source: str) -> None:
        self._pending.discard(source)

    @property
    def ready(self) -> bool:
        return not self._pending

    @property
    def waiting_for(self) -> tuple[str, ...]:
        return tuple(sorted(self._pending))

    # -- updates -----------------------------------------------------------------------
    def replace_service_accounts(self, entries: dict[str, ServiceAccountEntry]) -> None:
        self.tables.service_accounts = entries

    def put_service_account(self, namespace: str, name: str, entry: ServiceAccountEntry) -> None:
        self.tables.service_accounts[f"{namespace}/{name}"] = entry

    def remove_service_account(self, namespace: str, name: str) -> None:
        self.tables.service_accounts.pop(f"{namespace}/{name}", None)

    def replace_config_map(self, mapping: ConfigMapMapping) -> None:
        self.tables.config_map = mapping

    def replace_pod_identities(self, pairs: frozenset[tuple[str, str]]) -> None:
        self.tables.pod_identities = pairs

    def clear(self) -> None:
        """The debug handler's reset: the sources repopulate on their next event."""
        self.tables = IdentityTables()

    # -- lookups -----------------------------------------------------------------------
    def resolve(self, namespace: str, name: str) -> Resolution:
        return resolve(namespace, name, self.tables, self.settings)

    async def resolve_waiting(self, namespace: str, name: str) -> Resolution:
        """`resolve`, but a ServiceAccount missing from the table is fetched first, waiting at
        most the lookup grace period (design.md decision 4; both modes)."""
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
