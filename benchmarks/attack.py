"""Hostile neighbours against `serve` with the chart's settings, on loopback (prints numbers).

`make attack`, or `python benchmarks/attack.py [--attacks slow-bodies,stalled,...] [--hold 15]`.
A real kube-apiserver (tools/kube-test-plane, as the e2e tier builds it) holds the
ServiceAccount of a well-behaved client; `serve` runs as the chart runs it (two processes,
JSON logs, --shutdown-delay 5s, a probe port) from certificate files. Each attack is bounded
in count and time and sends only to 127.0.0.0/8. For each it prints, over the attack and 3 s
after it:

- peak memory: the PSS of serve's processes together, against the chart's 512 MiB limit;
- the well-behaved client: one keep-alive TLS connection sending a review every 20 ms, as
  the API server does; answered / sent, errors and p99;
- probes: /healthz and /readyz on the probe port every second on a new connection, with the
  kubelet's default 1 s timeout;
- the log: lines, warnings, lines that are not JSON and tracebacks.

The attacks (docs/reliability.md#hostile-neighbours):
- slow-bodies: 8 client addresses x 15 connections each declare a 3,000,000-byte body, send
  2.9 MB of it and hold the rest back;
- stalled: 1,000 connections that never start TLS and 1,000 idle after it (twice the cap);
- resets: 500 connections that send headers and part of a body, then reset;
- missing-serviceaccounts: 5,000 reviews naming ServiceAccounts that do not exist, on 20
  keep-alive connections, each a direct lookup unless shed;
- floods: 20,000 new TLS connections, 40 at a time, each sending one review and closing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from bench import SERVICE_ACCOUNT, free_port, review, serve_executable, tree

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tests.e2e.plane import binary_for_tests, start_control_plane  # noqa: E402

CHART_MEMORY_LIMIT_MIB = 512
ATTACKS = ("slow-bodies", "stalled", "resets", "missing-serviceaccounts", "floods")


def pss_mib(pid: int) -> float:
    total = 0
    for member in tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total / 1024


@dataclass
class Window:
    """What the observers saw during one attack (and the quiet seconds after it)."""

    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    probes_ok: int = 0
    probes: int = 0
    peak_mib: float = 0.0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Observers:
    """The well-behaved client, the kubelet's probes and the memory sampler, run throughout."""

    def __init__(self, port: int, health_port: int, ctx: ssl.SSLContext, pid: int) -> None:
        self.port, self.health_port, self.ctx, self.pid = port, health_port, ctx, pid
        self.window = Window()
        self.body = orjson.dumps(review(1))

    async def admissions(self) -> None:
        request = (b"POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(self.body)) + self.body
        reader = writer = None
        while True:
            self.window.sent += 1
            started = time.monotonic()
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(
                        "127.0.0.1", self.port, ssl=self.ctx, server_hostname="127.0.0.1"), 10)
                writer.write(request)
                async with asyncio.timeout(10):  # the API server's default webhook timeout
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                      if line.lower().startswith(b"content-length:")))
                    await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    self.window.error(head[9:12].decode())
                else:
                    self.window.latencies.append(time.monotonic() - started)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
                self.window.error(type(exc).__name__)
                if writer is not None:
                    writer.transport.abort()
                reader = writer = None
            await asyncio.sleep(0.02)

    async def probes(self) -> None:
        while True:
            for path in (b"/healthz", b"/readyz"):
                self.window.probes += 1
                try:
                    async with asyncio.timeout(1):  # the kubelet's default timeoutSeconds
                        reader, writer = await asyncio.open_connection("127.0.0.1", self.health_port)
                        writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                        if (await reader.read(12)).startswith(b"HTTP/1.1 200"):
                            self.window.probes_ok += 1
                        writer.close()
                except (OSError, TimeoutError):
                    pass
            await asyncio.sleep(1)

    async def memory(self) -> None:
        while True:
            self.window.peak_mib = max(self.window.peak_mib, await asyncio.to_thread(pss_mib, self.pid))
            await asyncio.sleep(0.2)


