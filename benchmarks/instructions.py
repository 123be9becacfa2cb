"""Instructions per admission, counted by valgrind's callgrind: a figure that does not drift.

On a shared virtual machine the time the same code takes differs by ±20 % from one minute to
the next, so a change worth a few per cent cannot be seen in µs. The number of instructions
executed can: this script runs the in-process admission path of benchmarks/bench.py N and N+K
times in a fresh interpreter under callgrind and prints the difference divided by K, for the
whole path and, with --parts, for each step of it. The hash seed is fixed, so a rerun prints
the same numbers to within a few hundred instructions.

It counts our Python code and the C it calls (orjson, base64), not the HTTP server or TLS.
`--server` counts those too: a whole `serve --workers 1` under callgrind, its instrumentation
switched on (callgrind_control) only while K keep-alive HTTPS requests are answered, after N
to warm up; user space only, the kernel's socket work is not in it. Prints numbers; asserts
nothing.

Usage: `python benchmarks/instructions.py [--sizes 1,3,10] [--parts] [--server] [--tree DIR]`.
`--tree DIR` counts the `injector` package in DIR instead, such as an older commit unpacked
with `git archive REV injector | tar -x -C DIR`. valgrind comes from Debian's `valgrind`
package (installed here when missing and running as root).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("decode", "type-check", "resolve", "plan", "decide", "encode", "log line")
WHOLE = "whole path"


def admission_steps(tree: str | None, containers: int) -> dict[str, object]:
    """Each step of one admission as a callable, and the whole path (WHOLE), as `/mutate` runs them."""
    if tree:
        sys.path.insert(0, tree)
    import io

    import injector  # first, so that bench.py's own path entry does not replace the --tree one

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import orjson
    from bench import bench_store, review

    from injector.core.decision import decide
    from injector.core.planner import plan_mutation
    from injector.core.review import check_pod, decode_json, encode_response, parse_review
    from injector.server import logs as logging
    from injector.server import routes as app

    assert Path(injector.__file__).is_relative_to(tree or ROOT), injector.__file__
    sys.stderr = io.TextIOWrapper(open(os.devnull, "wb"))  # noqa: SIM115 - the log lines go nowhere, until exit
    logging.configure_logging("json")
    settings, store = bench_store()
    body = orjson.dumps(review(containers))
    document = decode_json(body)
    envelope, request = parse_review(document)
    resolution = store.resolve("bench", "bench-app")
    decision = decide(request, resolution, settings)

    def log_line() -> None:
        app._log_decision(envelope, request, decision, 0.0001)
        logging.flush_logs()

    def whole() -> None:
        envelope, request = parse_review(decode_json(body))
        decision = decide(request, store.resolve(request.namespace, request.service_account), settings)
        encode_response(envelope, True, decision.operations, None, decision.warnings)
        app._log_decision(envelope, request, decision, 0.0001)
        logging.flush_logs()

    return {
        "decode": lambda: decode_json(body),
        "type-check": lambda: check_pod(request.pod),
        "resolve": lambda: store.resolve("bench", "bench-app"),
        "plan": lambda: plan_mutation(request.pod, resolution.identity, settings),
        "decide": lambda: decide(request, resolution, settings),
        "encode": lambda: encode_response(envelope, True, decision.operations, None, decision.warnings),
        "log line": log_line,
        WHOLE: whole,
    }


def count(step: str, containers: int, calls: int, tree: str | None) -> int:
    """Instructions of a fresh interpreter that sets up and then calls `step` `calls` times."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
               "--child", step, str(containers), str(calls)] + (["--tree", tree] if tree else [])
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    for line in result.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split(":")[1])
    sys.exit(f"callgrind printed no count for {step}:\n{result.stderr[-2000:]}")


def count_server(containers: int, calls: int, warm: int, tree: str | None) -> int:
    """User-space instructions per admission of a whole serving process (see the docstring)."""
    import http.client
    import ssl
    import tempfile
    import time

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import orjson
    from bench import review, serve_executable, standalone_serve, wait_ready

    with tempfile.TemporaryDirectory(prefix="injector-instructions-") as tmp:
        work = Path(tmp)
        command, port = standalone_serve(serve_executable(), work, "--workers", "1", "--shutdown-delay", "0",
                                         "--log-format", "json")
        env = {**os.environ, "PYTHONHASHSEED": "0", **({"PYTHONPATH": tree} if tree else {})}
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={work}/callgrind.out",
             sys.executable, *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            ctx = ssl.create_default_context(cafile=str(work / "certs/ca.crt"))
            wait_ready(f"https://127.0.0.1:{port}/readyz", ctx, server, timeout=300)
            body = orjson.dumps(review(containers))
            connections = [http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=120) for _ in range(4)]

            def admissions(count: int) -> None:
                for n in range(count):
                    connection = connections[n % len(connections)]
                    connection.request("POST", "/mutate", body, {"Content-Type": "application/json"})
                    answer = connection.getresponse()
                    answer.read()
                    if answer.status != 200:
                        sys.exit(f"/mutate answered {answer.status}")

            admissions(warm)
            subprocess.run(["callgrind_control", "--instr=on", str(server.pid)], check=True,
                           capture_output=True)
            admissions(calls)
            subprocess.run(["callgrind_control", "--instr=off", str(server.pid)], check=True,
                           capture_output=True)
        finally:
            server.terminate()
            server.wait(60)
        time.sleep(0.1)
        total = 0
        for dump in work.glob("callgrind.out*"):
            for line in dump.read_text().splitlines():
                if line.startswith("totals:"):
                    total += int(line.split()[1])
        return total // calls


def ensure_valgrind() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench import ensure_tool

    ensure_tool("valgrind", "valgrind")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,3,10", help="containers per pod")
    parser.add_argument("--parts", action="store_true", help="also count each step on its own")
    parser.add_argument("--tree", help="a directory holding the injector package to count instead")
    parser.add_argument("--calls", type=int, default=1000, help="K: the calls the difference is taken over")
    parser.add_argument("--server", action="store_true", help="count a whole serving process instead")
    parser.add_argument("--child", nargs=3, metavar=("STEP", "CONTAINERS", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    tree = str(Path(args.tree).resolve()) if args.tree else None
    if args.child:
        step, containers, calls = args.child[0], int(args.child[1]), int(args.child[2])
        function = admission_steps(tree, containers)[step]
        for _ in range(calls):
            function()
        return
    ensure_valgrind()
    if args.server:
        print(f"user-space instructions per admission of serve --workers 1 (callgrind, {args.calls} requests); "
              f"code: {tree or ROOT}")
        for size in (int(s) for s in args.sizes.split(",")):
            print(f"{size:>10} containers  {count_server(size, args.calls, 100, tree):>11,}", flush=True)
        return
    steps = [*PARTS, WHOLE] if args.parts else [WHOLE]
    print(f"instructions per call (callgrind, K={args.calls}); code: {tree or ROOT}")
    print(f"{'containers':>10}  " + "  ".join(f"{step:>11}" for step in steps))
    for size in (int(s) for s in args.sizes.split(",")):
        warm = 100  # N: set-up, imports and the first calls cancel out in the difference
        row = [(count(step, size, warm + args.calls, tree) - count(step, size, warm, tree)) // args.calls
               for step in steps]
        print(f"{size:>10}  " + "  ".join(f"{value:>11,}" for value in row), flush=True)


if __name__ == "__main__":
    main()
