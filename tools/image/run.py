#!/usr/bin/env python3
"""Runs a command of an image without a container engine: its layers unpacked into a directory,
which becomes the read-only root of a private mount namespace (tmpfs /tmp, /proc, the host's
/dev), entered with chroot as the image's user, with the image's environment. An image of another
architecture runs under qemu-user (Debian's qemu-user-static: the static emulator is bind-mounted
into the root, nothing is registered with the kernel's binfmt_misc).

    tools/image/run.py --layout DIR --ref TAG [--] [ARGS...]       (an OCI layout, e.g. from assemble.py)
    tools/image/run.py --docker-archive FILE [--] [ARGS...]        (`docker save` output)
    ... --volume HOST_PATH:IMAGE_PATH                             (bound read-only; repeatable)

ARGS replace the image's CMD (the entrypoint stays); `--entrypoint PATH` replaces that too. The
network is the caller's. Needs root (unshare, mount, chroot). Exit status: the command's.
As a module: `unpacked(...)` gives the root directory and the image's config, `command(...)`
the argv that runs ARGS in it.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

QEMU = {"arm64": "qemu-aarch64-static", "amd64": "qemu-x86_64-static"}
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / digest.replace(":", "/")


def oci_image(layout: Path, ref: str) -> tuple[dict, list[Path]]:
    """The config and layer files of the manifest tagged `ref` (an index tag needs --arch: the host's)."""
    index = json.loads((layout / "index.json").read_text())
    found = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref]
    if not found:
        raise SystemExit(f"run: no {ref!r} in {layout}")
    manifest = json.loads(_blob(layout, found[0]["digest"]).read_text())
    if "manifests" in manifest:  # an index: the host's architecture
        chosen = [m for m in manifest["manifests"] if m["platform"]["architecture"] == HOST_ARCH]
        manifest = json.loads(_blob(layout, chosen[0]["digest"]).read_text())
    config = json.loads(_blob(layout, manifest["config"]["digest"]).read_text())
    return config, [_blob(layout, layer["digest"]) for layer in manifest["layers"]]


def docker_archive_image(archive: Path, work: Path) -> tuple[dict, list[Path]]:
    with tarfile.open(archive) as tar:
        tar.extractall(work / "archive", filter="tar")
    manifest = json.loads((work / "archive/manifest.json").read_text())[0]
    config = json.loads((work / "archive" / manifest["Config"]).read_text())
    return config, [work / "archive" / layer for layer in manifest["Layers"]]


