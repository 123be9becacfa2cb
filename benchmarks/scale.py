"""Scale benchmark: `serve` with the chart's default settings against a real kube-apiserver
holding 1k, 10k, 100k ServiceAccounts (`make bench-scale`). Prints numbers; asserts nothing.

One control plane (tests/e2e/plane.py: etcd + kube-apiserver v1.34 on loopback, an audit log of
ServiceAccount requests) grows to each size in turn, created through the API by 32 keep-alive
connections (bounded: at most --max-seconds of creation per size; what was reached is printed).
For each size a fresh `serve` (the chart's flags: --workers 2, --shutdown-delay 5s, JSON logs), or
one per --workers count given, is started and measured; with --go-webhook PATH, a fresh Go
webhook (aws/amazon-eks-pod-identity-webhook, out of cluster, its default flags, the same
kubeconfig and serving certificate) is measured after them in the same way:

- ready: serve's own readiness, from spawn to the first 200 from /readyz (the initial sync
  included), and from spawn to its "connected to the API server" and "initial sync complete"
  log lines. The Go webhook has no such signal: its /healthz says ok before its informer has
  synced, so its row shows the time to the first 200 from /healthz, for information only;
- serving all: the same for both, from spawn to the first /mutate answer with a JSONPatch for a
  pod of the ServiceAccount zzzz-sentinel/sentinel (a role-arn), the last object of the API
  server's initial listing (ordered by namespace/name), polled every 20 ms: the webhook mutates
  pods of every ServiceAccount that existed at its start. The Go webhook is polled from spawn
  (its lookup grace period is 0: a ServiceAccount not in its cache is not fetched, the pod goes
  unmutated). serve is polled from its /readyz on: before its sync it would fetch the missing
  sentinel with a GET (its 1 s lookup grace) and answer for that one ServiceAccount alone;
- PSS: the whole process tree, from /proc/PID/smaps_rollup, after each load below, and when it
  was ready and serving all;
- API requests/h at steady state: the webhook's requests in the audit log (by its client's user
  agent: kubernetes-asyncio's for serve, the binary's name for the Go webhook) during --steady
  seconds after it was ready and serving all, per hour (our watches are resumed at most every
  300 s by our deadline, the server's --min-request-timeout 1800 s being longer), and how many
  were LISTs; "sync requests" are those between spawn and then;
- admissions/s, p99 and CPU µs per admission: wrk -t2 -c32 for --duration seconds on the review
  of benchmarks/bench.py with each --containers count in turn (default 1), CPU from /proc
  utime+stime of the tree over the run. One table line per webhook, size and containers count;
  the lines of one webhook at one size share its ready, sync and steady columns.

Before the webhooks of each size, the same watch-list request is read raw (lines counted,
nothing decoded) to show how much of the ready time is the API server sending the set, what
that costs the API server in CPU, and which object comes last; then the same set as LIST
requests, from the watch cache (resourceVersion=0, what `serve` asks a server without
watch-list) and consistent (in pages from etcd), for comparison.

Usage: `python benchmarks/scale.py [--sizes 1000,10000,100000] [--steady 60] [--duration 10] [--workers 1,2]
[--containers 1,3,10] [--go-webhook PATH [--go-label "Go webhook 3bf80a34"]]`.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import orjson  # noqa: E402
from bench import (  # noqa: E402
    SERVICE_ACCOUNT,
    check_response,
    cpu_seconds,
    ensure_wrk,
    free_port,
    interpreter,
    review,
    run_wrk,
    tree,
)

from tests.e2e.plane import (  # noqa: E402
    SERVICE_ACCOUNT_AUDIT_POLICY,
    WEBHOOK_USER_AGENT,
    ControlPlane,
    find_binary,
    start_control_plane,
    webhook_audit_entries,
)

NAMESPACES = 100
CHART_FLAGS = ["--workers", "2", "--shutdown-delay", "5s", "--log-format", "json"]
# A ServiceAccount with a role whose key sorts after every other (bench, default, kube-*,
# scale-*): the last object of the API server's initial listing at every size.
SENTINEL_NAMESPACE, SENTINEL_NAME = "zzzz-sentinel", "sentinel"
POLL_SECONDS = 0.02


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
        for name in ["bench", *(f"scale-{n}" for n in range(NAMESPACES)), SENTINEL_NAMESPACE]:
            self.post("/api/v1/namespaces", {"metadata": {"name": name}})
        self.post("/api/v1/namespaces/bench/serviceaccounts", {"metadata": SERVICE_ACCOUNT["metadata"]})
        self.post(f"/api/v1/namespaces/{SENTINEL_NAMESPACE}/serviceaccounts", {"metadata": {
            "name": SENTINEL_NAME,
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/sentinel"}}})

    def grow_to(self, count: int, max_seconds: float) -> float:
        started = time.monotonic()
        batch = 2000
        with ThreadPoolExecutor(32) as pool:
            while self.created < count and time.monotonic() - started < max_seconds:
                upto = min(count, self.created + batch)
                list(pool.map(self.one, range(self.created, upto)))
                self.created = upto
        return time.monotonic() - started


def pss_mib(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except OSError:
            pass
    return total / 1024


def audit_entries(audit_log: Path, user_agent: str) -> list[dict]:
    """The audit log's entries for requests whose user agent starts with `user_agent`: ours are
    plane.py's webhook_audit_entries; another webhook's (the Go one) are read the same way."""
    if user_agent == WEBHOOK_USER_AGENT:
        return webhook_audit_entries(audit_log)
    entries = (json.loads(line) for line in audit_log.read_text().splitlines())
    return [entry for entry in entries if entry.get("userAgent", "").startswith(user_agent)]


def webhook_requests(audit_log: Path, since: float, until: float, user_agent: str = WEBHOOK_USER_AGENT) -> list[str]:
    """Verbs of the webhook's ServiceAccount requests (its client's user agent, a prefix) received in
    [since, until); a watch still open is logged at ResponseStarted, so each audit ID counts once."""
    verbs, seen = [], set()
    for entry in audit_entries(audit_log, user_agent):
        if entry["auditID"] in seen:
            continue
        seen.add(entry["auditID"])
        when = datetime.fromisoformat(entry["requestReceivedTimestamp"]).timestamp()
        if since <= when < until:
            verbs.append(entry["verb"])
    return verbs


@dataclass
class Webhook:
    """One implementation as measured: how it starts, and how it is told apart in the audit log."""

    label: str  # the table's flags column
    command: Callable[[int, int], list[str]]  # (port, metrics port) -> argv
    user_agent: str  # the prefix of its API client's user agent
    health_path: str  # its own readiness endpoint: /readyz (ours, after the sync) or /healthz (Go, at once)
    log_name: str
    # Poll the sentinel only once health_path answers: a webhook that fetches a ServiceAccount
    # missing from its cache (ours) would otherwise answer for the sentinel before its sync ends.
    sentinel_after_health: bool


class Probe:
    """One HTTPS request repeated on a keep-alive connection (reopened after any failure) until
    `accept(status, body)` says yes."""

    def __init__(self, port: int, ctx: ssl.SSLContext, method: str, path: str, body: bytes | None,
                 accept: Callable[[int, bytes], bool]) -> None:
        self.port, self.ctx, self.method, self.path, self.body, self.accept = port, ctx, method, path, body, accept
        self.conn: http.client.HTTPSConnection | None = None

    def __call__(self) -> bool:
        try:
            if self.conn is None:
                self.conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=2)
            headers = {"Content-Type": "application/json"} if self.body is not None else {}
            self.conn.request(self.method, self.path, self.body, headers)
            response = self.conn.getresponse()
            return self.accept(response.status, response.read())
        except (OSError, http.client.HTTPException):
            self.close()
            return False

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def sentinel_review() -> bytes:
    """bench.py's 1-container review for a pod of the sentinel ServiceAccount."""
    body = review(1)
    body["request"]["namespace"] = SENTINEL_NAMESPACE
    body["request"]["object"]["metadata"]["namespace"] = SENTINEL_NAMESPACE
    body["request"]["object"]["spec"]["serviceAccountName"] = SENTINEL_NAME
    return orjson.dumps(body)


