"""Views of a pod as the API server sends it: untyped JSON, read defensively.

The planner and `doctor` read pods through these, so they agree on what a container, a
volume or an env entry is. A field of the wrong JSON type reads as empty, never raises.
Pure: no I/O.
"""

from __future__ import annotations

import posixpath
from typing import Any


def mapping(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def metadata(obj: Any) -> dict[str, Any]:
    return mapping(mapping(obj).get("metadata"))


def spec(pod: Any) -> dict[str, Any]:
    return mapping(mapping(pod).get("spec"))


def containers_of(pod_spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(list name, container) for every init container, then every container."""
    return [(kind, c) for kind in ("initContainers", "containers") for c in pod_spec.get(kind) or ()
            if isinstance(c, dict)]


def names_of(items: Any) -> set[str]:
    """The `name`s in a list of objects (containers, env entries, mounts)."""
    if not isinstance(items, list):
        return set()
    return {item.get("name") for item in items if isinstance(item, dict)}


def volumes_of(pod_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pod's volumes by name."""
    return {v.get("name"): v for v in pod_spec.get("volumes") or () if isinstance(v, dict)}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """A container's env by name; a `valueFrom` entry reads as `<valueFrom>`."""
    found = {}
    for entry in container.get("env") or ():
        if isinstance(entry, dict) and entry.get("name"):
            found[entry["name"]] = str(entry.get("value", "")) if "valueFrom" not in entry else "<valueFrom>"
    return found


def token_source(volume: Any, path: str | None = None) -> dict[str, Any] | None:
    """The projected serviceAccountToken of `volume` (at `path`, when given), if it is one: a
    volume of our name without one is a collision (§volume-collision)."""
    sources = mapping(mapping(volume).get("projected")).get("sources")
    for source in sources if isinstance(sources, list) else ():
        token = mapping(source).get("serviceAccountToken")
        if isinstance(token, dict) and (path is None or posixpath.normpath(token.get("path", "")) == path):
            return token
    return None


def volume_kind(volume: Any) -> str:
    """What a volume is (`emptyDir`, `configMap`, …), for the collision's messages."""
    return next((key for key in mapping(volume) if key != "name"), "no source")


OS_LABELS = ("kubernetes.io/os", "beta.kubernetes.io/os")


def _pins_windows(term: Any) -> bool:
    """A nodeSelectorTerm with an expression `<os label> In [windows]` (its expressions are ANDed)."""
    expressions = mapping(term).get("matchExpressions")
    return isinstance(expressions, list) and any(
        mapping(e).get("key") in OS_LABELS and mapping(e).get("operator") == "In"
        and mapping(e).get("values") == ["windows"] for e in expressions)


def runs_on_windows(pod_spec: dict[str, Any]) -> bool:
    """Whether the pod can only be scheduled on Windows nodes (docs/mutation.md#windows).

    `nodeSelector` with an OS label equal to `windows`, or a required nodeAffinity whose terms
    (ORed) all carry `<os label> In [windows]`. Preferred affinity does not count; anything of
    the wrong JSON type reads as "not Windows".
    """
    node_selector = mapping(pod_spec.get("nodeSelector"))
    if any(node_selector.get(key) == "windows" for key in OS_LABELS):
        return True
    required = mapping(mapping(mapping(pod_spec.get("affinity")).get("nodeAffinity"))
                       .get("requiredDuringSchedulingIgnoredDuringExecution"))
    terms = required.get("nodeSelectorTerms")
    return isinstance(terms, list) and bool(terms) and all(_pins_windows(term) for term in terms)
