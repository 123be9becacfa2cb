"""Properties of the planner over random pods, identities and settings (§fine-grained,
§idempotent, and section 4 of docs/mutation.md):

* the operations apply cleanly and only add: the label, the token volume (first), env
  entries appended after the existing ones, one mount appended;
* every field the planner does not own is unchanged (the result with our additions removed
  equals the input);
* no operation replaces a whole container list;
* the result satisfies §env for every container, and planning it again yields nothing;
* a pod with a volume named like ours that is no projected token is left alone (§volume-collision).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonpatch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from injector.core.identity import Identity, Mode
from injector.core.planner import parse_skip_containers, plan_mutation
from injector.core.settings import (
    JITTER_FLOOR,
    POD_IDENTITY_LABEL,
    WEB_IDENTITY_VOLUME_NAME,
    MutationSettings,
)

WEB_IDENTITY_KEYS = ("AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")
CC_KEYS = ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
REGION_KEYS = ("AWS_REGION", "AWS_DEFAULT_REGION")
STS_KEY = "AWS_STS_REGIONAL_ENDPOINTS"
AWS_KEYS = (*WEB_IDENTITY_KEYS, *CC_KEYS, *REGION_KEYS, STS_KEY)
ENV_NAMES = (*AWS_KEYS, "HOME", "LOG_LEVEL", "AWS_PROFILE")
CC_VOLUME_NAMES = ("eks-pod-identity-token", "pod-identity")
VOLUME_NAMES = (WEB_IDENTITY_VOLUME_NAME, *CC_VOLUME_NAMES, "data", "cache")
CONTAINER_NAMES = ("app", "sidecar", "proxy", "init", "log shipper")
LABEL_PATH = "/metadata/labels/" + POD_IDENTITY_LABEL.replace("/", "~1")
ALLOWED_PATH = re.compile(
    r"/metadata(/labels(/eks\.amazonaws\.com~1pod-identity)?)?"
    r"|/spec/volumes(/0)?"
    r"|/spec/(initContainers|containers)/\d+/(env|volumeMounts)(/-)?"
)

# --- strategies -------------------------------------------------------------------------------

json_scalars = st.sampled_from([None, True, False, 0, 7, "", "v", "~1/"])
json_values = st.one_of(
    json_scalars,
    st.lists(json_scalars, max_size=2),
    st.dictionaries(st.sampled_from(["a", "b/c"]), json_scalars, max_size=2),
)
# Unknown fields: names no Kubernetes version uses, so they can never collide with ours.
unknown_fields = st.dictionaries(st.sampled_from(["xFuture", "xBeta", "x-extra", "zz"]), json_values, max_size=2)

env_entry = st.builds(
    lambda name, value: {"name": name, "value": value}, st.sampled_from(ENV_NAMES), st.sampled_from(["", "x", "1"])
)
mount_entry = st.builds(
    lambda name, path: {"name": name, "mountPath": path},
    st.sampled_from(VOLUME_NAMES),
    st.sampled_from(["/data", "/var/run/secrets/eks.amazonaws.com/serviceaccount"]),
)
TOKEN_SOURCE = {"projected": {"sources": [{"serviceAccountToken": {"audience": "x", "path": "token"}}]}}
# §windows: a required nodeAffinity that pins the pod to Windows nodes.
NODE_AFFINITY_WINDOWS = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]}]}}}
volume_entry = st.builds(lambda name, source: {"name": name, **source}, st.sampled_from(VOLUME_NAMES),
                         st.sampled_from([{"emptyDir": {}}, TOKEN_SOURCE]))

ABSENT = object()


def optional(strategy: st.SearchStrategy, *, null: bool = True) -> st.SearchStrategy:
    """A member that may be absent (ABSENT), explicitly null, or a value."""
    options = [st.just(ABSENT), strategy]
    if null:
        options.append(st.none())
    return st.one_of(*options)


@st.composite
def containers(draw, *, init: bool) -> dict[str, Any]:
    container: dict[str, Any] = {"name": draw(st.sampled_from(CONTAINER_NAMES)), "image": "registry.example/x:1"}
    container.update(draw(unknown_fields))
    if init and draw(st.booleans()):
        container["restartPolicy"] = "Always"
    for member, entry in (("env", env_entry), ("volumeMounts", mount_entry)):
        value = draw(optional(st.lists(entry, max_size=4)))
        if value is not ABSENT:
            container[member] = value
    return container


def set_optional(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not ABSENT:
        target[key] = value


@st.composite
def pods(draw) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    if draw(st.booleans()):
        metadata["name"] = "pod"
    else:
        metadata["generateName"] = "pod-"
    metadata.update(draw(unknown_fields))
    set_optional(metadata, "labels", draw(optional(st.dictionaries(
        st.sampled_from(["app", POD_IDENTITY_LABEL]), st.sampled_from(["web", "enabled", "disabled"]), max_size=2,
    ))))
    annotations: dict[str, str] = {}
    if draw(st.booleans()):
        names = draw(st.lists(st.sampled_from(CONTAINER_NAMES), max_size=2))
        annotations["eks.amazonaws.com/skip-containers"] = draw(
            st.sampled_from([",".join(names), ", ".join(names), '"' + ",".join(names)])
        )
    if draw(st.booleans()):
        annotations["eks.amazonaws.com/token-expiration"] = draw(st.sampled_from(["0", "3600", "86400", "x", "-1"]))
    if annotations or draw(st.booleans()):
        metadata["annotations"] = annotations

    spec: dict[str, Any] = {"serviceAccountName": "sa"}
    spec.update(draw(unknown_fields))
    spec["containers"] = draw(st.lists(containers(init=False), min_size=1, max_size=3))
    set_optional(spec, "initContainers", draw(optional(st.lists(containers(init=True), max_size=2), null=False)))
    set_optional(spec, "volumes", draw(optional(st.lists(volume_entry, max_size=3))))
    selector = draw(st.sampled_from([ABSENT, {"kubernetes.io/os": "windows"}, {"beta.kubernetes.io/os": "windows"},
                                     {"kubernetes.io/os": "linux"}, {"kubernetes.io/os": "Windows"}]))
    set_optional(spec, "nodeSelector", selector)
    set_optional(spec, "affinity", draw(st.sampled_from([ABSENT, None, "windows", NODE_AFFINITY_WINDOWS])))

    pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    pod.update(draw(unknown_fields))
    return pod


identities = st.builds(
    Identity,
    mode=st.sampled_from(list(Mode)),
    role_arn=st.sampled_from(["arn:aws:iam::111122223333:role/a", "arn:aws-cn:iam::111122223333:role/b"]),
    audience=st.sampled_from(["sts.amazonaws.com", "pods.eks.amazonaws.com", ""]),
    regional_sts=st.booleans(),
    token_expiration=st.sampled_from([600, 3600, 86400, 172800]),
)
mutation_settings = st.builds(
    MutationSettings,
    aws_default_region=st.sampled_from(["", "eu-west-1"]),
    token_mount_path=st.sampled_from(["/var/run/secrets/eks.amazonaws.com/serviceaccount", "/irsa/"]),
    cc_volume_name=st.sampled_from(CC_VOLUME_NAMES),
)
jitter_values = st.integers(JITTER_FLOOR, 86400)

# --- helpers ----------------------------------------------------------------------------------


def volume_name(identity: Identity, config: MutationSettings) -> str:
    return config.cc_volume_name if identity.mode is Mode.CONTAINER_CREDENTIALS else WEB_IDENTITY_VOLUME_NAME


def collides(pod: dict[str, Any], identity: Identity, config: MutationSettings) -> bool:
    """§volume-collision: a pod volume with our name that is not a projected token."""
    volumes = pod["spec"].get("volumes")
    return isinstance(volumes, list) and any(
        v["name"] == volume_name(identity, config) and "projected" not in v for v in volumes)


def identity_keys(identity: Identity) -> tuple[str, str]:
    return CC_KEYS if identity.mode is Mode.CONTAINER_CREDENTIALS else WEB_IDENTITY_KEYS


def names(items: Any) -> list[Any]:
    return [item.get("name") for item in items] if isinstance(items, list) else []


def skipped_names(pod: dict[str, Any]) -> frozenset[str]:
    value = pod["metadata"].get("annotations", {}).get("eks.amazonaws.com/skip-containers")
    return parse_skip_containers(value)[0] if isinstance(value, str) else frozenset()


def strip_list_additions(original: dict[str, Any], result: dict[str, Any], member: str) -> list[Any]:
    """Check `result[member]` is `original[member]` plus appended items; restore the original
    value (including absence / null) and return the appended items."""
    before = original.get(member)
    after = result.get(member)
    prefix = before if isinstance(before, list) else []
    if after is None:
        added: list[Any] = []
    else:
        assert isinstance(after, list)
        assert after[: len(prefix)] == prefix, f"{member}: existing entries changed or reordered"
        added = after[len(prefix):]
    if member in original:
        result[member] = copy.deepcopy(before)
    else:
        result.pop(member, None)
    return added


def strip_additions(pod: dict[str, Any], result: dict[str, Any], identity: Identity,
                    config: MutationSettings) -> dict[str, Any]:
    """Undo exactly what the planner owns, checking each addition's shape on the way."""
    result = copy.deepcopy(result)
    volume = volume_name(identity, config)
    # Label (container-credentials mode only).
    labels_before = pod["metadata"].get("labels", ABSENT)
    labels_after = result["metadata"].get("labels", ABSENT)
    if identity.mode is Mode.CONTAINER_CREDENTIALS:
        expected = dict(labels_before) if isinstance(labels_before, dict) else {}
        expected[POD_IDENTITY_LABEL] = "enabled"
        assert labels_after == expected
    else:
        assert labels_after == labels_before
    if labels_before is ABSENT:
        result["metadata"].pop("labels", None)
    else:
        result["metadata"]["labels"] = copy.deepcopy(labels_before)
    # Volume: prepended (or the list created) only when no volume has the name.
    before = pod["spec"].get("volumes")
    after = result["spec"].get("volumes")
    if volume in names(before):
        assert after == before
    else:
        assert isinstance(after, list) and after[0]["name"] == volume
        assert after[1:] == (before or [])
        if "volumes" in pod["spec"]:
            result["spec"]["volumes"] = copy.deepcopy(before)
        else:
            del result["spec"]["volumes"]
    # Containers: env entries appended from the AWS keys, at most one mount appended.
    for list_name in ("initContainers", "containers"):
        for original, mutated in zip(pod["spec"].get(list_name, []), result["spec"].get(list_name, []), strict=True):
            env_added = strip_list_additions(original, mutated, "env")
            assert all(set(entry) == {"name", "value"} and entry["name"] in AWS_KEYS for entry in env_added)
            mounts_added = strip_list_additions(original, mutated, "volumeMounts")
            ours = {"name": volume, "readOnly": True, "mountPath": mount_path(identity, config)}
            assert mounts_added in ([], [ours])
    return result


