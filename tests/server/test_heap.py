"""injector/server/heap.py: freed heap pages go back to the system while serving."""

from __future__ import annotations

import asyncio

from injector.server import heap as memory


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_trimming_hands_back_what_a_burst_of_allocations_left():
    # Many small blocks freed out of order stay in glibc's free lists; malloc_trim releases
    # the whole pages among them (the part of the heap plain free() never returns).
    blocks = [bytearray(3000) for _ in range(20000)]  # ~60 MiB in blocks under the mmap threshold
    del blocks[::2]
    keep = blocks[::50]
    del blocks
    before = rss_kib()
    assert memory.trim_heap() is True
    assert rss_kib() < before - 10 * 1024
    del keep


def test_the_job_trims_at_each_interval_until_cancelled(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "trim_heap", lambda: calls.append(1) or True)

    async def run_briefly() -> None:
        job = asyncio.create_task(memory.trim_heap_every(0.01))
        await asyncio.sleep(0.1)
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)

    asyncio.run(run_briefly())
    assert 3 <= len(calls) <= 15


def test_without_malloc_trim_the_job_ends_at_once(monkeypatch):
    monkeypatch.setattr(memory, "_LIBC", None)
    assert memory.trim_heap() is False
    asyncio.run(asyncio.wait_for(memory.trim_heap_every(0.01), 1))
