"""Giving freed heap memory back to the system (glibc's malloc_trim).
It must not run on the request path.

glibc keeps the pages of freed allocations for reuse; after a burst of large reviews a serving
process holds several MiB it no longer uses, counted in its PSS and against the pod's memory
limit. Trimming before the fork keeps those pages out of every worker, and trimming now and then
while serving hands back what bursts left (about 7 MiB for two processes after a load of
10-container reviews on this project's benchmark). Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
from typing import Any

TRIM_INTERVAL = 10.0  # seconds; one trim costs well under a millisecond at our heap sizes


def _libc() -> Any:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.malloc_trim  # noqa: B018 - glibc only
        return libc
    return None


_LIBC = _libc()


def trim_heap() -> bool:
    """Return the free pages at the top and inside the heap; False where there is no malloc_trim."""
    if _LIBC is None:
        return False
    _LIBC.malloc_trim(0)
    return True


async def trim_heap_every(seconds: float = TRIM_INTERVAL) -> None:
    """A serving process's job: `trim_heap()` every `seconds`."""
    while trim_heap():
        await asyncio.sleep(seconds)
