"""Whether the caBundle that trusts the served certificate is registered: a file the
self-managed controller writes and every serving process's /readyz reads. It needs no API
client, so a server without a cluster does not import one."""

from __future__ import annotations

from pathlib import Path

READY_MARKER = "ca-bundle-in-place"


def set_bundle_in_place(directory: Path, in_place: bool) -> None:
    marker = directory / READY_MARKER
    if in_place:
        marker.touch()
    else:
        marker.unlink(missing_ok=True)


def bundle_in_place(directory: Path) -> bool:
    """Readiness for any serving process: the reconciler has the caBundle registered."""
    return (directory / READY_MARKER).exists()
