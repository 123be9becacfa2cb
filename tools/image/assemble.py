#!/usr/bin/env python3
"""Assembles the release image for linux/amd64 and linux/arm64 without a container engine.

    python3 tools/image/assemble.py --out DIR [--arch amd64 --arch arm64] [--version V] [--commit SHA]

writes an OCI image layout to DIR: one image index tagged VERSION that holds a manifest per
architecture (each also tagged VERSION-ARCH), nothing else. Every step is cross-assembly: no
binary of the target architecture runs, so arm64 builds on an amd64 machine (and the other way
round) with no emulator.

What goes in (docs/image.md says why):
  * Debian bookworm's python3.11 and the shared libraries it links, taken from the .deb files
    of bookworm, bookworm-updates and bookworm-security for the target architecture: apt
    resolves and verifies them in a private apt root (nothing of the host's apt state is
    touched), `dpkg-deb -x` unpacks them. Packages that only serve maintainer scripts (dpkg,
    debconf, tar, mawk, openssl's command) are left out; so are documentation, man pages,
    locales and every executable but python3.11. Each package shipped is recorded in
    /var/lib/dpkg/status.d/NAME, as distroless images do, so SBOM tools list it.
  * Our wheel and the wheels of tools/image/requirements.txt for the target platform (pip
    downloads manylinux wheels only, never builds), in a virtualenv at /opt/venv; debug
    symbols stripped from the extension modules; bytecode compiled ahead of time
    (unchecked-hash .pyc: the root filesystem is read-only, nothing can be cached at run time).
  * /etc/passwd and /etc/group with root and nonroot (65532), the CA bundle built from the
    ca-certificates package, /tmp, and the two entry points: /opt/venv/bin/pod-identity-injector
    and /webhook (the Go webhook's path).
No shell, no package manager. Three layers: the Debian files, the third-party wheels, ours.

Caches (apt lists and .deb files, pip's) live in ${XDG_CACHE_HOME:-~/.cache}/pod-identity-injector-release.
Needs: python3.11 (the bytecode must match the image's interpreter), dpkg-deb, apt-get, strip
(binutils; for arm64 aarch64-linux-gnu-strip from binutils-aarch64-linux-gnu, installed when
missing on Debian). Progress on stderr; stdout: the layout's path.
"""

from __future__ import annotations

import argparse
import compileall
import gzip
import hashlib
import json
import os
import platform
import py_compile
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("POD_IDENTITY_RELEASE_CACHE")
             or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pod-identity-injector-release")

SUITE = "bookworm"
PYTHON = "python3.11"
# What the interpreter needs; apt adds their dependencies.
ROOT_PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "ca-certificates", "netbase", "base-files")
# Needed only by maintainer scripts, which never run in the image (the files they would make,
# the CA bundle and the bytecode, are made here): their dependencies are not followed either.
LEFT_OUT = frozenset({"dpkg", "debconf", "tar", "mawk", "openssl", "readline-common",
                      # ... and libraries that only optional standard-library modules link, modules the
                      # webhook never imports (dbm.gnu/ndbm, sqlite3, curses, readline, nis): they
                      # go too (STDLIB_PRUNED), so that `import sqlite3` fails plainly, as on a build
                      # without them. The interpreter itself links only libc, libm, zlib and expat.
                      "libdb5.3", "libsqlite3-0", "libncursesw6", "libtinfo6", "libreadline8", "libnsl2",
                      "libtirpc3"})
# Standard-library modules that go: those linking a library left out above, test-only extension
# modules, the test package and interactive-only data (`help()` topics, turtle, ensurepip).
STDLIB_PRUNED = ("lib-dynload/_dbm.", "lib-dynload/_sqlite3.", "lib-dynload/_curses.", "lib-dynload/_curses_panel.",
                 "lib-dynload/readline.", "lib-dynload/nis.", "lib-dynload/_test", "lib-dynload/_ctypes_test.",
                 "lib-dynload/_xxtestfuzz.", "lib-dynload/xxlimited", "sqlite3/", "curses/", "test/",
                 "pydoc_data/", "turtle.py", "turtledemo/", "idlelib/", "tkinter/", "lib2to3/", "ensurepip/",
                 "distutils/", "_distutils_system_mod.py", "EXTERNALLY-MANAGED")
