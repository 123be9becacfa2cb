"""Table-driven specification of the mutation (docs/mutation.md, every section).

Every file in tests/fixtures/planner/ is one case: identity inputs and flags, the pod as it
arrives and the whole resulting pod. The planner must produce fine-grained operations whose
application gives exactly that pod, without touching its input, and must have nothing left
to do when run again on its own result.
"""

from __future__ import annotations

import copy

import jsonpatch
import pytest

from injector.core import identity, planner

from planner_cases import (
    CITATION,
    FIXTURE_KEYS,
    JITTER_FLOOR,
    Case,
    doc_anchors,
    load_cases,
    settings_for,
    tables_for,
)

CASES = load_cases()
RULES = doc_anchors("mutation.md")
IDS = [case.id for case in CASES]
WHOLE_LISTS = {"/spec/containers", "/spec/initContainers"}


def pinned_jitter(low: int, high: int) -> int:
    """The container-credentials jitter, pinned to its lower bound (79200)."""
    assert (low, high) == (JITTER_FLOOR, 86400)
    return low


def plan(case: Case, pod: dict) -> list[dict]:
    settings = settings_for(case)
    resolution = identity.resolve(case.namespace, case.service_account_name, tables_for(case, settings), settings)
    if resolution.identity is None:
        return []
    return planner.plan_mutation(pod, resolution.identity, settings, jitter=pinned_jitter).operations


# Each of the Go webhook's 24 handler fixtures (pkg/handler/testdata) and the case of ours that covers it.
GO_FIXTURES = {
    "betaWindowsPodWithoutVolumes": "wi-windows-beta-os-selector",
    "windowsPodWithoutVolumes": "wi-windows-os-selector",
    "rawPodWithoutVolumes": "wi-baseline-creates-volumes",
    "rawPodWithVolumes": "wi-existing-volume-token-volume-inserted-first",
    "rawPodHasVolumeMount": "wi-volume-and-mount-named-aws-iam-token-already-present",
    "rawPodNeedsRegion": "wi-region-flag-injects-default-region-then-region",
    "rawPodRegionPresent": "wi-existing-region-kept-first-and-blocks-both-region-keys",
    "rawPodNeedsSTS": "wi-regional-sts-then-region-then-identity",
    "rawPodHasSTS": "wi-sts-and-one-region-key-present",
    "rawPodHasAll": "wi-identity-region-and-sts-present-container-untouched",
    "rawPodNoSTSAnnotationOverride": "wi-sa-sts-annotation-false-overrides-flag",
    "rawPodHasTokenExpiration": "wi-pod-token-expiration-annotation-overrides-sa",
    "rawPodMinTokenExpiration": "wi-pod-token-expiration-zero-raised-to-600",
    "rawPodSkip": "wi-skip-containers-and-role-arn-already-set",
    "rawPodWithInitContainer": "wi-init-containers-including-native-sidecar",
    "initPodNeedsRegion": "wi-init-and-regular-container-with-same-name",
    "rawPodWithGRPC": "wi-grpc-probes-preserved",
    "rawPodWithsecCompProfile": "wi-seccomp-profile-preserved",
    "containercredentials/rawPodWithoutVolumes": "cc-baseline-custom-flags-creates-labels-and-volumes",
    "containercredentials/rawPodWithVolume": "cc-existing-labels-and-volume",
    "containercredentials/rawPodWithConflictingVolumeMount": "cc-conflicting-volume-and-mount-by-name",
    "containercredentials/rawPodNeedsAll": "cc-sa-sts-and-expiration-with-region",
    "containercredentials/rawPodWithRoleArn": "cc-sa-role-arn-ignored",
    "containercredentials/rawPodSkip": "cc-skip-containers",
}


