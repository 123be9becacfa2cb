"""The shared pod views of injector/core/pod.py: `runs_on_windows` (docs/mutation.md#windows).

The Windows rule is read from `nodeSelector` and from a required nodeAffinity whose
nodeSelectorTerms (ORed) all carry `kubernetes.io/os` (or the beta label) `In [windows]`;
anything else, including JSON of the wrong type, reads as "not Windows" and never raises.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from injector.core.pod import runs_on_windows

WINDOWS = {"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}
ZONE = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}


def required(*terms: Any) -> dict[str, Any]:
    return {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": list(terms)}}}}


def term(*expressions: Any) -> dict[str, Any]:
    return {"matchExpressions": list(expressions)}


@pytest.mark.parametrize(("pod_spec", "windows"), [
    ({}, False),
    ({"nodeSelector": {"kubernetes.io/os": "windows"}}, True),
    ({"nodeSelector": {"beta.kubernetes.io/os": "windows"}}, True),
    ({"nodeSelector": {"kubernetes.io/os": "Windows"}}, False),
    ({"nodeSelector": {"kubernetes.io/os": "linux"}}, False),
    (required(term(WINDOWS)), True),
    (required(term({**WINDOWS, "key": "beta.kubernetes.io/os"})), True),
    (required(term(ZONE, WINDOWS), term(WINDOWS)), True),
    (required(term(WINDOWS), term(ZONE)), False),  # terms are ORed: the second allows any OS
    (required(term(WINDOWS), {}), False),
    (required(), False),
    (required(term({**WINDOWS, "values": ["windows", "linux"]})), False),
    (required(term({**WINDOWS, "values": ["Windows"]})), False),
    (required(term({**WINDOWS, "operator": "NotIn", "values": ["linux"]})), False),
    (required(term({**WINDOWS, "operator": "Exists"})), False),
    (required({"matchFields": [WINDOWS]}), False),
    ({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "preference": term(WINDOWS)}]}}}, False),
    ({**required(term(WINDOWS)), "nodeSelector": {"kubernetes.io/os": "linux"}}, True),
])
def test_windows_from_node_selector_or_required_node_affinity(pod_spec, windows):
    assert runs_on_windows(pod_spec) is windows


@pytest.mark.parametrize("pod_spec", [
    {"nodeSelector": ["kubernetes.io/os", "windows"]},
    {"nodeSelector": None},
    {"affinity": "windows"},
    {"affinity": {"nodeAffinity": []}},
    {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term(WINDOWS)]}}},
    {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": "x"}}}},
    required(None),
    required(term(WINDOWS), "term"),
    required({"matchExpressions": WINDOWS}),
    required(term(None, 3, "kubernetes.io/os")),
    required(term({**WINDOWS, "values": "windows"})),
])
def test_malformed_affinity_reads_as_not_windows(pod_spec):
    assert runs_on_windows(pod_spec) is False


json = st.recursive(st.none() | st.booleans() | st.integers() | st.sampled_from(
    ["windows", "linux", "In", "kubernetes.io/os", "matchExpressions", "nodeSelectorTerms"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(
        ["key", "operator", "values", "matchExpressions", "nodeSelectorTerms", "nodeAffinity",
         "requiredDuringSchedulingIgnoredDuringExecution"]), children, max_size=3),
    max_leaves=12)
terms = st.lists(st.lists(st.sampled_from([WINDOWS, ZONE, {**WINDOWS, "values": ["linux"]}]), max_size=3)
                 .map(lambda expressions: term(*expressions)), max_size=4)


@settings(max_examples=200, deadline=None)
@given(affinity=json, node_selector=json)
def test_any_json_is_read_without_raising(affinity, node_selector):
    assert runs_on_windows({"affinity": affinity, "nodeSelector": node_selector}) in (True, False)


@settings(max_examples=200, deadline=None)
@given(terms=terms, preferred=terms)
def test_windows_exactly_when_every_required_term_pins_it(terms, preferred):
    """Terms are ORed and expressions ANDed: Windows only when every term carries the pin;
    preferred terms never count."""
    pod_spec = required(*terms)
    pod_spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] = [
        {"weight": 1, "preference": t} for t in preferred]
    expected = bool(terms) and all(WINDOWS in t["matchExpressions"] for t in terms)
    assert runs_on_windows(pod_spec) is expected
