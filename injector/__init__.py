"""pod-identity-injector: a Kubernetes admission webhook that gives pods AWS IAM credentials.

The version has one home, `version` in pyproject.toml (SemVer: 1.2.3, 1.2.3-rc.1); the image tag
and the chart's version and appVersion are the same string (`make lint` checks). A build writes
it with the git commit into injector/_buildinfo.py (tools/release/versions.py); without that
file, the installed distribution's metadata gives the version and git, lazily, the commit.
"""

from __future__ import annotations

try:
    from injector._buildinfo import COMMIT as _BUILD_COMMIT
    from injector._buildinfo import VERSION as __version__
except ImportError:  # a checkout or an editable install: no build step wrote it
    # Only here: a built image has _buildinfo, and every process it starts (serve's too) would
    # otherwise pay for importlib.metadata, about 40 ms of start-up, for nothing.
    import re
    from importlib.metadata import PackageNotFoundError, version

    _BUILD_COMMIT = None

    def _installed_version() -> str:
        """The distribution's version back in SemVer spelling (metadata holds PEP 440's 1.2.3rc1)."""
        try:
            pep440 = version("pod-identity-injector")
        except PackageNotFoundError:
            return "0+unknown"
        match = re.fullmatch(r"(\d+\.\d+\.\d+)(?:(a|b|rc)(\d+))?", pep440)
        if not match:
            return pep440
        base, kind, number = match.groups()
        return base if not kind else f"{base}-{ {'a': 'alpha', 'b': 'beta', 'rc': 'rc'}[kind]}.{number}"

    __version__ = _installed_version()


def _git_commit() -> str:
    """HEAD of the git checkout this package is imported from (+-dirty), or "" when it is not one."""
    # Asked for by `version` alone: no other command's start-up pays for these.
    import subprocess  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    top = Path(__file__).resolve().parent.parent
    if not (top / ".git").exists():
        return ""
    try:
        sha = subprocess.run(["git", "-C", str(top), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(top), "diff", "--quiet", "HEAD", "--"], capture_output=True,
                               check=False, timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return ""
    return sha + ("-dirty" if dirty else "")


def __getattr__(name: str) -> str:
    """`__commit__`: the git commit the code was built from, "" when unknown; computed on first use."""
    if name == "__commit__":
        commit = _BUILD_COMMIT if _BUILD_COMMIT is not None else _git_commit()
        globals()["__commit__"] = commit
        return commit
    raise AttributeError(f"module 'injector' has no attribute {name!r}")
