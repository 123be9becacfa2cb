"""Benchmark: `serve` under wrk over HTTPS, and the decision path in-process.

Prints numbers; asserts nothing. Usage: `make bench` or
`python benchmarks/bench.py [--duration 10] [--connections 32] [--workers 0] [--only-inprocess]`.
`--url https://127.0.0.1:PORT/mutate --ca FILE` drives a webhook that is already running (ours
or another implementation, e.g. the Go webhook) instead of starting `serve`; it must know the
ServiceAccount SERVICE_ACCOUNT (bench/bench-app) and answer the review with a JSONPatch.
wrk comes from Debian's `wrk` package (installed here when missing and running as root).

Each wrk run also gives the server's CPU per admission: utime+stime of its whole process tree
(from /proc, before and after the run) in µs, divided by requests/s × duration. The tree is the
spawned `serve`'s; with `--url` it is that of `--pid PID`, and without `--pid` the column says n/a.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from injector.core.decision import decide  # noqa: E402
from injector.core.planner import plan_mutation  # noqa: E402
from injector.core.review import decode_json, encode_response, parse_review  # noqa: E402
from injector.core.settings import MutationSettings  # noqa: E402
from injector.sources.manifests import service_account_entries  # noqa: E402
from injector.sources.store import IdentityStore  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVICE_ACCOUNT = {
    "apiVersion": "v1", "kind": "ServiceAccount",
    "metadata": {"name": "bench-app", "namespace": "bench",
                 "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/bench-app",
                                 "eks.amazonaws.com/sts-regional-endpoints": "true"}},
}


def container(index: int) -> dict:
    """A container shaped like real workloads: env, mounts, probes, resources, security."""
    return {
        "name": f"app-{index}",
        "image": f"registry.example.com/team/app-{index}:1.{index}.0",
        "imagePullPolicy": "IfNotPresent",
        "args": ["--listen=:8080", "--log-level=info"],
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "env": [{"name": "LOG_FORMAT", "value": "json"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "volumeMounts": [{"name": "kube-api-access-abcde", "readOnly": True,
                          "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/live", "port": 8080}, "periodSeconds": 10},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }


def review(containers: int) -> dict:
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "bench-app-7d9c5b6f4-", "namespace": "bench",
                     "labels": {"app": "bench-app", "pod-template-hash": "7d9c5b6f4"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                          "name": "bench-app-7d9c5b6f4", "uid": "6f0e1c2a-1111-2222-3333-444455556666",
                                          "controller": True, "blockOwnerDeletion": True}]},
        "spec": {
            "serviceAccountName": "bench-app",
            "containers": [container(i) for i in range(containers)],
            "volumes": [{"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
            "terminationGracePeriodSeconds": 30, "enableServiceLinks": True, "priority": 0,
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300}],
        },
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "0df28fbd-5f5f-4f5e-9c2d-6a3c7f0b1a2c", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": "bench",
        "operation": "CREATE", "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                                            "groups": ["system:serviceaccounts", "system:authenticated"]},
        "object": pod, "oldObject": None, "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}}}


def bench_store() -> tuple[MutationSettings, IdentityStore]:
    """Default settings and a store that knows SERVICE_ACCOUNT, as the in-process benchmarks use them."""
    settings = MutationSettings()
    store = IdentityStore(settings)
    store.replace_service_accounts(service_account_entries([SERVICE_ACCOUNT], settings, "default", "bench"))
    return settings, store


def inprocess(sizes: list[int], seconds: float) -> list[tuple[int, float, float]]:
    """Calls/s of the planner alone and of the whole decode→decide→encode path."""
    settings, store = bench_store()
    rows = []
    for size in sizes:
        body = orjson.dumps(review(size))
        _, request = parse_review(decode_json(body))
        identity = store.resolve("bench", "bench-app").identity
        pod = request.pod

        def planner_only(pod=pod, identity=identity) -> None:
            plan_mutation(pod, identity, settings)

        def full_path(body=body) -> None:
            envelope, req = parse_review(decode_json(body))
            decision = decide(req, store.resolve(req.namespace, req.service_account), settings)
            encode_response(envelope, True, decision.operations)

        rows.append((size, _rate(planner_only, seconds), _rate(full_path, seconds)))
    return rows


def _rate(fn, seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(200):
            fn()
        count += 200
    return count / elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def interpreter() -> str:
    """Which Python runs serve (it starts from this one's venv): builds differ by a fifth in speed
    (docs/performance.md#interpreter), so every figure says which it was measured with."""
    return f"Python {platform.python_version()} ({os.path.realpath(sys.executable)})"


def ensure_tool(command: str, package: str) -> str:
    """The path of `command`, installing Debian's `package` first when it is missing and we are root."""
    path = shutil.which(command)
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {command} (Debian package {package})…", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=False, stdout=subprocess.DEVNULL)
        if not shutil.which(command):
            subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, stdout=subprocess.DEVNULL)
        return shutil.which(command) or sys.exit(f"{command} did not install")
    sys.exit(f"{command} is not installed: apt-get install {package}")


def ensure_wrk() -> str:
    return ensure_tool("wrk", "wrk")


_LATENCY = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants, from the parent PIDs in /proc/*/stat."""
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


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process tree of `pid` so far, in seconds."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLK_TCK


def run_wrk(wrk: str, url: str, body: bytes, workdir: Path, duration: int, connections: int,
            threads: int, pid: int | None = None) -> tuple[float, float, float, str, float]:
    """(requests/s, p50 ms, p99 ms, errors, CPU µs per admission of `pid`'s tree; NaN without `pid`)."""
    script = workdir / "post.lua"
    script.write_text(
        "wrk.method = 'POST'\n"
        f"wrk.body = {json.dumps(body.decode())}\n"
        "wrk.headers['Content-Type'] = 'application/json'\n")
    cpu_before = cpu_seconds(pid) if pid is not None else 0.0
    out = subprocess.run([wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu_before if pid is not None else float("nan")
    rps = float(_RPS.search(out).group(1))
    lat = {m.group(1): float(m.group(2)) * _UNITS[m.group(3)] for m in _LATENCY.finditer(out)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    cpu_us = cpu * 1e6 / (rps * duration) if rps else float("nan")
    return rps, lat.get("50", float("nan")), lat.get("99", float("nan")), errors.group(0) if errors else "", cpu_us


def measure(wrk: str, url: str, ctx: ssl.SSLContext, args: argparse.Namespace, sizes: list[int],
            work: Path, pid: int | None) -> list[tuple]:
    rows = []
    for size in sizes:
        body = orjson.dumps(review(size))
        check_response(url, body, ctx)
        rows.append((size, *run_wrk(wrk, url, body, work, args.duration, args.connections, args.threads, pid)))
    return rows


def measure_running(args: argparse.Namespace, sizes: list[int]) -> list[tuple]:
    """The same load against a webhook started elsewhere (`--url`, `--ca`)."""
    wrk = ensure_wrk()
    ctx = ssl.create_default_context(cafile=args.ca)
    with tempfile.TemporaryDirectory(prefix="injector-bench-") as tmp:
        return measure(wrk, args.url, ctx, args, sizes, Path(tmp), args.pid)


def serve_executable() -> str:
    """`pod-identity-injector` of this interpreter's venv."""
    return shutil.which("pod-identity-injector", path=str(Path(sys.executable).parent)) or "pod-identity-injector"


def standalone_serve(exe: str, work: Path, *flags: str) -> tuple[list[str], int]:
    """The command of `serve` on 127.0.0.1 with certificates made in `work` and SERVICE_ACCOUNT
    from a file there (no API server), then `flags`; and the free port it will listen on."""
    port = free_port()
    subprocess.run([exe, "certs", "--out-dir", str(work / "certs"), "--ip", "127.0.0.1"],
                   check=True, stdout=subprocess.DEVNULL)
    (work / "sa.json").write_bytes(orjson.dumps(SERVICE_ACCOUNT))
    return [exe, "serve", "--port", str(port), "--metrics-port", str(free_port()),
            "--bind-address", "127.0.0.1", "--tls-cert", str(work / "certs/tls.crt"),
            "--tls-key", str(work / "certs/tls.key"), "--service-account", str(work / "sa.json"), *flags], port


def serve_and_measure(args: argparse.Namespace, sizes: list[int]) -> list[tuple]:
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="injector-bench-") as tmp:
        work = Path(tmp)
        command, port = standalone_serve(serve_executable(), work, "--workers", str(args.workers),
                                         "--log-format", "json", *args.serve_args)
        log = open(work / "server.log", "wb")  # noqa: SIM115 - closed with the directory
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            ctx = ssl.create_default_context(cafile=str(work / "certs/ca.crt"))
            wait_ready(f"https://127.0.0.1:{port}/readyz", ctx, server)
            return measure(wrk, f"https://127.0.0.1:{port}/mutate", ctx, args, sizes, work, server.pid)
        finally:
            server.terminate()
            server.wait(30)


def wait_ready(url: str, ctx: ssl.SSLContext, server: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"serve did not become ready in {timeout:g} s")


def check_response(url: str, body: bytes, ctx: ssl.SSLContext) -> None:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
        answer = json.load(resp)["response"]
    if not (answer["allowed"] and answer.get("patchType") == "JSONPatch"):
        sys.exit(f"unexpected answer from /mutate: {answer}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=0, help="serve --workers (0: one per CPU)")
    parser.add_argument("--sizes", default="1,3,10", help="containers per pod")
    parser.add_argument("--only-inprocess", action="store_true")
    parser.add_argument("--url", help="drive this already running webhook's /mutate instead of starting serve")
    parser.add_argument("--ca", help="CA file that verifies --url's certificate (default: the system's)")
    parser.add_argument("--pid", type=int, help="with --url: the webhook's process, whose tree's CPU is counted")
    parser.add_argument("serve_args", nargs="*", help="extra flags for serve (after --)")
    args = parser.parse_args()
    if args.url and args.serve_args:
        parser.error("flags for serve make no sense with --url")
    if args.ca and not args.url:
        parser.error("--ca goes with --url")
    if args.pid is not None and not args.url:
        parser.error("--pid goes with --url (serve's own process is measured without it)")
    if args.pid is not None and not os.path.exists(f"/proc/{args.pid}/stat"):
        parser.error(f"--pid {args.pid}: no such process")
    sizes = [int(s) for s in args.sizes.split(",")]

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {interpreter()}, {platform.platform()}")
    print("\nin-process (one core), calls/s")
    print(f"{'containers':>10} {'planner':>12} {'decode+decide+encode':>22}")
    for size, plan_rate, full_rate in inprocess(sizes, 2.0):
        print(f"{size:>10} {plan_rate:>12,.0f} {full_rate:>22,.0f}")
    if args.only_inprocess:
        return
    if args.url:
        print(f"\n{args.url} (already running; wrk -t{args.threads} -c{args.connections} -d{args.duration}s)")
    else:
        print(f"\nserve over HTTPS (wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
              f"workers={args.workers or 'auto'})")
    print(f"{'containers':>10} {'requests/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/admission':>17}  errors")
    for size, rps, p50, p99, errors, cpu_us in (measure_running if args.url else serve_and_measure)(args, sizes):
        cpu = "n/a" if math.isnan(cpu_us) else f"{cpu_us:,.0f}"
        print(f"{size:>10} {rps:>12,.0f} {p50:>8.2f} {p99:>8.2f} {cpu:>17}  {errors or 'none'}")


if __name__ == "__main__":
    main()