def mount_path(identity: Identity, config: MutationSettings) -> str:
    return config.cc_mount_path if identity.mode is Mode.CONTAINER_CREDENTIALS else config.token_mount_path


def plan(pod: dict[str, Any], identity: Identity, config: MutationSettings, jitter: int) -> list[dict[str, Any]]:
    return plan_mutation(pod, identity, config, jitter=lambda low, high: jitter).operations


PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- properties -------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(pod=pods(), identity=identities, config=mutation_settings, jitter=jitter_values)
def test_operations_apply_and_only_add_at_paths_the_planner_owns(pod, identity, config, jitter):
    """§fine-grained: fine-grained "add" operations; never a whole container list."""
    original = copy.deepcopy(pod)
    operations = plan(pod, identity, config, jitter)
    assert pod == original, "the planner must not modify its input"
    for operation in operations:
        assert operation["op"] == "add"
        assert ALLOWED_PATH.fullmatch(operation["path"]), operation["path"]
    jsonpatch.apply_patch(pod, operations)


@PROPERTY_SETTINGS
@given(pod=pods(), identity=identities, config=mutation_settings, jitter=jitter_values)
def test_every_field_the_planner_does_not_own_is_unchanged(pod, identity, config, jitter):
    """Removing our additions (label, first volume, appended env entries and mount) gives back
    the input exactly: unknown fields, existing env order and values all survive."""
    result = jsonpatch.apply_patch(pod, plan(pod, identity, config, jitter))
    if collides(pod, identity, config):
        assert result == pod, "§volume-collision: nothing is added, not even the label"
        return
    assert strip_additions(pod, result, identity, config) == pod