def patched(status: int, body: bytes) -> bool:
    try:
        return status == 200 and orjson.loads(body)["response"].get("patchType") == "JSONPatch"
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


def wait_for(server: subprocess.Popen, probes: dict[str, Probe], started: float, log: Path,
             after: dict[str, str]) -> dict[str, float]:
    """Seconds from `started` to the first success of each probe, polled every POLL_SECONDS;
    a probe named in `after` only once the probe it names has succeeded."""
    took: dict[str, float] = {}
    try:
        while len(took) < len(probes):
            if server.poll() is not None or time.monotonic() - started > 300:
                raise RuntimeError(f"{log.name}: not {', '.join(sorted(set(probes) - set(took)))} "
                                   f"(exit {server.returncode}): {log.read_text(errors='replace')[-2000:]}")
            for name, probe in probes.items():
                if name not in took and (name not in after or after[name] in took) and probe():
                    took[name] = time.monotonic() - started
            time.sleep(POLL_SECONDS)
    finally:
        for probe in probes.values():
            probe.close()
    return took


def measure(plane: ControlPlane, audit_log: Path, work: Path, count: int, args: argparse.Namespace,
            wrk: str, hook: Webhook) -> list[dict]:
    """One fresh process of `hook`: its start-up and steady state, then one wrk run per
    --containers count; a row for each."""
    port, metrics_port = free_port(), free_port()
    log_path = work / f"{hook.log_name}-{count}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    started_wall, started = time.time(), time.monotonic()
    server = subprocess.Popen(hook.command(port, metrics_port), stdout=subprocess.DEVNULL, stderr=log)
    ctx = ssl.create_default_context(cafile=str(work / "certs/ca.crt"))
    url = f"https://127.0.0.1:{port}/mutate"
    try:
        took = wait_for(server, {
            "ready": Probe(port, ctx, "GET", hook.health_path, None, lambda status, _: status == 200),
            "serving_all": Probe(port, ctx, "POST", "/mutate", sentinel_review(), patched)}, started, log_path,
            {"serving_all": "ready"} if hook.sentinel_after_health else {})
        ready_wall = time.time()
        pss_ready = pss_mib(server.pid)
        time.sleep(args.steady)
        steady = webhook_requests(audit_log, ready_wall, time.time(), hook.user_agent)
        sync = webhook_requests(audit_log, started_wall - 1, ready_wall, hook.user_agent)
        common = {"count": count, "flags": hook.label, "health": hook.health_path, "ready_s": took["ready"],
                  "serving_all_s": took["serving_all"], **log_phases(log_path, started_wall),
                  "pss_ready_mib": pss_ready, "sync_requests": sync, "steady_requests": steady,
                  "requests_per_hour": len(steady) * 3600 / args.steady}
        rows = []
        for containers in args.containers:
            body = orjson.dumps(review(containers))
            check_response(url, body, ctx)
            rps, _, p99, errors, cpu_us = run_wrk(wrk, url, body, work, args.duration, 32, 2, server.pid)
            rows.append(common | {"containers": containers, "pss_mib": pss_mib(server.pid), "rps": rps,
                                  "p99_ms": p99, "cpu_us": cpu_us, "errors": errors, "load": os.getloadavg()[0]})
        return rows
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