# -- the attacks -----------------------------------------------------------------------------
def _abort_with_reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def slow_bodies(port: int, ctx: ssl.SSLContext, hold: float) -> None:
    head = (b"POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
            b"Content-Length: 3000000\r\n\r\n")
    chunk = b" " * 100_000
    writers = []

    async def one(source: str) -> None:
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            _, writer = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1", local_addr=(source, 0)), 10)
            writers.append(writer)
            writer.write(head)
            for _ in range(29):
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 10)

    await asyncio.gather(*(one(f"127.0.0.{2 + i // 15}") for i in range(120)))
    await asyncio.sleep(hold)
    for writer in writers:
        writer.transport.abort()


async def stalled(port: int, ctx: ssl.SSLContext, hold: float) -> None:
    writers = []

    async def one(tls: bool) -> None:
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            _, writer = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port, **({"ssl": ctx, "server_hostname": "127.0.0.1"} if tls else {})), 10)
            writers.append(writer)

    await asyncio.gather(*(one(i % 2 == 1) for i in range(2000)))
    await asyncio.sleep(hold)
    for writer in writers:
        writer.transport.abort()


async def resets(port: int, ctx: ssl.SSLContext, hold: float) -> None:
    async def one() -> None:
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            _, writer = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"), 10)
            writer.write(b"POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 5000\r\n\r\n{\"apiVersion\": ")
            await writer.drain()
            await asyncio.sleep(0.2)
            _abort_with_reset(writer)

    sem = asyncio.Semaphore(50)

    async def bounded() -> None:
        async with sem:
            await one()

    await asyncio.wait_for(asyncio.gather(*(bounded() for _ in range(500))), hold + 30)


async def _send_all(port: int, ctx: ssl.SSLContext, bodies: list[bytes], connections: int, deadline: float,
                    keep_alive: bool) -> None:
    queue = list(reversed(bodies))

    async def worker() -> None:
        reader = writer = None
        while queue and time.monotonic() < deadline:
            body = queue.pop()
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(
                        "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"), 10)
                writer.write(b"POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
                async with asyncio.timeout(10):
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                      if line.lower().startswith(b"content-length:")))
                    await reader.readexactly(length)
                if not keep_alive:
                    writer.close()
                    reader = writer = None
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError, StopIteration):
                if writer is not None:
                    writer.transport.abort()
                reader = writer = None

    await asyncio.gather(*(worker() for _ in range(connections)))


async def missing_serviceaccounts(port: int, ctx: ssl.SSLContext, hold: float) -> None:
    template = review(1)
    bodies = []
    for i in range(5000):
        template["request"]["object"]["spec"]["serviceAccountName"] = f"made-up-{i}"
        bodies.append(orjson.dumps(template))
    await _send_all(port, ctx, bodies, 20, time.monotonic() + hold + 10, keep_alive=True)


async def floods(port: int, ctx: ssl.SSLContext, hold: float) -> None:
    body = orjson.dumps(review(1))
    await _send_all(port, ctx, [body] * 20_000, 40, time.monotonic() + hold + 10, keep_alive=False)


RUNNERS = {"slow-bodies": slow_bodies, "stalled": stalled, "resets": resets,
           "missing-serviceaccounts": missing_serviceaccounts, "floods": floods}


# -- the run ---------------------------------------------------------------------------------
def log_summary(log: Path, offset: int) -> tuple[int, dict[str, int]]:
    data = log.read_bytes()[offset:]
    counts = {"lines": 0, "warnings": 0, "not_json": 0, "tracebacks": data.count(b"Traceback")}
    events: dict[str, int] = {}
    for line in data.splitlines():
        counts["lines"] += 1
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            counts["not_json"] += 1
            continue
        if record.get("level") in ("warning", "error"):
            counts["warnings"] += 1
            events[record.get("event", "?")] = events.get(record.get("event", "?"), 0) + 1
    return len(log.read_bytes()), {**counts, "events": events}


