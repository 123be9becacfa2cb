"""Stalled clients against a running `serve` over TLS on loopback (docs/reliability.md#slow-clients):
used by tests/test_connections.py, and runnable on its own for bigger figures:

    python tests/slow_clients.py --per-kind 1500 --timeout 5

Four kinds of stalled connection, `per_kind` of each, opened while fresh admissions are sent
on new connections every 100 ms: the TLS handshake never started (TCP only), idle after the
TLS handshake, request headers cut short, body cut short (Content-Length promises more).
Reported: when each stalled connection was closed (seconds after it stalled), the fresh
admissions' latencies and statuses, and the server's open file descriptors over time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import Server, make_certs, pod_review, start_server

KINDS = ("no_handshake", "idle_after_handshake", "partial_headers", "partial_body")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _stall(kind: str, server: Server, context: ssl.SSLContext) -> tuple[float, float] | str:
    """Open one connection, stall it the `kind` way, return the seconds until the server closed
    it: counted from before the connect (the server's timer cannot start earlier, so this is
    the fair lower bound) and from the stall (the fair upper bound: a slow connect under load
    does not count)."""
    opened = time.monotonic()
    try:
        if kind == "no_handshake":
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"\x16\x03\x01")  # the first bytes of a ClientHello, and no more
        else:
            reader, writer = await asyncio.open_connection(server.host, server.port, ssl=context,
                                                           server_hostname=server.host, ssl_handshake_timeout=60)
            if kind == "partial_headers":
                writer.write(b"POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: appl")
            elif kind == "partial_body":
                writer.write(b"POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 4096\r\n\r\n{\"apiVersion\": ")
        await writer.drain()
    except (TimeoutError, OSError) as exc:
        return f"connect failed: {type(exc).__name__}"
    stalled = time.monotonic()
    try:
        while await reader.read(65536):
            pass
    except (OSError, ssl.SSLError):
        pass  # a reset or an abort is a close too
    closed = time.monotonic()
    writer.close()
    return closed - opened, closed - stalled


def _fresh_admissions(server: Server, stop: threading.Event, results: list[tuple[int, float]]) -> None:
    body = json.dumps(pod_review()).encode()
    while not stop.is_set():
        started = time.monotonic()
        try:
            status, _, _ = server.request("POST", "/mutate", body, {"Content-Type": "application/json"})
        except OSError:
            status = 0
        results.append((status, time.monotonic() - started))
        stop.wait(0.1)


def _sample_fds(pid: int, stop: threading.Event, samples: list[tuple[float, int]]) -> None:
    started = time.monotonic()
    while not stop.is_set():
        try:
            samples.append((time.monotonic() - started, open_fds(pid)))
        except OSError:
            return
        stop.wait(0.2)


async def storm(server: Server, per_kind: int, concurrency: int = 200) -> dict[str, Any]:
    """Stall `per_kind` connections of each kind and measure (see the module docstring)."""
    context = ssl.create_default_context(cafile=str(server.ca_file))
    stop = threading.Event()
    fresh: list[tuple[int, float]] = []
    fds: list[tuple[float, int]] = []
    baseline = open_fds(server.proc.pid)
    threads = [threading.Thread(target=_fresh_admissions, args=(server, stop, fresh), daemon=True),
               threading.Thread(target=_sample_fds, args=(server.proc.pid, stop, fds), daemon=True)]
    for thread in threads:
        thread.start()
    gate = asyncio.Semaphore(concurrency)  # stay within the listen backlog

    async def one(kind: str) -> tuple[str, tuple[float, float] | str]:
        async with gate:
            task = asyncio.create_task(_stall(kind, server, context))
            await asyncio.sleep(0.005)
        return kind, await task

    started = time.monotonic()
    outcomes = await asyncio.gather(*(one(kind) for _ in range(per_kind) for kind in KINDS))
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(5)
    after = open_fds(server.proc.pid)

    from_open: dict[str, list[float]] = {kind: [] for kind in KINDS}
    closed: dict[str, list[float]] = {kind: [] for kind in KINDS}
    failures: list[str] = []
    for kind, result in outcomes:
        if isinstance(result, str):
            failures.append(f"{kind}: {result}")
        else:
            from_open[kind].append(result[0])
            closed[kind].append(result[1])
    latencies = sorted(latency for status, latency in fresh)
    return {
        "stalled": len(outcomes), "seconds": round(elapsed, 1), "connect_failures": failures,
        "closed_after_s": {kind: {"n": len(v), "min": round(min(from_open[kind]), 2),
                                  "median": round(statistics.median(v), 2), "max": round(max(v), 2)}
                           for kind, v in closed.items() if v},
        "fresh_admissions": {"n": len(fresh), "statuses": sorted({status for status, _ in fresh}),
                             "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
                             "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1),
                             "max_ms": round(1000 * latencies[-1], 1)},
        "server_fds": {"before": baseline, "peak": max(n for _, n in fds), "after": after},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-kind", type=int, default=1500)
    parser.add_argument("--timeout", default="5s", help="--read-header-timeout and --read-body-timeout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp) / "certs"
        certs.mkdir()
        make_certs(certs)
        server = start_server(Path(tmp), certs, "--read-header-timeout", args.timeout, "--read-body-timeout",
                              args.timeout, "--max-connections", str(4 * args.per_kind + 100))
        try:
            result = asyncio.run(storm(server, args.per_kind))
        finally:
            server.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
