"""How many bytes of large request bodies a process reads at once, overall and per client
address (docs/reference.md#request-memory). It decides nothing else; routes ask before reading.

A client can send a body slowly, or stop before its end, and the bytes received so far stay
in memory until the request ends. Small bodies (up to `SMALL_BODY`, the API server's reviews
are a few KiB) are not counted: what they can hold is bounded by the connection cap times
the read buffer. A larger body reserves its declared length (or the size cap, when it is
chunked) before a byte of it is read; when the reservation does not fit, the request gets
HTTP 503 at once, so the bodies in flight never exceed the budget whatever clients do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

SMALL_BODY = 64 * 1024


class OverBudget(Exception):
    """The reservation does not fit; `scope` says which limit: "total" or "peer"."""

    def __init__(self, scope: str) -> None:
        super().__init__(scope)
        self.scope = scope


class BodyBudget:
    """Reservations of body bytes in flight, in total and per peer (its address)."""

    def __init__(self, total: int, per_peer: int) -> None:
        self.total, self.per_peer = total, per_peer
        self.used = 0
        self.by_peer: Counter[str] = Counter()

    @contextmanager
    def reserved(self, peer: str, size: int) -> Iterator[None]:
        """Hold `size` bytes for `peer` while the body is read and decoded; `OverBudget` when
        they do not fit. A small body reserves nothing."""
        if size <= SMALL_BODY:
            yield
            return
        if self.by_peer[peer] + size > self.per_peer:
            raise OverBudget("peer")
        if self.used + size > self.total:
            raise OverBudget("total")
        self.used += size
        self.by_peer[peer] += size
        try:
            yield
        finally:
            self.used -= size
            self.by_peer[peer] -= size
            if not self.by_peer[peer]:
                del self.by_peer[peer]