# The generated Kubernetes API client (every API group's models and operations, 20 MB of source
# for 21 MB of bytecode) ships as bytecode only; its tracebacks keep file names and line numbers.
SOURCELESS = ("kubernetes_asyncio/client/api", "kubernetes_asyncio/client/models")
# Unpacked paths that go (prefix match, relative to the root); copyright files stay.
PRUNED = ("usr/share/man/", "usr/share/info/", "usr/share/locale/", "usr/share/lintian/", "usr/share/bug/",
          "usr/share/doc-base/", "usr/share/menu/", "usr/share/pixmaps/", "usr/share/applications/",
          "usr/share/binfmts/", "usr/share/readline/", "usr/share/gcc/", "usr/share/gdb/",
          "usr/share/python3/", "usr/share/debconf/", "usr/share/base-files/", "usr/share/common-licenses/",
          "usr/sbin/", "sbin/", "usr/libexec/", "etc/init.d/", "etc/default/", "etc/cron.daily/",
          "etc/update-motd.d/", "etc/profile.d/", "etc/skel/", "etc/ld.so.conf.d/", "var/lib/dpkg/info/")
# Architecture names: Debian's, the OCI platform's, the wheels' and the multiarch triplet's.
ARCHES = {
    "amd64": {"oci": ("amd64", None), "machine": "x86_64", "triplet": "x86_64-linux-gnu"},
    "arm64": {"oci": ("arm64", "v8"), "machine": "aarch64", "triplet": "aarch64-linux-gnu"},
}
MANYLINUX = ("manylinux_2_36", "manylinux_2_34", "manylinux_2_31", "manylinux_2_28", "manylinux_2_17",
             "manylinux2014")
NONROOT = 65532
# The interpreter may bind ports below 1024 as nonroot: the file capability cap_net_bind_service=+p
# (struct vfs_cap_data, revision 2, permitted only: the kernel never refuses the exec where the
# container's bounding set lacks it; the webhook makes it effective when a port below 1024 is asked
# for, injector/server/ports.py). A PAX xattr record, as docker and containerd write and apply it.
FILE_CAPABILITIES = {f"usr/bin/{PYTHON}": struct.pack("<5I", 0x02000000, 1 << 10, 0, 0, 0)}
VENV = "opt/venv"
SITE = f"{VENV}/lib/{PYTHON}/site-packages"
ENV = ["PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
       "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"]
ENTRYPOINT = ["/opt/venv/bin/pod-identity-injector"]
CMD = ["serve", "--port=8443", "--tls-cert=/etc/webhook/certs/tls.crt", "--tls-key=/etc/webhook/certs/tls.key"]
SCRIPT = """#!/opt/venv/bin/python3
import sys

from injector.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
"""


