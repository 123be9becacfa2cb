"""Image size and start-up, printed (never asserted): for the image of an OCI layout (each
architecture) and, with --docker-archive, another image to compare with (e.g. the one the
Dockerfile builds, `docker save`d).

    sudo .venv/bin/python benchmarks/image.py --layout DIR --ref 0.2.0-rc.1 [--docker-archive FILE] [--runs 7]

Per image: the uncompressed size (the layer tars' bytes, what `docker image ls` adds up), the
compressed size (what a node pulls), then on this machine's architecture, `runs` times each,
medians printed with the spread:
  * `version`: process start to exit: interpreter, imports of the CLI, one line printed;
  * `serve` ready: process start to the first 200 from /readyz over TLS, with the chart's
    read-only root and a ServiceAccount file as the identity source (no API server needed).
Each process runs through tools/image/run.py: read-only root, non-root, a fresh mount and PID
namespace, the image's environment; runs alternate between the images so that drift in the
machine's load falls on both. Needs root; the other architecture's image is only sized here.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools/image"))
import run as image_run  # noqa: E402

SERVICE_ACCOUNTS = ROOT / "examples/serviceaccount.yaml"


def layer_sizes(paths: list[Path]) -> tuple[int, int]:
    """(uncompressed, compressed) bytes of the given layer files."""
    raw = packed = 0
    for path in paths:
        packed += path.stat().st_size
        opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                raw += len(chunk)
    return raw, packed


def oci_sizes(layout: Path, ref: str) -> dict[str, tuple[int, int]]:
    index = json.loads((layout / "index.json").read_text())
    top = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == ref)
    manifests = json.loads((layout / "blobs" / top["digest"].replace(":", "/")).read_text())["manifests"]
    out = {}
    for entry in manifests:
        manifest = json.loads((layout / "blobs" / entry["digest"].replace(":", "/")).read_text())
        out[entry["platform"]["architecture"]] = layer_sizes(
            [layout / "blobs" / layer["digest"].replace(":", "/") for layer in manifest["layers"]])
    return out


def archive_sizes(archive: Path) -> tuple[int, int]:
    """A `docker save` archive holds its layers uncompressed; compressed is gzip -6 of each, as a push does."""
    raw = packed = 0
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))[0]
        for name in manifest["Layers"]:
            data = tar.extractfile(name).read()
            raw += len(data)
            packed += len(gzip.compress(data, compresslevel=6))
    return raw, packed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certs(directory: Path) -> None:
    subprocess.run([sys.executable, "-m", "injector.cli.main", "certs", "--out-dir", str(directory),
                    "--dns", "localhost", "--ip", "127.0.0.1"], check=True, capture_output=True, cwd=ROOT)
    for name in os.listdir(directory):
        os.chmod(directory / name, 0o644)  # the image's user reads them


def time_version(root: Path, config: dict) -> float:
    cmd, env = image_run.command(root, config, ["version"])
    started = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    took = time.perf_counter() - started
    if not out.stdout.strip():
        raise SystemExit(f"image: `version` printed nothing: {out.stderr}")
    return took


def time_ready(root: Path, config: dict, certs: Path) -> float:
    port, metrics = free_port(), free_port()
    volumes = [(str(certs), "/etc/webhook/certs"), (str(SERVICE_ACCOUNTS), "/etc/webhook/serviceaccounts.yaml")]
    cmd, env = image_run.command(root, config, [
        "serve", f"--port={port}", f"--metrics-port={metrics}", "--bind-address=127.0.0.1",
        "--tls-cert=/etc/webhook/certs/tls.crt", "--tls-key=/etc/webhook/certs/tls.key",
        "--service-account=/etc/webhook/serviceaccounts.yaml"], volumes=volumes)
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"image: serve exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", context=context, timeout=1) as r:
                if r.status == 200:
                    return time.perf_counter() - started
            if time.perf_counter() - started > 60:
                raise SystemExit("image: serve not ready after 60 s")
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def prepare_mounts(root: Path, config: dict, certs: Path) -> None:
    image_run.prepare(root, config, [(str(certs), "/etc/webhook/certs"),
                                     (str(SERVICE_ACCOUNTS), "/etc/webhook/serviceaccounts.yaml")])


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f}, n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", type=Path, required=True)
    parser.add_argument("--ref", required=True, help="the index's tag in the layout")
    parser.add_argument("--docker-archive", type=Path, help="an image to compare with (docker save)")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("image: needs root (tools/image/run.py)")
    print(f"# {args.layout} {args.ref}; machine {os.uname().machine}, {os.cpu_count()} cores")
    for arch, (raw, packed) in sorted(oci_sizes(args.layout, args.ref).items()):
        print(f"size  layout {arch:6} uncompressed {raw / 1e6:6.1f} MB  compressed {packed / 1e6:5.1f} MB")
    if args.docker_archive:
        raw, packed = archive_sizes(args.docker_archive)
        print(f"size  archive {'':5} uncompressed {raw / 1e6:6.1f} MB  compressed {packed / 1e6:5.1f} MB "
              f"({args.docker_archive.name})")
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp, contextlib.ExitStack() as stack:
        certs = Path(tmp) / "certs"
        certs.mkdir()
        make_certs(certs)
        images = {"layout": stack.enter_context(image_run.unpacked(layout=args.layout, ref=args.ref))}
        if args.docker_archive:
            images["archive"] = stack.enter_context(image_run.unpacked(docker_archive=args.docker_archive))
        for root, config in images.values():
            prepare_mounts(root, config, certs)
        results: dict[str, dict[str, list[float]]] = {name: {"version": [], "ready": []} for name in images}
        for root, config in images.values():  # one warm-up each: the page cache
            time_version(root, config)
        for _ in range(args.runs):
            for name, (root, config) in images.items():
                results[name]["version"].append(time_version(root, config))
                results[name]["ready"].append(time_ready(root, config, certs))
        for name, figures in results.items():
            print(f"start {name:7} version {spread(figures['version'])}")
            print(f"start {name:7} ready   {spread(figures['ready'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
