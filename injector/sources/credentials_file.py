"""The EKS Pod Identity identities file (`--watch-container-credentials-config`), kept loaded.
A bad file is logged and the last good set kept; a bad entry is left out, logged once and
counted, and the rest are used. The file is never written.

The file is polled by `stat` (which follows symlinks), so plain rewrites and Kubernetes
ConfigMap/Secret volume updates (an atomic swap of the `..data` symlink) are both seen.
Missing or empty file: no associations. Invalid JSON: the previous set stays, and the
reason is logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import structlog

from injector.core.identity import SkippedIdentity
from injector.sources.file_signature import FileSignature, file_signature
from injector.sources.manifests import InputError, parse_identities_file
from injector.sources.store import IdentityStore

log = structlog.get_logger(__name__)
SOURCE = "container-credentials-file"


def _signature(path: str) -> FileSignature | None:
    try:
        return file_signature(path)
    except OSError:
        return None


class CredentialsFileSource:
    """Loads the identities file into the store now, and again whenever it changes."""

    def __init__(self, path: str, store: IdentityStore, skipped: Callable[[], None] | None = None) -> None:
        self.path = path
        self.store = store
        self._count_skipped = skipped or (lambda: None)
        self._signature: FileSignature | None = None
        self._loaded_once = False
        self._reported: frozenset[tuple[str, str]] = frozenset()  # bad entries already logged

    def load(self) -> bool:
        """(Re)load the file; returns False when it was invalid and the old set was kept."""
        self._signature = _signature(self.path)
        try:
            text = Path(self.path).read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            log.error("pod identity file unreadable; keeping previous identities", path=self.path, error=str(exc))
            return False
        try:
            identities = parse_identities_file(text, self.path)
        except InputError as exc:
            log.error("pod identity file invalid; keeping previous identities", path=self.path, error=exc.problem)
            return False
        self._report(identities.skipped)
        pairs = identities.pairs
        changed = pairs != self.store.tables.pod_identities
        self.store.replace_pod_identities(pairs)
        if changed or not self._loaded_once:
            log.info("pod identity associations loaded", path=self.path, count=len(pairs),
                     skipped=len(identities.skipped))
        self._loaded_once = True
        return True

    def _report(self, skipped: tuple[SkippedIdentity, ...]) -> None:
        """One warning and one count per bad entry, when it first appears: a rewrite that keeps
        it (at any position) says nothing again."""
        current = frozenset((bad.entry, bad.problem) for bad in skipped)
        for bad in skipped:
            if (bad.entry, bad.problem) not in self._reported:
                log.warning("pod identity entry skipped", path=self.path, index=bad.index, entry=bad.entry,
                            problem=bad.problem)
                self._count_skipped()
        self._reported = current

    def reload_if_changed(self) -> bool:
        if _signature(self.path) == self._signature:
            return False
        self.load()
        return True

    async def watch(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()