def log(message: str) -> None:
    print(f"[assemble] {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("check", True)
    return subprocess.run(cmd, **kwargs)


# -- version -----------------------------------------------------------------------------------
def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def git_commit() -> str:
    """HEAD's commit, with -dirty when tracked files differ from it; "" outside a git checkout."""
    try:
        sha = run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--"], check=False).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return ""
    return sha + ("-dirty" if dirty else "")


def source_date_epoch() -> int:
    """Timestamps inside the image: SOURCE_DATE_EPOCH, else HEAD's commit time."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    out = run(["git", "-C", str(REPO), "log", "-1", "--format=%ct"], check=False, capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


# -- Debian packages ---------------------------------------------------------------------------
def apt_mirror() -> tuple[str, str]:
    """The Debian mirror and security mirror: POD_IDENTITY_DEBIAN_MIRROR(_SECURITY), else the host's
    apt sources that serve bookworm and bookworm-security, else deb.debian.org."""
    found = {"main": os.environ.get("POD_IDENTITY_DEBIAN_MIRROR", ""),
             "security": os.environ.get("POD_IDENTITY_DEBIAN_SECURITY_MIRROR", "")}
    entries: list[tuple[str, list[str]]] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields = dict(re.findall(r"(?m)^(\w[\w-]*):\s*(.*)$", stanza))
            if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                entries += [(uri, fields.get("Suites", "").split()) for uri in fields.get("URIs", "").split()]
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        if path.is_file():
            for match in re.finditer(r"(?m)^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", path.read_text(errors="replace")):
                entries.append((match.group(1), [match.group(2)]))
    for uri, suites in entries:
        if SUITE in suites and not found["main"]:
            found["main"] = uri
        if f"{SUITE}-security" in suites and not found["security"]:
            found["security"] = uri
    return ((found["main"] or "http://deb.debian.org/debian").rstrip("/"),
            (found["security"] or "http://deb.debian.org/debian-security").rstrip("/"))


class Apt:
    """apt-get on a private root for one architecture: its own sources, lists, archive cache and an
    empty dpkg status, so that it resolves the full dependency closure of what is asked for."""

    KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

    def __init__(self, arch: str):
        self.arch = arch
        self.root = CACHE / "apt" / arch
        for sub in ("etc/apt/preferences.d", "etc/apt/apt.conf.d", "var/lib/apt/lists/partial",
                    "var/cache/apt/archives/partial", "var/lib/dpkg"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "var/lib/dpkg/status").write_text("")
        main, security = apt_mirror()
        opts = f"arch={arch} signed-by={self.KEYRING}"
        (self.root / "etc/apt/sources.list").write_text(
            f"deb [{opts}] {main} {SUITE} main\n"
            f"deb [{opts}] {main} {SUITE}-updates main\n"
            f"deb [{opts}] {security} {SUITE}-security main\n")

    def apt_get(self, *args: str, capture: bool = False) -> str:
        if not Path(self.KEYRING).exists():
            raise SystemExit(f"assemble: {self.KEYRING} is missing (Debian's debian-archive-keyring package)")
        cmd = ["apt-get", "-q", "-o", f"Dir={self.root}", "-o", f"Dir::State::status={self.root}/var/lib/dpkg/status",
               "-o", f"APT::Architecture={self.arch}", "-o", f"APT::Architectures::={self.arch}",
               "-o", "Dir::Etc::Trusted=/dev/null", "-o", "Dir::Etc::TrustedParts=/dev/null",
               "-o", "APT::Sandbox::User=root", "-o", "Debug::NoLocking=1",
               "-o", "APT::Install-Recommends=false", "-o", "APT::Get::AllowUnauthenticated=false", *args]
        result = run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"assemble: apt-get {' '.join(args)} ({self.arch}) failed:\n{result.stderr}")
        return result.stdout if capture else ""

    def fetch(self, packages: tuple[str, ...], refresh: bool) -> dict[str, Path]:
        """The .deb file of every package in the closure of `packages`, by package name."""
        lists = self.root / "var/lib/apt/lists"
        stale = not any(lists.glob("*_Packages*")) or refresh or \
            time.time() - max(p.stat().st_mtime for p in lists.glob("*_Packages*")) > 86400
        if stale:
            log(f"apt-get update ({self.arch})")
            self.apt_get("update")
        plan = self.apt_get("-s", "install", *packages, capture=True)
        wanted = re.findall(r"^Inst (\S+) \((\S+) ", plan, re.M)
        self.apt_get("-y", "--download-only", "install", *packages)
        archives = self.root / "var/cache/apt/archives"
        debs = {}
        for name, version in wanted:
            epochless = version.split(":", 1)[-1]
            found = [p for p in archives.glob(f"{name}_*.deb")
                     if p.name.split("_")[1].replace("%3a", ":").split(":", 1)[-1] == epochless]
            if not found:
                raise SystemExit(f"assemble: apt did not download {name} {version} ({self.arch})")
            debs[name] = found[0]
        return debs


def control(deb: Path) -> str:
    return run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True).stdout


def depends(fields: str) -> list[str]:
    """Package names from Depends and Pre-Depends (the first of each alternative, no versions)."""
    names = []
    for key in ("Pre-Depends", "Depends"):
        match = re.search(rf"^{key}: (.*(?:\n .*)*)", fields, re.M)
        if match:
            for item in match.group(1).replace("\n", " ").split(","):
                names.append(item.split("|")[0].split("(")[0].split(":")[0].strip())
    return names


def closure(debs: dict[str, Path]) -> dict[str, str]:
    """The packages the roots need, through dependencies, minus LEFT_OUT: name -> control fields."""
    fields = {name: control(deb) for name, deb in debs.items()}
    provides: dict[str, str] = {}
    for name, text in fields.items():
        match = re.search(r"^Provides: (.*)", text, re.M)
        for item in (match.group(1).split(",") if match else []):
            provides.setdefault(item.split("(")[0].strip(), name)
    chosen: dict[str, str] = {}
    todo = list(ROOT_PACKAGES)
    while todo:
        name = todo.pop()
        name = name if name in fields else provides.get(name, name)
        if name in chosen or name in LEFT_OUT:
            continue
        if name not in fields:
            raise SystemExit(f"assemble: {name} is needed but apt did not resolve it")
        chosen[name] = fields[name]
        todo.extend(depends(fields[name]))
    return chosen


def unpack_debian(root: Path, debs: dict[str, Path], chosen: dict[str, str]) -> None:
    for name in sorted(chosen):
        run(["dpkg-deb", "-x", str(debs[name]), str(root)])
    # usrmerge: bookworm's packages ship /lib, /bin, /sbin files; the image has the merged layout.
    for top in ("bin", "sbin", "lib", "lib64"):
        legacy, merged = root / top, root / "usr" / top
        if legacy.is_dir() and not legacy.is_symlink():
            merged.mkdir(parents=True, exist_ok=True)
            for entry in legacy.iterdir():
                target = merged / entry.name
                if entry.is_dir() and not entry.is_symlink() and target.is_dir():
                    shutil.copytree(entry, target, symlinks=True, dirs_exist_ok=True)
                    shutil.rmtree(entry)
                else:
                    entry.rename(target)
            legacy.rmdir()
            legacy.symlink_to(f"usr/{top}")
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        rel = path.relative_to(root).as_posix()
        doomed = any((rel + "/").startswith(prefix) for prefix in PRUNED)
        if rel.startswith("usr/share/doc/") and not (path.name == "copyright" or path.is_dir()):
            doomed = True
        if rel.startswith(("usr/bin/", "bin/")) and path.name != PYTHON:
            doomed = True
        if rel.startswith(f"usr/lib/{PYTHON}/") and rel[len(f"usr/lib/{PYTHON}/"):].startswith(STDLIB_PRUNED):
            doomed = True
        if "/gconv/" in f"/{rel}/" or rel.endswith("/gconv"):  # iconv modules: nothing here calls iconv
            doomed = True
        if doomed:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    # What dpkg would record: the status of each package, one file each (the distroless layout).
    status = root / "var/lib/dpkg/status.d"
    status.mkdir(parents=True, exist_ok=True)
    for name, text in chosen.items():
        lines = [line for line in text.rstrip("\n").split("\n")]
        lines.insert(1, "Status: install ok installed")
        (status / name).write_text("\n".join(lines) + "\n")


def ca_bundle(root: Path) -> None:
    """/etc/ssl/certs/ca-certificates.crt as update-ca-certificates makes it, from the package's
    certificates (every one of /usr/share/ca-certificates, which Debian enables by default)."""
    certs = sorted((root / "usr/share/ca-certificates").rglob("*.crt"))
    if not certs:
        raise SystemExit("assemble: the ca-certificates package brought no certificates")
    bundle = root / "etc/ssl/certs/ca-certificates.crt"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    bundle.write_text("".join(c.read_text().rstrip("\n") + "\n" for c in certs))
    cert_pem = root / "usr/lib/ssl/cert.pem"
    cert_pem.parent.mkdir(parents=True, exist_ok=True)
    if not cert_pem.is_symlink():
        cert_pem.symlink_to("/etc/ssl/certs/ca-certificates.crt")


def system_files(root: Path) -> None:
    etc = root / "etc"
    (etc / "passwd").write_text(f"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}:nonroot:"
                                f"/home/nonroot:/sbin/nologin\n")
    (etc / "group").write_text(f"root:x:0:\nnonroot:x:{NONROOT}:\n")
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
    for directory, mode in (("tmp", 0o1777), ("root", 0o700), ("home/nonroot", 0o700), ("etc/webhook/certs", 0o755)):
        (root / directory).mkdir(parents=True, exist_ok=True)
        os.chmod(root / directory, mode)


# -- Python ------------------------------------------------------------------------------------
def pip(*args: str) -> None:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               PIP_CACHE_DIR=str(CACHE / "pip"))
    run([sys.executable, "-m", "pip", "--quiet", *args], env=env)


def build_wheel(work: Path, version: str, commit: str) -> Path:
    """Our wheel, from a copy of the tracked sources with injector/_buildinfo.py written into it."""
    src = work / "src"
    files = run(["git", "-C", str(REPO), "ls-files", "-z", "--", "pyproject.toml", "README.md", "injector"],
                capture_output=True, check=False).stdout.split(b"\0")
    files = [f.decode() for f in files if f] or [
        str(p.relative_to(REPO)) for p in [REPO / "pyproject.toml", REPO / "README.md",
                                           *(REPO / "injector").rglob("*.py")]]
    for rel in files:
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    run([sys.executable, str(HERE.parent / "release" / "versions.py"), "buildinfo",
         "--commit", commit, "--out", str(src / "injector" / "_buildinfo.py")])
    out = work / "wheel"
    pip("wheel", "--no-deps", "--wheel-dir", str(out), str(src))
    wheels = list(out.glob("pod_identity_injector-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"assemble: expected one wheel, got {wheels}")
    log(f"built {wheels[0].name} (version {version}, commit {commit or 'unknown'})")
    return wheels[0]


def install_wheels(root: Path, arch: str, wheel: Path) -> None:
    """Our wheel and the pinned requirements, as manylinux wheels for the target platform."""
    machine = ARCHES[arch]["machine"]
    site = root / SITE
    platforms = [arg for tag in MANYLINUX for arg in ("--platform", f"{tag}_{machine}")]
    # --ignore-installed, --no-warn-conflicts: the host's packages are not the target's.
    pip("install", "--target", str(site), "--no-compile", "--no-warn-conflicts", "--ignore-installed",
        "--only-binary=:all:", *platforms,
        "--implementation", "cp", "--python-version", "3.11", "--abi", "cp311", "--abi", "abi3", "--abi", "none",
        "--requirement", str(HERE / "requirements.txt"), "--constraint", str(HERE.parent.parent / "constraints.txt"),
        str(wheel))
    # Not for the image: pip's console scripts (ours is written below), and files some wheels put at
    # the top of site-packages beside their packages.
    shutil.rmtree(site / "bin", ignore_errors=True)
    for entry in site.iterdir():
        if entry.is_file() and entry.suffix not in (".py", ".pth", ".so"):
            entry.unlink()
    for tests in [*site.glob("*/tests"), *site.glob("*/test")]:
        if tests.is_dir():
            shutil.rmtree(tests)
    (root / VENV / "bin").mkdir(parents=True, exist_ok=True)
    (root / VENV / "bin/python3").symlink_to(f"/usr/bin/{PYTHON}")
    (root / VENV / "bin/python").symlink_to("python3")
    (root / VENV / "lib64").symlink_to("lib")
    version = re.search(r"^Version: (\S+)", control_of(root, "libpython3.11-minimal"), re.M).group(1)
    (root / VENV / "pyvenv.cfg").write_text(
        f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {version.split('-')[0]}\n")
    script = root / VENV / "bin/pod-identity-injector"
    script.write_text(SCRIPT)
    os.chmod(script, 0o755)
    (root / "webhook").symlink_to(f"/{VENV}/bin/pod-identity-injector")


def control_of(root: Path, package: str) -> str:
    return (root / "var/lib/dpkg/status.d" / package).read_text()


def strip_extensions(root: Path, arch: str) -> None:
    """Debug sections and static symbol tables out of every shared object of the wheels, as Debian's
    dh_strip does for its libraries (uvloop's debug information alone is 11 MB); the dynamic
    symbols the loader needs stay."""
    tool = "strip" if platform.machine() == ARCHES[arch]["machine"] else f"{ARCHES[arch]['triplet']}-strip"
    if not shutil.which(tool):
        raise SystemExit(f"assemble: no {tool} (Debian: apt-get install binutils-{ARCHES[arch]['triplet']})")
    objects = [str(p) for p in (root / SITE).rglob("*.so*") if p.is_file() and not p.is_symlink()]
    if objects:
        run([tool, "--strip-unneeded", *objects])


def compile_bytecode(root: Path) -> None:
    """Every module of the standard library and of the venv as unchecked-hash .pyc: the image's
    interpreter never compiles (it could not cache the result on a read-only root) nor stats sources."""
    if sys.version_info[:2] != (3, 11):
        raise SystemExit(f"assemble: needs Python 3.11 to compile the image's bytecode, not {sys.version}")
    for top in (root / "usr/lib" / PYTHON, root / SITE):
        ok = compileall.compile_dir(str(top), quiet=2, workers=0, ddir="/" + str(top.relative_to(root)),
                                    invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        if not ok:
            log(f"some files under {top.relative_to(root)} did not compile (kept as source)")
    for directory in SOURCELESS:
        cache = root / SITE / directory / "__pycache__"
        for pyc in cache.glob(f"*.{sys.implementation.cache_tag}.pyc"):
            module = pyc.name.split(".")[0]
            pyc.rename(cache.parent / f"{module}.pyc")
            (cache.parent / f"{module}.py").unlink()
        cache.rmdir()


# -- OCI ---------------------------------------------------------------------------------------
class Layout:
    """An OCI image layout directory."""

    def __init__(self, path: Path):
        self.path = path
        (path / "blobs/sha256").mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.refs: list[dict] = []

    def blob(self, data: bytes, media_type: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (self.path / "blobs/sha256" / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def blob_file(self, path: Path, media_type: str) -> dict:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        target = self.path / "blobs/sha256" / h.hexdigest()
        shutil.move(path, target)
        return {"mediaType": media_type, "digest": f"sha256:{h.hexdigest()}", "size": target.stat().st_size}

    def tag(self, descriptor: dict, name: str) -> None:
        self.refs.append({**descriptor, "annotations": {"org.opencontainers.image.ref.name": name}})

    def save(self) -> None:
        (self.path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": self.refs}, indent=1))


def canonical(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def layer(layout: Layout, root: Path, work: Path, epoch: int) -> tuple[dict, str, int]:
    """A reproducible gzip'd tar of `root`: sorted, owned by root (but for what belongs to
    nonroot), every timestamp `epoch`. Returns the layer's descriptor, its diff ID and its size
    uncompressed (the tar's bytes: what `docker image ls` adds up)."""
    raw = work / "layer.tar"
    diff = hashlib.sha256()
    with open(raw, "wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in [root, *sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix())]:
            rel = path.relative_to(root).as_posix()
            if rel == ".":
                continue
            info = tar.gettarinfo(str(path), arcname=rel)
            info.mtime = epoch
            # Everything is root's but nonroot's home; files unpacked by a non-root build are
            # owned by whoever ran it, which the image must not show.
            info.uid = info.gid = NONROOT if rel == "home/nonroot" else 0
            info.uname = info.gname = ""
            info.pax_headers = {}
            # ustar (its prefix field takes names up to 255 bytes) costs no extended header per
            # long name, as pax does (800 of them here); pax only for what ustar cannot hold.
            tar.format = tarfile.USTAR_FORMAT if len(rel) <= 255 and len(info.linkname) <= 100 \
                else tarfile.PAX_FORMAT
            if rel in FILE_CAPABILITIES and info.isreg():
                value = FILE_CAPABILITIES[rel].decode("utf-8", "surrogateescape")
                info.pax_headers = {"SCHILY.xattr.security.capability": value}
                tar.format = tarfile.PAX_FORMAT
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    with open(raw, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            diff.update(chunk)
    tar_bytes = raw.stat().st_size
    packed = work / "layer.tar.gz"
    with open(raw, "rb") as src, open(packed, "wb") as dst, \
            gzip.GzipFile(fileobj=dst, mode="wb", compresslevel=6, mtime=0) as gz:
        shutil.copyfileobj(src, gz, 1 << 20)
    raw.unlink()
    descriptor = layout.blob_file(packed, "application/vnd.oci.image.layer.v1.tar+gzip")
    return descriptor, f"sha256:{diff.hexdigest()}", tar_bytes


def split_layers(root: Path, work: Path) -> list[tuple[str, Path]]:
    """The assembled root as three trees: Debian's files, the third-party wheels, ours."""
    parts = {name: work / name for name in ("debian", "wheels", "app")}
    for part in parts.values():
        part.mkdir()
    site = root / SITE
    ours = [p for p in site.iterdir() if p.name == "injector" or p.name.startswith("pod_identity_injector-")]
    for path in ours:
        target = parts["app"] / SITE / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    for path in [root / VENV / "bin", root / VENV / "pyvenv.cfg", root / VENV / "lib64", root / "webhook"]:
        target = parts["app"] / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    (parts["wheels"] / "opt").mkdir()
    (root / "opt/venv").rename(parts["wheels"] / VENV)
    for entry in root.iterdir():
        entry.rename(parts["debian"] / entry.name)
    return [("Debian bookworm: python3.11 and what it links (tools/image/assemble.py)", parts["debian"]),
            ("third-party wheels of tools/image/requirements.txt", parts["wheels"]),
            ("pod-identity-injector and its entry points", parts["app"])]


def assemble(arch: str, layout: Layout, wheel: Path, version: str, commit: str, epoch: int,
             refresh: bool) -> dict:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"assemble-{arch}-", dir=CACHE) as tmp:
        work = Path(tmp)
        root = work / "root"
        root.mkdir()
        apt = Apt(arch)
        debs = apt.fetch(ROOT_PACKAGES, refresh)
        chosen = closure(debs)
        log(f"{arch}: {len(chosen)} Debian packages: {' '.join(sorted(chosen))}")
        unpack_debian(root, debs, chosen)
        ca_bundle(root)
        system_files(root)
        install_wheels(root, arch, wheel)
        strip_extensions(root, arch)
        compile_bytecode(root)
        if any((root / p).exists() for p in ("bin/sh", "usr/bin/sh", "usr/bin/bash", "usr/bin/dpkg", "usr/bin/apt")):
            raise SystemExit("assemble: a shell or package manager slipped into the image")
        layers, diff_ids, history = [], [], []
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
        size = 0
        for comment, tree in split_layers(root, work):
            descriptor, diff_id, tar_bytes = layer(layout, tree, work, epoch)
            size += tar_bytes
            layers.append(descriptor)
            diff_ids.append(diff_id)
            history.append({"created": created, "created_by": "tools/image/assemble.py", "comment": comment})
    oci_arch, variant = ARCHES[arch]["oci"]
    labels = {
        "org.opencontainers.image.title": "pod-identity-injector",
        "org.opencontainers.image.description": "Kubernetes admission webhook that gives pods AWS IAM credentials",
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": commit,
        "org.opencontainers.image.created": created,
    }
    if os.environ.get("IMAGE_SOURCE"):
        labels["org.opencontainers.image.source"] = os.environ["IMAGE_SOURCE"]
    config = {
        "created": created, "architecture": oci_arch, "os": "linux",
        "config": {"User": f"{NONROOT}:{NONROOT}", "Env": ENV, "Entrypoint": ENTRYPOINT, "Cmd": CMD,
                   "WorkingDir": "/", "ExposedPorts": {"8443/tcp": {}, "9999/tcp": {}}, "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    if variant:
        config["variant"] = variant
    config_descriptor = layout.blob(canonical(config), "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_descriptor, "layers": layers,
                "annotations": {"org.opencontainers.image.version": version,
                                "org.opencontainers.image.revision": commit,
                                "org.opencontainers.image.created": created}}
    descriptor = layout.blob(canonical(manifest), manifest["mediaType"])
    platform = {"architecture": oci_arch, "os": "linux", **({"variant": variant} if variant else {})}
    log(f"{arch}: {size / 1e6:.1f} MB uncompressed, {sum(x['size'] for x in layers) / 1e6:.1f} MB compressed, "
        f"{time.monotonic() - started:.0f} s")
    return {**descriptor, "platform": platform}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="OCI layout directory to (re)write")
    parser.add_argument("--arch", action="append", choices=sorted(ARCHES), help="default: amd64 and arm64")
    parser.add_argument("--version", default="", help="default: pyproject.toml's")
    parser.add_argument("--commit", default=None, help="default: git HEAD (+-dirty)")
    parser.add_argument("--refresh", action="store_true", help="apt-get update even when the lists are recent")
    args = parser.parse_args(argv)
    version = args.version or project_version()
    if version != project_version():
        raise SystemExit(f"assemble: --version {version} is not pyproject.toml's {project_version()}")
    commit = git_commit() if args.commit is None else args.commit
    arches = args.arch or ["amd64", "arm64"]
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.out.exists():
        shutil.rmtree(args.out)
    layout = Layout(args.out)
    epoch = source_date_epoch()
    with tempfile.TemporaryDirectory(prefix="assemble-wheel-", dir=CACHE) as tmp:
        wheel = build_wheel(Path(tmp), version, commit)
        manifests = []
        for arch in arches:
            manifests.append(assemble(arch, layout, wheel, version, commit, epoch, args.refresh))
            layout.tag({k: v for k, v in manifests[-1].items() if k != "platform"}, f"{version}-{arch}")
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests,
             "annotations": {"org.opencontainers.image.version": version,
                             "org.opencontainers.image.revision": commit}}
    layout.tag(layout.blob(canonical(index), index["mediaType"]), version)
    layout.save()
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
