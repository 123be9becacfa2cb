"""Scale benchmark: `serve` with the chart's default settings against a real kube-apiserver
holding 1k, 10k, 100k ServiceAccounts (`make bench-scale`). Prints numbers; asserts nothing.

One control plane (tests/e2e/plane.py: etcd + kube-apiserver v1.34 on loopback, an audit log of
ServiceAccount requests) grows to each size in turn, created through the API by 32 keep-alive
connections (bounded: at most --max-seconds of creation per size; what was reached is printed).
For each size a fresh `serve` (the chart's flags: --workers 1, --shutdown-delay 5s, JSON logs), or
one per --workers count given, is started and measured:

- ready: from spawn to the first 200 from /readyz (the initial sync included), and from spawn to
  serve's "connected to the API server" and "initial sync complete" log lines;
- PSS: the whole process tree, from /proc/PID/smaps_rollup, after the load below;
- API requests/h at steady state: the webhook's requests in the audit log during --steady
  seconds after ready, per hour (watches are resumed at most every 300 s by our deadline,
  the server's --min-request-timeout 1800 s being longer), and how many were LISTs;
- admissions/s, p99 and CPU µs per admission: wrk -t2 -c32 for --duration seconds on the
  1-container review of benchmarks/bench.py, CPU from /proc utime+stime of the tree.

Before the serves of each size, the same watch-list request is read raw (lines counted, nothing
decoded) to show how much of the ready time is the API server sending the set.

Usage: `python benchmarks/scale.py [--sizes 1000,10000,100000] [--steady 60] [--duration 10] [--workers 1,2]`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import orjson  # noqa: E402
from bench import SERVICE_ACCOUNT, check_response, ensure_wrk, free_port, review, run_wrk  # noqa: E402

from tests.e2e.plane import (  # noqa: E402
    SERVICE_ACCOUNT_AUDIT_POLICY,
    ControlPlane,
    find_binary,
    start_control_plane,
    webhook_audit_entries,
)

NAMESPACES = 100
CHART_FLAGS = ["--workers", "1", "--shutdown-delay", "5s", "--log-format", "json"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Creator:
    """ServiceAccounts through the API, many at a time; one in a hundred has a role."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane, self.local, self.created = plane, threading.local(), 0

    def post(self, path: str, body: dict) -> None:
        if getattr(self.local, "conn", None) is None:
            self.local.conn = http.client.HTTPSConnection("127.0.0.1", self.plane.port,
                                                          context=self.plane.admin_context(), timeout=60)
        self.local.conn.request("POST", path, orjson.dumps(body), {"Content-Type": "application/json"})
        response = self.local.conn.getresponse()
        data = response.read()
        if response.status not in (201, 409):
            raise RuntimeError(f"POST {path}: {response.status} {data[:200]!r}")

    def one(self, index: int) -> None:
        annotations = {"eks.amazonaws.com/role-arn": f"arn:aws:iam::111122223333:role/scale-{index}"} \
            if index % 100 == 0 else {}
        self.post(f"/api/v1/namespaces/scale-{index % NAMESPACES}/serviceaccounts",
                  {"metadata": {"name": f"sa-{index}", "annotations": annotations}})

    def namespaces(self) -> None:
        for name in ["bench", *(f"scale-{n}" for n in range(NAMESPACES))]:
            self.post("/api/v1/namespaces", {"metadata": {"name": name}})
        self.post("/api/v1/namespaces/bench/serviceaccounts", {"metadata": SERVICE_ACCOUNT["metadata"]})

    def grow_to(self, count: int, max_seconds: float) -> float:
        started = time.monotonic()
        batch = 2000
        with ThreadPoolExecutor(32) as pool:
            while self.created < count and time.monotonic() - started < max_seconds:
                upto = min(count, self.created + batch)
                list(pool.map(self.one, range(self.created, upto)))
                self.created = upto
        return time.monotonic() - started


def tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def pss_mib(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except OSError:
            pass
    return total / 1024


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLK_TCK


def webhook_requests(audit_log: Path, since: float, until: float) -> list[str]:
    """Verbs of the webhook's ServiceAccount requests (its client's user agent) received in
    [since, until); a watch still open is logged at ResponseStarted, so each audit ID counts once."""
    verbs, seen = [], set()
    for entry in webhook_audit_entries(audit_log):
        if entry["auditID"] in seen:
            continue
        seen.add(entry["auditID"])
        when = datetime.fromisoformat(entry["requestReceivedTimestamp"]).timestamp()
        if since <= when < until:
            verbs.append(entry["verb"])
    return verbs


def measure(plane: ControlPlane, audit_log: Path, work: Path, count: int, args: argparse.Namespace,
            wrk: str, workers: str | None = None) -> dict:
    import ssl

    port, metrics_port = free_port(), free_port()
    exe = str(Path(sys.executable).parent / "pod-identity-injector")
    log = open(work / f"serve-{count}.log", "wb")  # noqa: SIM115 - closed below
    started_wall, started = time.time(), time.monotonic()
    server = subprocess.Popen([exe, "serve", "--port", str(port), "--metrics-port", str(metrics_port),
                               "--bind-address", "127.0.0.1", "--tls-cert", str(work / "certs/tls.crt"),
                               "--tls-key", str(work / "certs/tls.key"), "--kubeconfig", str(plane.kubeconfig),
                               *flags(workers)], stdout=subprocess.DEVNULL, stderr=log)
    ctx = ssl.create_default_context(cafile=str(work / "certs/ca.crt"))
    try:
        while True:
            if server.poll() is not None or time.monotonic() - started > 300:
                raise RuntimeError(f"serve did not become ready: {(work / f'serve-{count}.log').read_text()[-2000:]}")
            try:
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        ready = time.monotonic() - started
        ready_wall = time.time()
        pss_ready = pss_mib(server.pid)
        time.sleep(args.steady)
        steady = webhook_requests(audit_log, ready_wall, time.time())
        sync = webhook_requests(audit_log, started_wall - 1, ready_wall)
        body = orjson.dumps(review(1))
        url = f"https://127.0.0.1:{port}/mutate"
        check_response(url, body, ctx)
        cpu_before = cpu_seconds(server.pid)
        out = run_wrk(wrk, url, body, work, args.duration, 32, 2)
        cpu = cpu_seconds(server.pid) - cpu_before
        rps, _, p99, errors = out
        phases = log_phases(work / f"serve-{count}.log", started_wall)
        return {"count": count, "ready_s": ready, **phases, "pss_ready_mib": pss_ready, "pss_mib": pss_mib(server.pid),
                "sync_requests": sync, "steady_requests": steady,
                "requests_per_hour": len(steady) * 3600 / args.steady, "rps": rps, "p99_ms": p99,
                "cpu_us": cpu * 1e6 / (rps * args.duration) if rps else float("nan"), "errors": errors}
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def log_phases(path: Path, started_wall: float) -> dict[str, float]:
    """Seconds from spawn to the first "connected to the API server" and "initial sync complete"
    log lines of serve: where the ready time goes (imports and start-up, then the sync)."""
    phases = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        name = {"connected to the API server": "connected_s", "initial sync complete": "synced_s"}.get(
            entry.get("event"))
        if name and name not in phases:
            phases[name] = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp() - started_wall
    return phases


def raw_watch_list(plane: ControlPlane) -> tuple[float, int, int]:
    """The sync `serve` does, read raw: the same watch-list request, its lines counted up to the
    initial-events-end bookmark, nothing decoded but that bookmark. (seconds, events, bytes):
    what the API server takes to send the set, without our client or decoding."""
    conn = http.client.HTTPSConnection("127.0.0.1", plane.port, context=plane.admin_context(), timeout=300)
    started = time.monotonic()
    conn.request("GET", "/api/v1/serviceaccounts?watch=true&sendInitialEvents=true"
                 "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")
    response = conn.getresponse()
    events = size = 0
    try:
        while line := response.readline():
            events += 1
            size += len(line)
            if b'"BOOKMARK"' in line and b"k8s.io/initial-events-end" in line:
                return time.monotonic() - started, events - 1, size
        raise RuntimeError("the watch ended before its initial-events-end bookmark")
    finally:
        conn.close()


def flags(workers: str | None) -> list[str]:
    """The chart's flags, with --workers replaced when asked."""
    chart = list(CHART_FLAGS)
    if workers is not None:
        chart[chart.index("--workers") + 1] = workers
    return chart


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of steady state counted")
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk load")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="most seconds spent creating per size")
    parser.add_argument("--workers", help="serve --workers instead of the chart's value; a comma-separated "
                        "list measures each at every size")
    args = parser.parse_args()
    wrk = ensure_wrk()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
          f"commit {commit.stdout.strip()}")
    with tempfile.TemporaryDirectory(prefix="injector-scale-") as tmp:
        work = Path(tmp)
        exe = str(Path(sys.executable).parent / "pod-identity-injector")
        subprocess.run([exe, "certs", "--out-dir", str(work / "certs"), "--ip", "127.0.0.1"], check=True,
                       stdout=subprocess.DEVNULL)
        (work / "audit-policy.yaml").write_text(SERVICE_ACCOUNT_AUDIT_POLICY)
        audit_log = work / "audit.log"
        plane = start_control_plane(find_binary(), work / "plane", extra_flags=(
            f"--audit-policy-file={work / 'audit-policy.yaml'}", f"--audit-log-path={audit_log}",
            "--audit-log-maxsize=0"))
        try:
            creator = Creator(plane)
            creator.namespaces()
            rows = []
            for size in (int(s) for s in args.sizes.split(",")):
                took = creator.grow_to(size, args.max_seconds)
                print(f"{creator.created} ServiceAccounts (+1 bench) exist; creating took {took:.0f} s", flush=True)
                raw_s, events, size = raw_watch_list(creator.plane)
                print(f"raw watch-list read (no decoding): {raw_s:.2f} s for {events:,} events, "
                      f"{size / 2**20:.1f} MiB; load average {os.getloadavg()[0]:.2f}", flush=True)
                for workers in args.workers.split(",") if args.workers else [None]:
                    row = measure(plane, audit_log, work, creator.created + 1, args, wrk, workers)
                    row["flags"] = " ".join(flags(workers))
                    row["load"] = os.getloadavg()[0]
                    rows.append(row)
                    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()
                                      if k not in ("sync_requests", "steady_requests")}
                                     | {"sync": summary(row["sync_requests"]),
                                        "steady": summary(row["steady_requests"])}), flush=True)
        finally:
            plane.stop()
    print(f"\nsteady state {args.steady:.0f} s; "
          f"wrk -t2 -c32 -d{args.duration}s, 1-container review; load average {os.getloadavg()[0]:.2f} at end")
    print("| ServiceAccounts | flags | PSS (tree) | ready (connected, synced) | sync requests "
          "| API requests/h steady (LIST) | admissions/s | p99 | CPU µs/admission | load average after |")
    print("| ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        lists = row["steady_requests"].count("list")
        print(f"| {row['count']:,} | {row['flags']} | {row['pss_mib']:.0f} MiB ({row['pss_ready_mib']:.0f} at ready) "
              f"| {row['ready_s']:.2f} s ({row.get('connected_s', 0):.2f}, {row.get('synced_s', 0):.2f}) "
              f"| {summary(row['sync_requests'])} | {row['requests_per_hour']:.0f} ({lists}) "
              f"| {row['rps']:,.0f} | {row['p99_ms']:.1f} ms | {row['cpu_us']:.0f} | {row['load']:.2f} |")


def summary(verbs: list[str]) -> str:
    return ", ".join(f"{verbs.count(v)} {v}" for v in sorted(set(verbs))) or "none"


if __name__ == "__main__":
    main()