def raw_watch_list(plane: ControlPlane) -> tuple[float, int, int, str, float]:
    """The sync `serve` does, read raw: the same watch-list request, its lines counted up to the
    initial-events-end bookmark, nothing decoded but the last event before it. (seconds, events,
    bytes, namespace/name of that last object, the API server's CPU seconds meanwhile): what the
    API server takes to send the set, without our client or decoding, and whether the sentinel
    came last."""
    conn = http.client.HTTPSConnection("127.0.0.1", plane.port, context=plane.admin_context(), timeout=300)
    apiserver = plane.apiserver.proc.pid
    cpu = cpu_seconds(apiserver)
    started = time.monotonic()
    conn.request("GET", "/api/v1/serviceaccounts?watch=true&sendInitialEvents=true"
                 "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")
    response = conn.getresponse()
    events = size = 0
    previous = b""
    try:
        while line := response.readline():
            events += 1
            size += len(line)
            if b'"BOOKMARK"' in line and b"k8s.io/initial-events-end" in line:
                took, cpu = time.monotonic() - started, cpu_seconds(apiserver) - cpu
                metadata = orjson.loads(previous)["object"]["metadata"] if previous else {}
                return took, events - 1, size, f"{metadata.get('namespace')}/{metadata.get('name')}", cpu
            previous = line
        raise RuntimeError("the watch ended before its initial-events-end bookmark")
    finally:
        conn.close()


