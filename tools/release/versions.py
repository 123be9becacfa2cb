#!/usr/bin/env python3
"""One version, one place: `version` in pyproject.toml's [project] table.

    versions.py show                       the version (what `make release` uses when VERSION is unset)
    versions.py check [--cli CMD]          exit 1 unless the chart's version and appVersion, CHANGELOG.md
                                           and (with --cli) `CMD version` all say pyproject.toml's version
    versions.py notes [VERSION]            the CHANGELOG.md section of VERSION (release notes)
    versions.py buildinfo --commit SHA --out FILE
                                           injector/_buildinfo.py for a build: the version and the commit

The version is written in SemVer (1.2.3 or 1.2.3-rc.1: alpha, beta and rc pre-releases), which
is what image tags and Helm charts need; PEP 440 reads the same string (1.2.3rc1 once
normalised), and the package turns the normalised form back into this one. Standard library only.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts/pod-identity-injector/Chart.yaml"
CHANGELOG = REPO / "CHANGELOG.md"
SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-(alpha|beta|rc)\.(0|[1-9]\d*))?")
SECTION = re.compile(r"^## \[([^\]]+)\](?: - (\S+))?\s*$", re.M)


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def chart_field(name: str) -> str:
    match = re.search(rf"^{name}:\s*\"?([^\"\s]+)\"?\s*$", CHART.read_text(), re.M)
    return match.group(1) if match else ""


def sections() -> dict[str, tuple[str, str]]:
    """CHANGELOG.md's sections: heading name -> (date or "", body)."""
    text = CHANGELOG.read_text()
    heads = list(SECTION.finditer(text))
    out = {}
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body = text[head.end():end]
        body = re.split(r"^\[[^\]]+\]:", body, flags=re.M)[0]  # link references at the end
        out[head.group(1)] = (head.group(2) or "", body.strip("\n"))
    return out


def problems(cli: str | None) -> list[str]:
    version = project_version()
    found = []
    if not SEMVER.fullmatch(version):
        found.append(f"pyproject.toml version {version!r} is not X.Y.Z or X.Y.Z-(alpha|beta|rc).N")
    for field in ("version", "appVersion"):
        if chart_field(field) != version:
            found.append(f"{CHART.relative_to(REPO)} {field} is {chart_field(field)!r}, "
                         f"pyproject.toml says {version!r}")
    if not CHANGELOG.exists():
        found.append("CHANGELOG.md is missing")
    elif version not in sections():
        found.append(f"CHANGELOG.md has no '## [{version}]' section")
    if cli:
        result = subprocess.run([*shlex.split(cli), "version"], capture_output=True, text=True, check=False)
        printed = result.stdout.split()[0] if result.stdout.split() else ""
        if printed != version:
            found.append(f"`{cli} version` printed {result.stdout.strip()!r} (exit {result.returncode}), "
                         f"pyproject.toml says {version!r}")
    return found


def buildinfo(commit: str) -> str:
    return ('"""Written at build time by tools/release/versions.py; not in git."""\n\n'
            f"VERSION = {project_version()!r}\nCOMMIT = {commit!r}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("show")
    check = sub.add_parser("check")
    check.add_argument("--cli", help="the installed command, e.g. .venv/bin/pod-identity-injector")
    notes = sub.add_parser("notes")
    notes.add_argument("version", nargs="?")
    info = sub.add_parser("buildinfo")
    info.add_argument("--commit", default="")
    info.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "show":
        print(project_version())
    elif args.command == "check":
        found = problems(args.cli)
        for problem in found:
            print(f"versions: {problem}", file=sys.stderr)
        if found:
            return 1
        print(f"versions: {project_version()} everywhere")
    elif args.command == "notes":
        version = args.version or project_version()
        if version not in sections():
            print(f"versions: CHANGELOG.md has no '## [{version}]' section", file=sys.stderr)
            return 1
        print(sections()[version][1])
    elif args.command == "buildinfo":
        args.out.write_text(buildinfo(args.commit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