def p99_ms(latencies: list[float]) -> float:
    if not latencies:
        return float("nan")
    return statistics.quantiles(latencies, n=100)[98] * 1000 if len(latencies) >= 100 else max(latencies) * 1000


async def run(args: argparse.Namespace, work: Path) -> None:
    plane = start_control_plane(binary_for_tests(), work / "plane")
    try:
        create_service_account(plane)
        port, health_port = free_port(), free_port()
        exe = serve_executable()
        subprocess.run([exe, "certs", "--out-dir", str(work / "certs"), "--ip", "127.0.0.1"], check=True,
                       stdout=subprocess.DEVNULL)
        log = work / "serve.log"
        command = [exe, "serve", "--port", str(port), "--metrics-port", str(free_port()), "--health-port",
                   str(health_port), "--bind-address", "127.0.0.1", "--tls-cert", str(work / "certs/tls.crt"),
                   "--tls-key", str(work / "certs/tls.key"), "--kubeconfig", str(plane.kubeconfig),
                   "--workers", "2", "--log-format", "json", "--shutdown-delay", "5s"]
        with open(log, "wb") as out:
            server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=out)
        try:
            ctx = ssl.create_default_context(cafile=str(work / "certs/ca.crt"))
            await wait_ready(health_port, server)
            observers = Observers(port, health_port, ctx, server.pid)
            background = [asyncio.create_task(job()) for job in (observers.admissions, observers.probes,
                                                                  observers.memory)]
            print(f"serve with the chart's settings (2 processes), a real kube-apiserver; hold {args.hold:g} s; "
                  f"memory limit {CHART_MEMORY_LIMIT_MIB} MiB")
            print(f"{'attack':<24} {'peak MiB':>8} {'answered':>13} {'p99 ms':>8} {'probes':>9} "
                  f"{'log lines':>9} {'warn':>5} {'!json':>5} {'tb':>3}  errors / warnings")
            offset = 0
            for name in ["baseline", *args.attacks]:
                observers.window = Window()
                offset, _ = log_summary(log, 0)
                if name == "baseline":
                    await asyncio.sleep(args.hold)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(RUNNERS[name](port, ctx, args.hold), args.hold + 60)
                await asyncio.sleep(3)
                w = observers.window
                _, logged = log_summary(log, offset)
                answered = f"{len(w.latencies)}/{w.sent}"
                print(f"{name:<24} {w.peak_mib:8.0f} {answered:>13} {p99_ms(w.latencies):8.1f} "
                      f"{w.probes_ok:>4}/{w.probes:<4} {logged['lines']:>9} {logged['warnings']:>5} "
                      f"{logged['not_json']:>5} {logged['tracebacks']:>3}  {w.errors or ''} {logged['events'] or ''}",
                      flush=True)
                if server.poll() is not None:
                    sys.exit(f"serve exited with {server.returncode} during {name}")
            for task in background:
                task.cancel()
        finally:
            server.terminate()
            server.wait(30)
    finally:
        plane.stop()


def create_service_account(plane) -> None:
    for path, body in (("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}),
                       ("/api/v1/namespaces/bench/serviceaccounts", SERVICE_ACCOUNT)):
        status, _ = plane.call("POST", path, body)
        if status not in (201, 409):
            sys.exit(f"creating {path} answered {status}")


async def wait_ready(health_port: int, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"serve exited with {server.returncode}")
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", health_port)
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            ready = (await reader.read(12)).startswith(b"HTTP/1.1 200")
            writer.close()
            if ready:
                return
        await asyncio.sleep(0.2)
    sys.exit("serve did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated, of {', '.join(ATTACKS)}")
    parser.add_argument("--hold", type=float, default=15.0, help="seconds each attack holds its connections")
    args = parser.parse_args()
    args.attacks = [a for a in args.attacks.split(",") if a]
    unknown = set(args.attacks) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown attacks: {', '.join(sorted(unknown))}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))  # serve inherits it
    os.environ.setdefault("PYTHONHASHSEED", "0")
    with tempfile.TemporaryDirectory(prefix="injector-attack-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
