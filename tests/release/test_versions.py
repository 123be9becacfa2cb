"""One version, one place: pyproject.toml's `version` is the chart's version and appVersion,
the image tag (tools/image/assemble.py reads it) and what `pod-identity-injector version`
prints, with the commit the code was built from."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture
def versions(tmp_path, monkeypatch):
    """tools/release/versions.py, reading a copy of the files it checks."""
    spec = importlib.util.spec_from_file_location("release_versions", ROOT / "tools/release/versions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for rel in ("pyproject.toml", "CHANGELOG.md", "charts/pod-identity-injector/Chart.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    monkeypatch.setattr(module, "REPO", tmp_path)
    monkeypatch.setattr(module, "CHART", tmp_path / "charts/pod-identity-injector/Chart.yaml")
    monkeypatch.setattr(module, "CHANGELOG", tmp_path / "CHANGELOG.md")
    return module


def version_output(*pythonpath: Path) -> str:
    env = {"PYTHONPATH": ":".join(str(p) for p in pythonpath)} if pythonpath else None
    code = "import sys; from injector.cli.main import main; sys.exit(main(['version']))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                          cwd=pythonpath[0] if pythonpath else ROOT).stdout.strip()


def test_the_repository_agrees_with_itself(versions):
    assert versions.problems(cli=None) == []


def test_the_version_is_semver_that_pep440_also_reads():
    assert re.fullmatch(r"\d+\.\d+\.\d+(-(alpha|beta|rc)\.\d+)?", VERSION)


@pytest.mark.parametrize("field", ["version", "appVersion"])
def test_a_chart_that_disagrees_fails_the_check(versions, field):
    chart = versions.CHART
    chart.write_text(re.sub(rf"(?m)^{field}:.*$", f'{field}: "9.9.9"', chart.read_text()))
    assert versions.problems(cli=None) == [
        f"charts/pod-identity-injector/Chart.yaml {field} is '9.9.9', pyproject.toml says {VERSION!r}"]


def test_a_version_without_a_changelog_section_fails_the_check(versions):
    pyproject = versions.REPO / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(f'version = "{VERSION}"', 'version = "9.9.9"'))
    found = versions.problems(cli=None)
    assert "CHANGELOG.md has no '## [9.9.9]' section" in found


def test_the_release_notes_are_the_changelog_section(versions):
    notes = versions.sections()[VERSION][1]
    assert notes.strip() and "## [" not in notes


def test_version_prints_the_version_and_the_commit_of_the_checkout():
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    printed = version_output()
    assert re.fullmatch(rf"{re.escape(VERSION)} \(commit {head}(-dirty)?\)", printed), printed


def test_a_build_prints_the_commit_it_was_built_from(tmp_path):
    """What an image runs: the package with the injector/_buildinfo.py that the build wrote."""
    shutil.copytree(ROOT / "injector", tmp_path / "injector", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, str(ROOT / "tools/release/versions.py"), "buildinfo", "--commit", "0123abcd",
                    "--out", str(tmp_path / "injector/_buildinfo.py")], check=True)
    assert version_output(tmp_path) == f"{VERSION} (commit 0123abcd)"


def test_the_image_installs_the_versions_ci_tests():
    """One lock: every distribution the image pins (tools/image/requirements.txt) is pinned to
    the same version in constraints.txt, which the venv and CI install from."""
    def pins(path: Path) -> dict[str, str]:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        return {name.lower().replace("_", "-"): version for name, version in (line.split("==") for line in lines)}

    image, locked = pins(ROOT / "tools/image/requirements.txt"), pins(ROOT / "constraints.txt")
    assert {name: (version, locked.get(name)) for name, version in image.items() if locked.get(name) != version} == {}