def test_every_go_fixture_case_has_a_counterpart():
    """The Go webhook's 24 fixture cases are all covered."""
    assert len(GO_FIXTURES) == 24
    assert set(GO_FIXTURES.values()) <= set(IDS)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fixture_is_well_formed(case: Case):
    assert set(case.data) <= FIXTURE_KEYS, f"unknown keys {set(case.data) - FIXTURE_KEYS}"
    description = case.data.get("description")
    assert isinstance(description, str), "describe the case"
    cited = set(CITATION.findall(description))
    assert cited, "cite the rule it exercises as §anchor (an anchor of docs/mutation.md)"
    assert cited <= RULES, f"no such rule in docs/mutation.md: {sorted(cited - RULES)}"
    assert isinstance(case.data.get("pod"), dict)
    pod_namespace = (case.data["pod"].get("metadata") or {}).get("namespace")
    assert pod_namespace in (None, case.namespace), "the pod's namespace must match the fixture's"
    if case.changes:
        assert case.data["expected"] != case.data["pod"], "an expected pod equal to the input: omit `expected`"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_applying_the_plan_gives_the_expected_pod(case: Case):
    """The resulting pod equals the Go webhook's result (docs/mutation.md#fine-grained)."""
    pod = case.pod
    operations = plan(case, pod)
    result = jsonpatch.apply_patch(copy.deepcopy(pod), operations)
    assert pod == case.data["pod"], "the planner must not modify its input"
    assert result == case.expected
    assert bool(operations) == case.changes


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_operations_are_fine_grained_additions(case: Case):
    """Never a replacement of a whole container list (docs/mutation.md#fine-grained)."""
    for operation in plan(case, case.pod):
        assert operation["op"] == "add"
        assert operation["path"] not in WHOLE_LISTS
        assert operation["path"] != "/spec"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_planning_the_result_again_yields_no_operations(case: Case):
    """Idempotence (docs/mutation.md#idempotent): reinvocation adds nothing."""
    result = jsonpatch.apply_patch(case.pod, plan(case, case.pod))
    assert plan(case, result) == []


WITH_WARNINGS = [case for case in CASES if "warnings" in case.data]


@pytest.mark.parametrize("case", WITH_WARNINGS, ids=[case.id for case in WITH_WARNINGS])
def test_the_pod_gets_exactly_the_warnings_the_fixture_lists(case: Case):
    """§warnings: what the ServiceAccount's resolution and the plan have to say, in that order."""
    settings = settings_for(case)
    resolution = identity.resolve(case.namespace, case.service_account_name, tables_for(case, settings), settings)
    warnings = list(resolution.warnings)
    if resolution.identity is not None:
        warnings += planner.plan_mutation(case.pod, resolution.identity, settings, jitter=pinned_jitter).warnings
    assert warnings == case.data["warnings"]


@pytest.mark.parametrize("case", [c for c in CASES if "§volume-collision" in c.data["description"]
                                  and "warnings" in c.data and c.data["warnings"]])
def test_a_volume_collision_leaves_the_pod_unchanged_and_says_why(case: Case):
    """§volume-collision: not one operation, the plan is marked blocked."""
    settings = settings_for(case)
    resolution = identity.resolve(case.namespace, case.service_account_name, tables_for(case, settings), settings)
    result = planner.plan_mutation(case.pod, resolution.identity, settings, jitter=pinned_jitter)
    assert (result.operations, result.blocked, case.changes) == ([], "volume-collision", False)


# --- rules the fixtures exercise only by example ----------------------------------------------

SKIP_CONTAINERS = [
    # (annotation value, names skipped) — one CSV record, names trimmed (docs/mutation.md#skip-containers)
    ("sidecar", {"sidecar"}),
    ("a,b", {"a", "b"}),
    ("a, b", {"a", "b"}),
    (" a ,b ", {"a", "b"}),
    ('"a","b"', {"a", "b"}),
    ('"a,b",c', {"a,b", "c"}),
    ('"a""b"', {'a"b'}),
    ("a,,b,", {"a", "b"}),
    ("a\nb", {"a"}),
    ("a\r\nb", {"a"}),
    ("\na", {"a"}),
    ("", set()),
    ('a"b', set()),
    ('"a', set()),
    ('"a"b', set()),
    ('sidecar,"proxy', set()),
]


@pytest.mark.parametrize(("value", "skipped"), SKIP_CONTAINERS, ids=[repr(v) for v, _ in SKIP_CONTAINERS])
def test_skip_containers_is_one_csv_record_with_trimmed_names(value: str, skipped: set[str]):
    """§skip-containers: one CSV record (only the first non-empty line, as Go's csv.Reader skips empty
    lines); a parse error or an empty value skips nothing."""
    names, _error = planner.parse_skip_containers(value)
    assert names == skipped


@pytest.mark.parametrize(
    ("parts", "joined"),
    [
        (("/var/run/secrets/eks.amazonaws.com/serviceaccount", "token"),
         "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"),
        (("/custom/path/", "token"), "/custom/path/token"),
        (("//custom//path", "jwt"), "/custom/path/jwt"),
        (("/custom/./path/../dir", "jwt"), "/custom/dir/jwt"),
        (("/custom", ""), "/custom"),
    ],
)
def test_token_file_path_is_joined_like_go_filepath_join(parts, joined):
    """§containers: the token file is filepath.Join(mountPath, tokenPath), which cleans the result."""
    assert planner.go_path_join(*parts) == joined


def test_windows_token_path_is_c_drive_with_backslashes():
    """§containers: "C:" + the path with every "/" replaced by "\\"."""
    assert planner.windows_path("/var/run/x/token") == "C:\\var\\run\\x\\token"
