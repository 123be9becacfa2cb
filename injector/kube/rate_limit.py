"""A token bucket: how the webhook paces its own requests to the API server (direct lookups of
missing ServiceAccounts, ServiceAccount Events). Pure arithmetic on a clock it is given."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


class TokenBucket:
    """`rate` tokens a second, up to `burst` saved; `acquire` waits for one. The clock and the
    sleep are parameters so that tests can run on a fake clock."""

    def __init__(self, rate: float = 10.0, burst: int = 20, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.rate, self.burst, self.clock, self.sleep = rate, burst, clock, sleep
        self.tokens = float(burst)
        self.updated = clock()

    async def acquire(self) -> None:
        while True:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await self.sleep((1 - self.tokens) / self.rate)