def unpack(layers: list[Path], root: Path) -> None:
    """Layers in order, whiteouts applied (the images here have none, but `docker save` may)."""
    for layer in layers:
        opener = gzip.open if layer.read_bytes()[:2] == b"\x1f\x8b" else open
        with opener(layer, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for member in tar:
                name = Path(member.name)
                if name.name.startswith(".wh."):
                    target = root / name.parent / name.name[4:]
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    elif target.exists() or target.is_symlink():
                        target.unlink()
                    continue
                tar.extract(member, root, filter="tar", numeric_owner=True)


@contextlib.contextmanager
def unpacked(*, layout: Path | None = None, ref: str = "", docker_archive: Path | None = None,
             base: Path | None = None) -> Iterator[tuple[Path, dict]]:
    """The image's root directory (removed afterwards) and its config."""
    with tempfile.TemporaryDirectory(prefix="image-run-", dir=base) as tmp:
        work = Path(tmp)
        if layout:
            config, layers = oci_image(layout, ref)
        else:
            config, layers = docker_archive_image(docker_archive, work)
        root = work / "root"
        root.mkdir()
        unpack(layers, root)
        os.chmod(root, 0o755)
        yield root, config


def command(root: Path, config: dict, args: list[str], entrypoint: list[str] | None = None,
            volumes: list[tuple[str, str]] = ()) -> tuple[list[str], dict]:
    """argv and environment that run the image's entrypoint with `args` inside `root`: a private
    mount namespace in which `root` is mounted read-only (host paths bound read-only at the
    `volumes` targets, which prepare() made), then chroot as the image's user."""
    cfg = config.get("config", {})
    argv = [*(entrypoint if entrypoint is not None else cfg.get("Entrypoint") or []),
            *(args if args else cfg.get("Cmd") or [])]
    arch = config.get("architecture", HOST_ARCH)
    mounts = [f"mount --bind {shlex.quote(str(root))} {shlex.quote(str(root))}",
              f"mount -o remount,bind,ro {shlex.quote(str(root))}",
              f"mount -t tmpfs -o mode=1777 tmpfs {shlex.quote(str(root / 'tmp'))}",
              f"mount -t proc proc {shlex.quote(str(root / 'proc'))}",
              f"mount --rbind /dev {shlex.quote(str(root / 'dev'))}"]
    for source, target in volumes:
        inside = shlex.quote(str(root / target.lstrip("/")))
        mounts += [f"mount --bind {shlex.quote(source)} {inside}", f"mount -o remount,bind,ro {inside}"]
    if arch != HOST_ARCH:
        qemu = shutil.which(QEMU[arch])
        if not qemu:
            raise SystemExit(f"run: {arch} needs {QEMU[arch]} (Debian: apt-get install qemu-user-static)")
        # qemu-user runs ELF files only: the entrypoint's #! line is read here. The emulator is
        # bind-mounted over an empty file on the root's tmpfs-free spot, /qemu (made below).
        first = (root / argv[0].lstrip("/")).read_bytes()[:256] if (root / argv[0].lstrip("/")).exists() else b""
        if first.startswith(b"#!"):
            argv = [*first[2:].split(b"\n")[0].decode().split(), *argv]
        mounts.append(f"mount --bind {shlex.quote(qemu)} {shlex.quote(str(root / '.qemu'))}")
        argv = ["/.qemu", *argv]
    user = cfg.get("User") or "0:0"
    uid, _, gid = user.partition(":")
    script = " && ".join([*mounts, f"exec chroot --userspec={uid}:{gid or uid} {shlex.quote(str(root))} "
                          + " ".join(shlex.quote(a) for a in argv)])
    env = dict(item.split("=", 1) for item in cfg.get("Env", []))
    # As containerd and Docker do: HOME from the image's /etc/passwd entry of the user, else /.
    if "HOME" not in env:
        env["HOME"] = "/"
        with contextlib.suppress(OSError):
            for line in (root / "etc/passwd").read_text().splitlines():
                fields = line.split(":")
                if len(fields) > 5 and fields[2] == uid:
                    env["HOME"] = fields[5]
    return ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc", "sh", "-c",
            script], env


def prepare(root: Path, config: dict, volumes: list[tuple[str, str]] = ()) -> None:
    """Mount points the runner needs that the image may lack."""
    for directory in ("tmp", "proc", "dev"):
        (root / directory).mkdir(exist_ok=True)
    for source, target in volumes:
        inside = root / target.lstrip("/")
        inside.parent.mkdir(parents=True, exist_ok=True)
        if Path(source).is_dir():
            inside.mkdir(exist_ok=True)
        else:
            inside.touch()
    if config.get("architecture", HOST_ARCH) != HOST_ARCH:
        (root / ".qemu").touch()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", type=Path)
    parser.add_argument("--ref", default="")
    parser.add_argument("--docker-archive", type=Path)
    parser.add_argument("--entrypoint")
    parser.add_argument("--volume", action="append", default=[], metavar="HOST:PATH", help="bind HOST read-only")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run: needs root (mount namespace, chroot)")
    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    with unpacked(layout=args.layout, ref=args.ref, docker_archive=args.docker_archive) as (root, config):
        volumes = [tuple(v.split(":", 1)) for v in args.volume]
        prepare(root, config, volumes)
        cmd, env = command(root, config, rest, [args.entrypoint] if args.entrypoint else None, volumes)
        return subprocess.run(cmd, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
