"""The repository cites only itself: every rule a docstring, comment or fixture cites is an
anchor of a page in docs/ (docs/mutation.md for `§anchor`), and no source points elsewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from planner_cases import CITATION, DOCS_DIR, FIXTURE_DIR, doc_anchors

ROOT = DOCS_DIR.parent
SOURCES = sorted([*(ROOT / "injector").rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *FIXTURE_DIR.glob("*.yaml")])
PAGE_CITATION = re.compile(r"docs/([a-z0-9_-]+\.md)#([a-z0-9-]+)")
OUTSIDE = re.compile(r"\b(?:behaviour|design)\.md\b")


def citations(path: Path) -> list[tuple[str, str]]:
    text = path.read_text(encoding="utf-8")
    cited = [("mutation.md", anchor) for anchor in CITATION.findall(text)]
    return [(page, anchor) for page, anchor in cited + PAGE_CITATION.findall(text) if anchor != "anchor"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_citation_names_an_existing_anchor(path: Path):
    missing = [f"docs/{page}#{anchor}" for page, anchor in citations(path)
               if not (DOCS_DIR / page).exists() or anchor not in doc_anchors(page)]
    assert not missing, f"{path.name} cites sections that do not exist: {missing}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_points_outside_the_repository(path: Path):
    if path == Path(__file__):
        return
    assert not OUTSIDE.search(path.read_text(encoding="utf-8"))


def test_anchors_are_unique_within_a_page():
    for page in DOCS_DIR.glob("*.md"):
        anchors = re.findall(r'<a id="([a-z0-9-]+)"></a>', page.read_text(encoding="utf-8"))
        assert len(anchors) == len(set(anchors)), page.name
