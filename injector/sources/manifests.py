"""Identity inputs read from files: ServiceAccount manifests, the ConfigMap manifest and the
Pod Identity identities file. Parsing only: the rules are `core.identity`'s.

Used by the offline `mutate` command and by `serve` when it runs without a cluster. Every
problem becomes an `InputError` naming the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import yaml

from injector.core.identity import (
    ConfigMapError,
    ConfigMapMapping,
    PodIdentities,
    RoleMapping,
    parse_config_map,
    parse_pod_identities,
    service_account_entry,
)
from injector.core.settings import MutationSettings
from injector.sources.store import IdentityStore


class ManifestLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML as the API server reads it: `2024-05-01T10:00:00Z` stays a string, not a datetime."""


ManifestLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

CONFIG_MAP_NAME = "pod-identity-webhook"
CONFIG_MAP_KEY = "config"


class InputError(ValueError):
    """A file we were given cannot be used; the message starts with the path."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read: {exc}") from None


def parse_documents(text: str, path: str | Path) -> list[Any]:
    """JSON or YAML (multi-document); a `List` kind is flattened into its items."""
    stripped = text.lstrip()
    docs: list[Any]
    if stripped.startswith(("{", "[")):
        try:
            docs = [orjson.loads(text)]
        except orjson.JSONDecodeError:
            docs = _yaml_documents(text, path)
    else:
        docs = _yaml_documents(text, path)
    flat: list[Any] = []
    for doc in docs:
        if doc is None:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("kind"), str) and doc["kind"].endswith("List"):
            flat.extend(doc.get("items") or [])
        else:
            flat.append(doc)
    return flat


def _yaml_documents(text: str, path: str | Path) -> list[Any]:
    try:
        return list(yaml.load_all(text, Loader=ManifestLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(path, f"not valid YAML or JSON{where}: {problem}") from None


def load_documents(path: str | Path) -> list[Any]:
    return parse_documents(read_text(path), path)


def service_account_entries(
    documents: Iterable[Any], settings: MutationSettings, default_namespace: str, path: str | Path
) -> dict[str, RoleMapping]:
    entries: dict[str, RoleMapping] = {}
    for index, doc in enumerate(documents):
        if not isinstance(doc, dict) or doc.get("kind") != "ServiceAccount":
            kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
            raise InputError(path, f"document {index + 1} is a {kind!r}, expected a ServiceAccount")
        metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        name = metadata.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(path, f"ServiceAccount in document {index + 1} has no metadata.name")
        namespace = metadata.get("namespace") or default_namespace
        annotations = metadata.get("annotations")
        if annotations is not None and not isinstance(annotations, dict):
            raise InputError(path, f"ServiceAccount {namespace}/{name}: metadata.annotations is not a map")
        entries[f"{namespace}/{name}"] = service_account_entry(annotations, settings)
    return entries


def load_service_accounts(
    paths: Iterable[str | Path], settings: MutationSettings, default_namespace: str = "default"
) -> dict[str, RoleMapping]:
    entries: dict[str, RoleMapping] = {}
    for path in paths:
        entries.update(service_account_entries(load_documents(path), settings, default_namespace, path))
    return entries


def config_map_mapping(manifest: Any, settings: MutationSettings, path: str | Path) -> ConfigMapMapping:
    """The mapping from a `pod-identity-webhook` ConfigMap manifest (key `config`)."""
    if not isinstance(manifest, dict) or manifest.get("kind") != "ConfigMap":
        raise InputError(path, "expected a ConfigMap manifest")
    data = manifest.get("data") or {}
    raw = data.get(CONFIG_MAP_KEY) if isinstance(data, dict) else None
    if raw is None:
        return ConfigMapMapping()
    if not isinstance(raw, str):
        raise InputError(path, f"data.{CONFIG_MAP_KEY} must be a JSON string")
    try:
        document = orjson.loads(raw) if raw.strip() else None
        return parse_config_map({} if document is None else document, settings)
    except orjson.JSONDecodeError as exc:
        raise InputError(path, f"data.{CONFIG_MAP_KEY} is not valid JSON: {exc}") from None
    except ConfigMapError as exc:
        raise InputError(path, f"data.{CONFIG_MAP_KEY}: {exc}") from None


def load_config_map(path: str | Path, settings: MutationSettings) -> ConfigMapMapping:
    docs = load_documents(path)
    if len(docs) != 1:
        raise InputError(path, f"expected one ConfigMap, found {len(docs)} documents")
    return config_map_mapping(docs[0], settings, path)


def parse_identities_file(text: str, path: str | Path) -> PodIdentities:
    """An empty file means no Pod Identity associations, as in the Go webhook. A bad entry is
    left out (in `skipped`, for the caller to report); a file of the wrong shape is an error."""
    if not text.strip():
        return PodIdentities()
    try:
        return parse_pod_identities(orjson.loads(text))
    except orjson.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON: {exc}") from None
    except ValueError as exc:
        raise InputError(path, str(exc)) from None


def load_pod_identities(path: str | Path) -> PodIdentities:
    return parse_identities_file(read_text(path), path)


def load_manifests(store: IdentityStore, service_account_files: Iterable[str | Path], config_map_file: str = "",
                   default_namespace: str = "default") -> None:
    """Fill the store from ServiceAccount manifests and a ConfigMap manifest, if given."""
    store.replace_service_accounts(load_service_accounts(service_account_files, store.settings, default_namespace))
    if config_map_file:
        store.replace_config_map(load_config_map(config_map_file, store.settings))