@PROPERTY_SETTINGS
@given(pod=pods(), identity=identities, config=mutation_settings, jitter=jitter_values)
def test_planning_the_result_again_yields_no_operations(pod, identity, config, jitter):
    """§idempotent: the planner is idempotent."""
    result = jsonpatch.apply_patch(pod, plan(pod, identity, config, jitter))
    assert plan(result, identity, config, jitter) == []


@PROPERTY_SETTINGS
@given(pod=pods(), identity=identities, config=mutation_settings, jitter=jitter_values)
def test_every_processed_container_ends_up_complete(pod, identity, config, jitter):
    """§env: after mutation each non-skipped container either was an early exit (left exactly
    as it was) or defines the identity group, the region group when a region is configured,
    the STS key when regional STS is on, and mounts the token volume; skipped containers are
    untouched (§skip-containers); exactly one pod volume carries the token volume's name (§pod-patch)."""
    result = jsonpatch.apply_patch(pod, plan(pod, identity, config, jitter))
    if collides(pod, identity, config):
        assert result == pod, "§volume-collision: the pod is left exactly as it was"
        return
    volume = volume_name(identity, config)
    skip = skipped_names(pod)
    for list_name in ("initContainers", "containers"):
        for original, mutated in zip(pod["spec"].get(list_name, []), result["spec"].get(list_name, []), strict=True):
            before = set(names(original.get("env")))
            early_exit = (any(k in before for k in identity_keys(identity)) and any(k in before for k in REGION_KEYS)
                          and STS_KEY in before)
            if original["name"] in skip or early_exit:
                assert mutated == original
                continue
            env = set(names(mutated.get("env")))
            assert any(k in env for k in identity_keys(identity))
            assert not config.aws_default_region or any(k in env for k in REGION_KEYS)
            assert not identity.regional_sts or STS_KEY in env
            assert volume in names(mutated.get("volumeMounts"))
    assert names(result["spec"]["volumes"]).count(volume) == max(1, names(pod["spec"].get("volumes")).count(volume))
