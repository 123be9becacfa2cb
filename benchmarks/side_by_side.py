"""Side by side: the Go webhook and `serve` under the same wrk load, in alternating short rounds.

On a shared virtual machine the speed of the same process drifts by ±20 % within a minute, so
one long run of each, one after the other, compares two moments as much as two programs. Here
every webhook runs all the time (idle when not measured), and each round drives each of them
for --seconds in turn, the order rotated from round to round; the figures are summed over the
rounds (requests, CPU of the process tree from /proc) and the p99 is the median of the
rounds'. Ratios against the Go webhook are printed per pod size.

The webhooks watch one local kube-apiserver (tests/e2e/plane.py) holding the ServiceAccount of
benchmarks/bench.py. `serve` runs with the chart's flags (benchmarks/scale.py), once per
--workers value. Prints numbers; asserts nothing.

Usage: `python benchmarks/side_by_side.py --go-webhook PATH [--rounds 6] [--seconds 4]
[--containers 1,3,10] [--workers 1,2]`.
"""

from __future__ import annotations

import argparse
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import orjson  # noqa: E402
from bench import check_response, cpu_seconds, ensure_wrk, free_port, interpreter, review, run_wrk  # noqa: E402
from scale import Creator, Probe, go_webhook, patched, pss_mib, serve_webhook, wait_for  # noqa: E402

from tests.e2e.plane import find_binary, start_control_plane  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--go-webhook", required=True, help="the Go webhook's binary")
    parser.add_argument("--go-label", default="Go webhook")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=4, help="wrk seconds per webhook per round")
    parser.add_argument("--containers", default="1,3,10")
    parser.add_argument("--workers", default="1,2", help="serve --workers values, each its own process")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    wrk = ensure_wrk()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
          f"commit {commit.stdout.strip()}; {interpreter()};\n{args.rounds} rounds of {args.seconds} s per webhook "
          "and size, "
          f"wrk -t{args.threads} -c{args.connections}", flush=True)
    with tempfile.TemporaryDirectory(prefix="injector-side-by-side-") as tmp:
        work = Path(tmp)
        exe = str(Path(sys.executable).parent / "pod-identity-injector")
        subprocess.run([exe, "certs", "--out-dir", str(work / "certs"), "--ip", "127.0.0.1"], check=True,
                       stdout=subprocess.DEVNULL)
        ctx = ssl.create_default_context(cafile=str(work / "certs/ca.crt"))
        plane = start_control_plane(find_binary(), work / "plane")
        running: list[tuple[str, subprocess.Popen, int]] = []
        try:
            Creator(plane).namespaces()
            hooks = [serve_webhook(exe, work, plane, w) for w in args.workers.split(",")]
            hooks.append(go_webhook(args.go_webhook, args.go_label, work, plane))
            for hook in hooks:
                port, metrics_port = free_port(), free_port()
                log_path = work / f"{hook.log_name}.log"
                log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
                proc = subprocess.Popen(hook.command(port, metrics_port), stdout=subprocess.DEVNULL, stderr=log)
                running.append((hook.label, proc, port))
                wait_for(proc, {"patched": Probe(port, ctx, "POST", "/mutate", orjson.dumps(review(1)), patched)},
                         time.monotonic(), log_path, {})
            rows = []
            for containers in (int(c) for c in args.containers.split(",")):
                body = orjson.dumps(review(containers))
                totals = {label: {"requests": 0.0, "cpu": 0.0, "p99": []} for label, _, _ in running}
                for _, _, port in running:  # warm-up, not counted
                    check_response(f"https://127.0.0.1:{port}/mutate", body, ctx)
                    run_wrk(wrk, f"https://127.0.0.1:{port}/mutate", body, work, 1, args.connections, args.threads)
                for round_ in range(args.rounds):
                    shift = round_ % len(running)
                    for label, proc, port in running[shift:] + running[:shift]:
                        before = cpu_seconds(proc.pid)
                        rps, _, p99, errors, _ = run_wrk(wrk, f"https://127.0.0.1:{port}/mutate", body, work,
                                                         args.seconds, args.connections, args.threads)
                        if errors:
                            print(f"  {label}: {errors}", flush=True)
                        totals[label]["requests"] += rps * args.seconds
                        totals[label]["cpu"] += cpu_seconds(proc.pid) - before
                        totals[label]["p99"].append(p99)
                go = totals[args.go_label]
                for label, proc, _ in running:
                    t = totals[label]
                    rows.append({
                        "containers": containers, "label": label,
                        "rps": t["requests"] / (args.rounds * args.seconds),
                        "cpu_us": t["cpu"] * 1e6 / t["requests"], "p99": statistics.median(t["p99"]),
                        "rps_ratio": t["requests"] / go["requests"],
                        "cpu_ratio": (t["cpu"] / t["requests"]) / (go["cpu"] / go["requests"]),
                        "pss": pss_mib(proc.pid)})
                    print(orjson.dumps(rows[-1]).decode(), flush=True)
        finally:
            for _, proc, _ in running:
                proc.terminate()
            for _, proc, _ in running:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            plane.stop()
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")
    print("| containers | webhook | admissions/s | × Go | CPU µs/admission | × Go | p99 (median of rounds) "
          "| PSS after |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['containers']} | {row['label']} | {row['rps']:,.0f} | {row['rps_ratio']:.2f} "
              f"| {row['cpu_us']:.0f} | {row['cpu_ratio']:.2f} | {row['p99']:.1f} ms | {row['pss']:.0f} MiB |")


if __name__ == "__main__":
    main()