def raw_list(plane: ControlPlane, query: str) -> tuple[float, int, int, float]:
    """The same set as LIST requests read raw, following continue tokens (gzip accepted, as
    kubernetes-asyncio's aiohttp asks): (seconds, requests, bytes sent, the API server's CPU
    seconds meanwhile). `resourceVersion=0` is answered from the watch cache; a LIST with no
    version is a consistent read from etcd, in pages."""
    conn = http.client.HTTPSConnection("127.0.0.1", plane.port, context=plane.admin_context(), timeout=300)
    apiserver = plane.apiserver.proc.pid
    cpu, started = cpu_seconds(apiserver), time.monotonic()
    requests = size = 0
    token = ""
    try:
        while True:
            conn.request("GET", f"/api/v1/serviceaccounts?{query}" + (f"&continue={quote(token)}" if token else ""),
                         headers={"Accept-Encoding": "gzip"})
            response = conn.getresponse()
            body = response.read()
            requests, size = requests + 1, size + len(body)
            if response.getheader("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            token = orjson.loads(body)["metadata"].get("continue", "")
            if not token:
                return time.monotonic() - started, requests, size, cpu_seconds(apiserver) - cpu
    finally:
        conn.close()


def serve_webhook(exe: str, work: Path, plane: ControlPlane, workers: str | None) -> Webhook:
    """Our `serve` with the chart's flags (--workers replaced when asked)."""
    def command(port: int, metrics_port: int) -> list[str]:
        return [exe, "serve", "--port", str(port), "--metrics-port", str(metrics_port), "--bind-address", "127.0.0.1",
                "--tls-cert", str(work / "certs/tls.crt"), "--tls-key", str(work / "certs/tls.key"),
                "--kubeconfig", str(plane.kubeconfig), *flags(workers)]
    return Webhook(" ".join(flags(workers)), command, WEBHOOK_USER_AGENT, "/readyz",
                   f"serve-w{workers}" if workers else "serve", sentinel_after_health=True)


def go_webhook(binary: str, label: str, work: Path, plane: ControlPlane) -> Webhook:
    """The Go webhook out of cluster, its other flags at their defaults. client-go's user agent
    starts with the name the binary was run by (os.Args[0]'s base name), then "/"."""
    def command(port: int, metrics_port: int) -> list[str]:
        return [binary, "--in-cluster=false", "--port", str(port), "--metrics-port", str(metrics_port),
                "--tls-cert", str(work / "certs/tls.crt"), "--tls-key", str(work / "certs/tls.key"),
                "--kubeconfig", str(plane.kubeconfig)]
    return Webhook(label, command, f"{Path(binary).name}/", "/healthz", "go-webhook", sentinel_after_health=False)


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
    parser.add_argument("--containers", default="1", help="containers per pod in the wrk review; a "
                        "comma-separated list loads each webhook with each in turn")
    parser.add_argument("--go-webhook", metavar="PATH", help="also measure this amazon-eks-pod-identity-webhook "
                        "binary (listening on 127.0.0.1) at every size")
    parser.add_argument("--go-label", default="Go webhook", help="the Go webhook's name in the flags column, "
                        "e.g. 'Go webhook 3bf80a34'")
    args = parser.parse_args()
    args.containers = [int(c) for c in args.containers.split(",")]
    if args.go_webhook and not os.access(args.go_webhook, os.X_OK):
        parser.error(f"--go-webhook {args.go_webhook}: not an executable file")
    wrk = ensure_wrk()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
          f"commit {commit.stdout.strip()}; {interpreter()}")
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
            hooks = [serve_webhook(exe, work, plane, workers)
                     for workers in (args.workers.split(",") if args.workers else [None])]
            if args.go_webhook:
                hooks.append(go_webhook(args.go_webhook, args.go_label, work, plane))
            rows = []
            for size in (int(s) for s in args.sizes.split(",")):
                took = creator.grow_to(size, args.max_seconds)
                print(f"{creator.created} ServiceAccounts (+1 bench, +1 sentinel) exist; creating took {took:.0f} s",
                      flush=True)
                raw_s, events, size_bytes, last, api_cpu = raw_watch_list(creator.plane)
                print(f"raw watch-list read (no decoding): {raw_s:.2f} s for {events:,} events, "
                      f"{size_bytes / 2**20:.1f} MiB, the last {last}, the API server's CPU {api_cpu:.2f} s; "
                      f"load average {os.getloadavg()[0]:.2f}", flush=True)
                for what, query in (("LIST from the watch cache (resourceVersion=0)", "limit=500&resourceVersion=0"),
                                    ("consistent LIST (no resourceVersion)", "limit=500")):
                    raw_s, requests, size_bytes, api_cpu = raw_list(creator.plane, query)
                    print(f"raw {what}: {raw_s:.2f} s, {requests} requests, {size_bytes / 2**20:.1f} MiB sent, "
                          f"the API server's CPU {api_cpu:.2f} s", flush=True)
                if last != f"{SENTINEL_NAMESPACE}/{SENTINEL_NAME}":
                    print(f"warning: the sentinel is not the last object listed ({last} is): "
                          "\"serving all\" does not mean the whole set below", flush=True)
                for hook in hooks:
                    for row in measure(plane, audit_log, work, creator.created + 2, args, wrk, hook):
                        rows.append(row)
                        print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()
                                          if k not in ("sync_requests", "steady_requests")}
                                         | {"sync": summary(row["sync_requests"]),
                                            "steady": summary(row["steady_requests"])}), flush=True)
                    if not rows[-1]["sync_requests"]:
                        agents = sorted({entry.get("userAgent", "") for entry in audit_entries(audit_log, "")})
                        print(f"warning: no request of {hook.label} in the audit log by the user agent "
                              f"{hook.user_agent!r}; user agents seen: {agents}", flush=True)
        finally:
            plane.stop()
    print(f"\nsteady state {args.steady:.0f} s; wrk -t2 -c32 -d{args.duration}s on the review with "
          f"'containers' containers; load average {os.getloadavg()[0]:.2f} at end")
    print("| ServiceAccounts | flags | containers | PSS (tree) | ready (connected, synced) | serving all "
          "| sync requests | API requests/h steady (LIST) | admissions/s | p99 | CPU µs/admission "
          "| load average after |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        lists = row["steady_requests"].count("list")
        ready = (f"{row['ready_s']:.2f} s ({row.get('connected_s', 0):.2f}, {row.get('synced_s', 0):.2f})"
                 if row["health"] == "/readyz" else f"{row['health']} {row['ready_s']:.2f} s")
        print(f"| {row['count']:,} | {row['flags']} | {row['containers']} "
              f"| {row['pss_mib']:.0f} MiB ({row['pss_ready_mib']:.0f} at ready) "
              f"| {ready} | {row['serving_all_s']:.2f} s "
              f"| {summary(row['sync_requests'])} | {row['requests_per_hour']:.0f} ({lists}) "
              f"| {row['rps']:,.0f} | {row['p99_ms']:.1f} ms | {row['cpu_us']:.0f} | {row['load']:.2f} |")


def summary(verbs: list[str]) -> str:
    return ", ".join(f"{verbs.count(v)} {v}" for v in sorted(set(verbs))) or "none"


if __name__ == "__main__":
    main()
