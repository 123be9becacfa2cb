#!/usr/bin/env python3
"""A throwaway container registry: Debian's `docker-registry` (distribution 2.8) with its default
configuration but for where it listens and stores, optionally with TLS.

    registry.py start DIR [--addr 127.0.0.1:0] [--tls-cert FILE --tls-key FILE]   prints host:port
    registry.py stop DIR

DIR holds its configuration, storage, log and PID file; `stop` ends the process it started (by
that PID) and removes DIR. Port 0 picks a free port. Installs Debian's docker-registry when
missing (root). As a module: start(dir, addr, tls) -> "host:port", stop(dir).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BINARY = "docker-registry"


def ensure_installed() -> str:
    path = shutil.which(BINARY) or "/usr/bin/docker-registry"
    if not Path(path).exists():
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker-registry"],
                       check=False, env=env, stdout=subprocess.DEVNULL)
        if not Path(path).exists():
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
            subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker-registry"],
                           check=True, env=env, stdout=subprocess.DEVNULL)
    return path


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start(directory: Path, addr: str = "127.0.0.1:0", tls: tuple[str, str] | None = None,
          ca: str | None = None) -> str:
    binary = ensure_installed()
    directory.mkdir(parents=True, exist_ok=True)
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if port in ("", "0"):
        port = str(free_port(host))
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    tls_block = f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else ""
    (directory / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: warn\n  fields:\n    service: registry\n"
        f"storage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: {directory / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: {listen}\n{tls_block}  headers:\n    X-Content-Type-Options: [nosniff]\n"
        "health:\n  storagedriver:\n    enabled: true\n    interval: 10s\n    threshold: 3\n")
    with open(directory / "registry.log", "ab") as out:
        proc = subprocess.Popen([binary, "serve", str(directory / "config.yml")], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    (directory / "pid").write_text(str(proc.pid))
    scheme = "https" if tls else "http"
    context = ssl.create_default_context(cafile=ca) if tls else None
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"registry: exited {proc.returncode}: {(directory / 'registry.log').read_text()[-2000:]}")
        with contextlib.suppress(OSError), \
                urllib.request.urlopen(f"{scheme}://{listen}/v2/", context=context, timeout=2) as response:
            if response.status == 200:
                return listen
        if time.monotonic() > deadline:
            stop(directory)
            raise SystemExit(f"registry: {listen} not answering after 30 s")
        time.sleep(0.1)


def stop(directory: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        pid = int((directory / "pid").read_text())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("start")
    up.add_argument("dir", type=Path)
    up.add_argument("--addr", default="127.0.0.1:0")
    up.add_argument("--tls-cert")
    up.add_argument("--tls-key")
    up.add_argument("--ca", help="CA to check the TLS registry with while waiting for it")
    down = sub.add_parser("stop")
    down.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "start":
        tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
        print(start(args.dir.resolve(), args.addr, tls, args.ca))
    else:
        stop(args.dir.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
