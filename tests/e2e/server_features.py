"""What the API server under test is: its version and its feature gates, for the tests whose
expected outcome depends on them (docs/compatibility.md).

The e2e tier runs against every supported Kubernetes minor (`make e2e-matrix`). Where the
server's behaviour differs between minors, a test asks this module what the server offers and
asserts the behaviour that belongs to it, rather than the newest minor's: e.g. WatchList is off
by default in 1.30, 1.31 and 1.33, and before 1.33 the server drops `resizePolicy` from a pod it stores.
The gates come from the server itself (its `kubernetes_feature_enabled` metric), so a
`--feature-gates` flag counts as much as the default of the minor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

_FEATURE_LINE = re.compile(r'^kubernetes_feature_enabled\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.eE+-]+)$')
_NAME_LABEL = re.compile(r'(?:^|,)name="(?P<name>[^"]+)"')


@dataclass(frozen=True)
class ServerFeatures:
    """The API server's version (`/version`) and the state of each of its feature gates."""

    git_version: str
    minor: int
    gates: dict[str, bool]

    def enabled(self, gate: str, *, ga_in: int | None = None) -> bool:
        """Whether `gate` is on in this server. Kubernetes retires a gate some minors after it
        is GA (on for good): a gate missing from a minor at or after `ga_in` is on. Any other
        missing gate is an error, so a test notices when a minor renames or drops one."""
        if gate in self.gates:
            return self.gates[gate]
        if ga_in is not None and self.minor >= ga_in:
            return True
        raise LookupError(f"kube-apiserver {self.git_version} has no feature gate {gate!r}")


def parse_feature_gates(metrics: str) -> dict[str, bool]:
    """Feature gate → enabled, from the text of an API server's /metrics."""
    gates = {}
    for line in metrics.splitlines():
        match = _FEATURE_LINE.match(line)
        name = _NAME_LABEL.search(match["labels"]) if match else None
        if match and name:
            gates[name["name"]] = float(match["value"]) == 1.0
    return gates


def server_features(get: Callable[[str], tuple[int, bytes]]) -> ServerFeatures:
    """Ask the API server behind `get` (a control plane's or external cluster's `get`)."""
    status, body = get("/version")
    assert status == 200, body[:200]
    version = json.loads(body)
    status, metrics = get("/metrics")
    assert status == 200, metrics[:200]
    minor = int(re.match(r"\d+", version["minor"])[0])  # "34", or "34+" on some providers
    return ServerFeatures(version["gitVersion"], minor, parse_feature_gates(metrics.decode()))
