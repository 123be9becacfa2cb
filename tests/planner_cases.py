"""Shared loader for the planner specification fixtures in tests/fixtures/planner/.

Each fixture is one YAML document (see the brief in tests/test_planner_fixtures.py):
description, optional flags / namespace / serviceAccount / configMap / podIdentity, the pod
as it arrives and the expected resulting pod (absent: the pod must stay unchanged).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from injector.cli import parser as cli
from injector.core import identity
from injector.core.settings import MutationSettings
from injector.sources.manifests import ManifestLoader

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "planner"
DOCS_DIR = Path(__file__).parent.parent / "docs"
# A fixture cites the rules it exercises as §anchor, an anchor of docs/mutation.md.
CITATION = re.compile(r"§([a-z][a-z0-9-]*)")
_ANCHOR = re.compile(r'<a id="([a-z0-9-]+)"></a>')
FIXTURE_KEYS = {"description", "flags", "namespace", "serviceAccount", "configMap", "podIdentity", "pod", "expected",
                "warnings"}
JITTER_FLOOR = 79200
JITTER_CEILING = 86400


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=ManifestLoader)


@dataclass(frozen=True)
class Case:
    id: str
    path: Path
    data: dict[str, Any]

    @property
    def flags(self) -> list[str]:
        return list(self.data.get("flags") or [])

    @property
    def namespace(self) -> str:
        return self.data.get("namespace") or "default"

    @property
    def pod(self) -> dict[str, Any]:
        return copy.deepcopy(self.data["pod"])

    @property
    def service_account_name(self) -> str:
        return (self.data["pod"].get("spec") or {}).get("serviceAccountName") or ""

    @property
    def expected(self) -> dict[str, Any]:
        """The resulting pod; the input itself when the fixture says it must not change."""
        return copy.deepcopy(self.data.get("expected", self.data["pod"]))

    @property
    def changes(self) -> bool:
        return "expected" in self.data


def doc_anchors(name: str) -> set[str]:
    """The stable anchors (`<a id="…"></a>`) of one page in docs/."""
    return set(_ANCHOR.findall((DOCS_DIR / name).read_text(encoding="utf-8")))


def load_cases() -> list[Case]:
    cases = []
    for path in sorted(FIXTURE_DIR.glob("*.yaml")):
        data = load_yaml(path.read_text(encoding="utf-8"))
        cases.append(Case(path.stem, path, data))
    return cases


def settings_for(case: Case) -> MutationSettings:
    """The settings the `mutate` command would build from the fixture's flags."""
    args = cli.build_parser().parse_args(["mutate", "-f", "x", *case.flags])
    return cli.mutation_settings(args)


def tables_for(case: Case, settings: MutationSettings) -> identity.IdentityTables:
    tables = identity.IdentityTables()
    key = f"{case.namespace}/{case.service_account_name}"
    if "serviceAccount" in case.data:
        annotations = (case.data["serviceAccount"] or {}).get("annotations")
        tables.service_accounts[key] = identity.service_account_entry(annotations, settings)
    if "configMap" in case.data:
        tables.config_map = identity.parse_config_map(case.data["configMap"], settings)
    if case.data.get("podIdentity"):
        tables.pod_identities = frozenset({(case.namespace, case.service_account_name)})
    return tables
