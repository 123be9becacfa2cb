"""The package layout as docs/architecture.md describes it: a pure core, a docstring on every
module, and a map that names every package and module there is (the import contracts
themselves are checked by `make lint`, with import-linter)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "injector"
PACKAGES = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_core_loads_no_http_server_api_client_or_logging():
    core = sorted(p.stem for p in (PACKAGE / "core").glob("*.py") if p.stem != "__init__")
    probe = (f"import sys; import {', '.join('injector.core.' + m for m in core)}; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & "
             "{'aiohttp', 'kubernetes_asyncio', 'structlog', 'prometheus_client', 'yaml', 'cryptography'}))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "[]"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_says_what_it_is_for(path: Path):
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert docstring and len(docstring) > 40, f"{path.relative_to(ROOT)} needs a docstring saying what it is for"


def test_the_architecture_page_names_every_package_and_module():
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| (.*)$", page, re.M)}
    assert sorted(rows) == PACKAGES
    for package in PACKAGES:
        modules = {p.stem for p in (PACKAGE / package).glob("*.py")} - {"__init__"}
        named = set(re.findall(r"`(\w+)`", rows[package]))
        assert modules <= named, f"docs/architecture.md does not name {sorted(modules - named)} in {package}"
