"""Assembles the build context of the workload image (tests/cluster/workload/Dockerfile): the
SDK programs, each built here from its pinned dependencies, the way their users build them.

    python3 tests/cluster/workload/build.py OUT
    python3 tests/cluster/workload/build.py --update-maven-lock   # after a change of java/pom.xml

OUT/sdk/ then holds run.py (the pods' entry point), python/main.py (boto3, which the Dockerfile
installs with pip), go/aws-sdk-go-workload (static), java/{classes,lib,jre} (Main.class, the jars
of maven.lock, a jlink'd runtime) and js/{main.mjs,node_modules}. Needs go, mvn, a JDK (javac,
jlink) and npm; each reaches only its own registry. What takes time is cached under
~/.cache/pod-identity-injector-sdks (POD_IDENTITY_SDKS_CACHE), keyed by its inputs.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("POD_IDENTITY_SDKS_CACHE") or
             Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pod-identity-injector-sdks")
# What Main.java and the SDK's jars use (jdeps), plus what they load as services: the EC
# algorithms of TLS.
JAVA_MODULES = "java.base,java.xml,java.naming,java.security.jgss,jdk.net,jdk.crypto.ec"


def log(message: str) -> None:
    print(f"[workload] {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kwargs) -> str:
    result = subprocess.run(["nice", "-n", "10", *cmd], stdout=subprocess.PIPE, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"workload: {' '.join(cmd)} exited {result.returncode}")
    return result.stdout


def digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def build_go(out: Path) -> None:
    """A static binary; modules from the Go module proxy only (never `direct`), checked by go.sum."""
    proxy = subprocess.run(["go", "env", "GOPROXY"], capture_output=True, text=True, check=True).stdout.strip()
    proxy = ",".join(p for p in proxy.replace("|", ",").split(",") if p not in ("direct", "off", ""))
    env = dict(os.environ, GOPROXY=proxy or "off", GOFLAGS="-mod=readonly -buildvcs=false", GOTOOLCHAIN="local",
               CGO_ENABLED="0", GOWORK="off")
    run(["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(out / "go" / "aws-sdk-go-workload"), "."],
        cwd=HERE / "go", env=env)


def maven_lock() -> list[tuple[str, str, str, str]]:
    """maven.lock: `group:artifact:version sha256` a line → (group, artifact, version, sha256)."""
    entries = []
    for line in (HERE / "java" / "maven.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            coordinates, sha256 = line.split()
            entries.append((*coordinates.split(":"), sha256))
    return entries


def resolve_jars() -> tuple[Path, Path]:
    """The jars of pom.xml (runtime scope) from Maven Central into the cache's local repository;
    returns (local repository, folder of the resolved jars)."""
    repo, resolved = CACHE / "m2", CACHE / "java-resolved"
    shutil.rmtree(resolved, ignore_errors=True)
    run(["mvn", "-B", "-q", "-Dstyle.color=never", f"-Dmaven.repo.local={repo}", "dependency:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={resolved}"], cwd=HERE / "java")
    return repo, resolved


def update_maven_lock() -> None:
    repo, resolved = resolve_jars()
    lines = ["# The jars of pom.xml (runtime scope) with their sha256: the image gets exactly these.",
             "# Written by `build.py --update-maven-lock`."]
    for jar in sorted(repo.rglob("*.jar")):
        artifact, version = jar.parent.parent.name, jar.parent.name
        if (resolved / jar.name).is_file() and jar.name == f"{artifact}-{version}.jar":
            group = ".".join(jar.relative_to(repo).parts[:-3])
            sha256 = hashlib.sha256(jar.read_bytes()).hexdigest()
            lines.append(f"{group}:{artifact}:{version} {sha256}")
    (HERE / "java" / "maven.lock").write_text("\n".join(lines) + "\n")


def build_java(out: Path) -> None:
    """The jars pom.xml resolves (Maven Central, into the cache), which must be exactly those of
    maven.lock with its sha256; Main.java compiled against them; a runtime of JAVA_MODULES."""
    repo, resolved = resolve_jars()
    lock = maven_lock()
    names = {f"{artifact}-{version}.jar" for _, artifact, version, _ in lock}
    found = {p.name for p in resolved.glob("*.jar")}
    if found != names:
        raise SystemExit(f"workload: pom.xml resolves {sorted(found - names)} beyond maven.lock, "
                         f"and not {sorted(names - found)}: update maven.lock (build.py --update-maven-lock)")
    lib = out / "java" / "lib"
    lib.mkdir(parents=True)
    for group, artifact, version, sha256 in lock:
        jar = repo / group.replace(".", "/") / artifact / version / f"{artifact}-{version}.jar"
        actual = hashlib.sha256(jar.read_bytes()).hexdigest()
        if actual != sha256:
            raise SystemExit(f"workload: {group}:{artifact}:{version} has sha256 {actual}, maven.lock says {sha256}")
        shutil.copy2(jar, lib / jar.name)
    run(["javac", "--release", "17", "-cp", f"{lib}/*", "-d", str(out / "java" / "classes"),
         str(HERE / "java" / "Main.java")])
    java_version = subprocess.run(["java", "-version"], capture_output=True, text=True, check=True).stderr
    jre = CACHE / f"jre-{digest(java_version, JAVA_MODULES)}"
    if not jre.is_dir():
        shutil.rmtree(jre.with_suffix(".tmp"), ignore_errors=True)
        run(["jlink", "--add-modules", JAVA_MODULES, "--strip-debug", "--no-header-files", "--no-man-pages",
             "--compress=2", "--output", str(jre.with_suffix(".tmp"))])
        jre.with_suffix(".tmp").rename(jre)
    shutil.copytree(jre, out / "java" / "jre", symlinks=True)


def build_js(out: Path) -> None:
    """`npm ci` of package-lock.json (the npm registry, integrity-checked), no install scripts."""
    lock = (HERE / "js" / "package-lock.json").read_bytes()
    modules = CACHE / f"js-{digest((HERE / 'js' / 'package.json').read_bytes(), lock)}"
    if not modules.is_dir():
        work = modules.with_suffix(".tmp")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(HERE / "js" / name, work / name)
        run(["npm", "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], cwd=work)
        work.rename(modules)
    target = out / "js"
    shutil.copytree(modules / "node_modules", target / "node_modules", symlinks=True)
    shutil.copy2(HERE / "js" / "main.mjs", target / "main.mjs")
    shutil.copy2(HERE / "js" / "package.json", target / "package.json")  # "type": "module"


def build_context(out: Path) -> Path:
    """OUT/Dockerfile and OUT/sdk/…: everything the image's COPY takes. Returns OUT. One build
    per cache at a time (the image build and the unit tier may run side by side)."""
    sdk = out / "sdk"
    shutil.rmtree(sdk, ignore_errors=True)
    (sdk / "python").mkdir(parents=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    shutil.copy2(HERE / "Dockerfile", out / "Dockerfile")
    shutil.copy2(HERE / "run.py", sdk / "run.py")
    shutil.copy2(HERE / "python" / "main.py", sdk / "python" / "main.py")
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name, step in (("go", build_go), ("java", build_java), ("js", build_js)):
            log(f"{name}…")
            step(sdk)
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--update-maven-lock"]:
        CACHE.mkdir(parents=True, exist_ok=True)
        with open(CACHE / "lock", "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            update_maven_lock()
        raise SystemExit(0)
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        raise SystemExit(__doc__)
    print(build_context(Path(sys.argv[1]).resolve()))
