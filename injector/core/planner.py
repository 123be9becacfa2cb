"""The mutation planner: (pod, identity, settings) → RFC 6902 operations. Pure, no I/O.

The pod is a raw dict straight from the AdmissionReview and is never re-serialised: every
operation adds exactly one thing we own (an env entry, a mount, the volume, the label) at
its own path, so fields this code does not know survive untouched. The *resulting pod*
equals the Go webhook's (docs/mutation.md, section 4), and planning a pod that already carries
everything yields no operations, which makes reinvocation safe.
"""

from __future__ import annotations

import posixpath
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from injector.core.identity import Identity, Mode, parse_expiration
from injector.core.pod import containers_of, mapping, names_of, runs_on_windows, token_source, volume_kind
from injector.core.settings import (
    DEFAULT_TOKEN_EXPIRATION,
    JITTER_FLOOR,
    POD_IDENTITY_LABEL,
    WEB_IDENTITY_TOKEN_PATH,
    WEB_IDENTITY_VOLUME_NAME,
    MutationSettings,
)

Operation = dict[str, Any]
Jitter = Callable[[int, int], int]

ROLE_ARN = "AWS_ROLE_ARN"
WEB_IDENTITY_TOKEN_FILE = "AWS_WEB_IDENTITY_TOKEN_FILE"
CREDENTIALS_FULL_URI = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
AUTHORIZATION_TOKEN_FILE = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
REGION = "AWS_REGION"
DEFAULT_REGION = "AWS_DEFAULT_REGION"
STS_REGIONAL_ENDPOINTS = "AWS_STS_REGIONAL_ENDPOINTS"
SESSION_NAME = "AWS_ROLE_SESSION_NAME"
TOKEN_FILE_VARIABLES = (WEB_IDENTITY_TOKEN_FILE, AUTHORIZATION_TOKEN_FILE)
SESSION_NAME_MAX = 64  # STS's limit for RoleSessionName
# Env that makes an SDK pass over the injected credentials (docs/mutation.md#warnings).
OVERRIDING_ENV = {
    "AWS_ACCESS_KEY_ID": "SDKs use those keys, not the role",
    "AWS_PROFILE": "its profile may take precedence over the role",
}


@dataclass(slots=True)  # built per admission, so not frozen (docs/performance.md#where-the-time-goes)
class Plan:
    """The operations plus what the decision log wants to say about them."""

    operations: list[Operation]
    token_expiration: int
    injected: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    # What the person applying the pod should hear (docs/mutation.md#warnings), unprefixed.
    warnings: tuple[str, ...] = ()
    # Why the pod is left alone on purpose although it has an identity ("volume-collision"), or "".
    blocked: str = ""

    @property
    def changes(self) -> bool:
        return bool(self.operations)


@dataclass(slots=True)  # built per admission, so not frozen (docs/performance.md#where-the-time-goes)
class _Layout:
    """Names and paths of the active mode, derived once per plan."""

    volume_name: str
    mount_path: str
    token_path: str
    token_file: str
    identity_env: dict[str, str]  # the mode's env pair, name → value, in the order they are added
    file_env: str  # the member of the pair that names the token file


@lru_cache(maxsize=64)  # a handful of (mount path, token path) pairs, asked for every pod
def go_path_join(*parts: str) -> str:
    """Go's `filepath.Join` on Unix: join the non-empty parts, then `Clean`."""
    joined = "/".join(p for p in parts if p)
    if not joined:
        return ""
    cleaned = posixpath.normpath(joined)
    # POSIX keeps a leading "//"; Go's Clean does not.
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def windows_path(path: str) -> str:
    """The token file as a Windows container sees it: `C:` + backslashes."""
    return "C:" + path.replace("/", "\\")


def parse_skip_containers(value: str, annotation: str = "skip-containers") -> tuple[frozenset[str], str | None]:
    """Parse the skip-containers (or include-containers) annotation as one CSV record, like Go's
    encoding/csv.

    Returns the names (whitespace-trimmed, an improvement on the Go webhook) and an error
    text; on error the annotation is ignored.
    """
    value = value.lstrip("\r\n")  # encoding/csv skips empty lines before the record
    line = value.split("\n", 1)[0].rstrip("\r") if '"' not in value else value
    if not line:
        return frozenset(), f"{annotation} annotation is empty"
    fields: list[str] = []
    i, n = 0, len(line)
    while True:
        if i < n and line[i] == '"':
            i += 1
            buf = []
            while True:
                j = line.find('"', i)
                if j < 0:
                    return frozenset(), 'extraneous or missing " in quoted field'
                buf.append(line[i:j])
                if j + 1 < n and line[j + 1] == '"':
                    buf.append('"')
                    i = j + 2
                    continue
                i = j + 1
                break
            field_text = "".join(buf)
            if i < n and line[i] not in ",\n":
                return frozenset(), 'extraneous or missing " in quoted field'
        else:
            end = n
            for stop in (",", "\n"):
                k = line.find(stop, i)
                if 0 <= k < end:
                    end = k
            field_text = line[i:end]
            if '"' in field_text:
                return frozenset(), 'bare " in non-quoted field'
            i = end
        fields.append(field_text)
        if i < n and line[i] == ",":
            i += 1
            continue
        break
    return frozenset(f.strip() for f in fields if f.strip()), None


def _layout(identity: Identity, settings: MutationSettings, windows: bool) -> _Layout:
    if identity.mode is Mode.CONTAINER_CREDENTIALS:
        volume, mount, token = settings.cc_volume_name, settings.cc_mount_path, settings.cc_token_path
        first, first_value = CREDENTIALS_FULL_URI, settings.cc_full_uri
        second = AUTHORIZATION_TOKEN_FILE
    else:
        volume, mount, token = WEB_IDENTITY_VOLUME_NAME, settings.token_mount_path, WEB_IDENTITY_TOKEN_PATH
        first, first_value = ROLE_ARN, identity.role_arn
        second = WEB_IDENTITY_TOKEN_FILE
    token_file = go_path_join(mount, token)
    if windows:
        token_file = windows_path(token_file)
    return _Layout(volume, mount, token, token_file, {first: first_value, second: token_file}, second)


@dataclass(frozen=True, slots=True)
class ContainerChoice:
    """Which containers a pod's annotations leave without credentials (§skip-containers):
    every one skip-containers names and, with include-containers, every one it does not name.
    Skip wins over include."""

    skip: frozenset[str] = frozenset()
    include: frozenset[str] | None = None
    # (annotation name, "invalid" or "unknown", the parse error or the name that is no container)
    problems: tuple[tuple[str, str, str], ...] = ()

    def leaves_out(self, name: Any) -> bool:
        return name in self.skip or (self.include is not None and name not in self.include)


NO_CHOICE = ContainerChoice()


def container_choice(annotations: dict[str, Any], spec: dict[str, Any], settings: MutationSettings,
                     ) -> ContainerChoice:
    """Read skip-containers and include-containers; a malformed one is ignored, and it and a
    name that is no container are `problems` (the planner warns, doctor explains)."""
    if not annotations:
        return NO_CHOICE
    lists: dict[str, frozenset[str] | None] = {"skip-containers": None, "include-containers": None}
    problems: list[tuple[str, str, str]] = []
    for name in lists:
        key = settings.annotation(name)
        if key not in annotations:
            continue
        raw = annotations[key]
        names, error = parse_skip_containers(raw, name) if isinstance(raw, str) else (frozenset(), "not a string")
        if error:
            problems.append((name, "invalid", error))
            continue
        lists[name] = names
        problems += [(name, "unknown", unknown) for unknown in unknown_containers(spec, names)]
    return ContainerChoice(lists["skip-containers"] or frozenset(), lists["include-containers"], tuple(problems))


def unknown_containers(spec: dict[str, Any], wanted: frozenset[str]) -> list[str]:
    """The names in `wanted` (skip-containers) that are no container or init container of `spec`."""
    return sorted(wanted - {c.get("name") for _, c in containers_of(spec)})


def token_expiration(annotations: dict[str, Any], identity: Identity, settings: MutationSettings,
                     jitter: Jitter, notes: list[str], warnings: list[str]) -> int:
    """Pod annotation (of the pod's `annotations`) > identity value; the container-credentials
    default gets jitter."""
    seconds = identity.token_expiration
    key = settings.annotation("token-expiration") if annotations else ""  # most pods have none
    raw = annotations.get(key)
    if raw is not None:
        parsed = parse_expiration(raw)
        if parsed is None:
            notes.append(f"pod annotation {key} {raw!r} is not an integer; using {seconds}")
            warnings.append(f"pod token-expiration {raw!r:.20} is not an integer; using {seconds}")
        else:
            seconds = parsed
    if identity.mode is Mode.CONTAINER_CREDENTIALS and seconds == DEFAULT_TOKEN_EXPIRATION:
        seconds = jitter(JITTER_FLOOR, DEFAULT_TOKEN_EXPIRATION)
    return seconds


def _container_env(identity: Identity, settings: MutationSettings, layout: _Layout,
                   present: set[str], session: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """The env entries to append, or None when the container is already complete (§env)."""
    identity_defined = not present.isdisjoint(layout.identity_env)
    region_defined = REGION in present or DEFAULT_REGION in present
    sts_defined = STS_REGIONAL_ENDPOINTS in present
    if identity_defined and region_defined and sts_defined:
        return None
    env: list[dict[str, Any]] = []
    if identity.regional_sts and not sts_defined:
        env.append({"name": STS_REGIONAL_ENDPOINTS, "value": "regional"})
    region = identity.region or settings.aws_default_region  # §region: the ServiceAccount's wins
    if region and not region_defined:
        env.append({"name": DEFAULT_REGION, "value": region})
        env.append({"name": REGION, "value": region})
    if not identity_defined:
        env += [{"name": name, "value": value} for name, value in layout.identity_env.items()]
        if session is not None and SESSION_NAME not in present:
            env.append(session)
    return env


def session_name_env(metadata: dict[str, Any], identity: Identity, warnings: list[str]) -> dict[str, Any] | None:
    """AWS_ROLE_SESSION_NAME for an opted-in web-identity pod (§session-name), or None.

    The pod's name comes through the downward API, so a pod made from generateName (whose name
    the API server picks after admission) gets its final name. STS wants 2-64 characters of
    `[\\w+=,.@-]`: pod names are always in that set, and a generated name is at most 63 long;
    a longer chosen name is cut to 64 here, and a one-character name gets no session name.
    """
    if not identity.session_name or identity.mode is not Mode.WEB_IDENTITY:
        return None
    name = metadata.get("name")
    if isinstance(name, str) and len(name) > SESSION_NAME_MAX:
        return {"name": SESSION_NAME, "value": name[:SESSION_NAME_MAX]}
    if isinstance(name, str) and len(name) == 1:
        warnings.append(f"pod name {name!r} is too short for an STS session name; {SESSION_NAME} not set")
        return None
    return {"name": SESSION_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}


def _append(ops: list[Operation], base: str, member: str, current: Any, items: list[Any]) -> None:
    """Add `items` to the list at `base/member`: create it when absent, else append each."""
    if not items:
        return
    if current is None:
        ops.append({"op": "add", "path": f"{base}/{member}", "value": items})
    else:
        path = f"{base}/{member}/-"
        ops.extend([{"op": "add", "path": path, "value": item} for item in items])


@dataclass(slots=True)
class _Draft:
    """The plan being built: operations so far, and what the decision log will say."""

    ops: list[Operation] = field(default_factory=list)
    injected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _plan_containers(draft: _Draft, list_name: str, containers: Any, choice: ContainerChoice, identity: Identity,
                     settings: MutationSettings, layout: _Layout, session: dict[str, Any] | None) -> None:
    """Env and mount operations for one container list."""
    ops, notes = draft.ops, draft.notes
    if not isinstance(containers, list):
        return
    mount = {"name": layout.volume_name, "readOnly": True, "mountPath": layout.mount_path}
    for index, container in enumerate(containers):
        if not isinstance(container, dict):
            notes.append(f"{list_name}[{index}] is not an object; left alone")
            continue
        name = container.get("name")
        if choice.leaves_out(name):
            draft.skipped.append(str(name))
            continue
        env, mounts = container.get("env"), container.get("volumeMounts")
        if (env is not None and not isinstance(env, list)) or (
            mounts is not None and not isinstance(mounts, list)
        ):
            notes.append(f"{list_name}[{index}] has a malformed env or volumeMounts; left alone")
            continue
        present = names_of(env)
        draft.warnings += _env_warnings(name, env, present, layout)
        new_env = _container_env(identity, settings, layout, present, session)
        mount_missing = layout.volume_name not in names_of(mounts)
        # §env, ours: where Go stops early although the env names our file, the mount is added.
        add_mount = mount_missing and (new_env is not None or _literal(env, layout.file_env) == layout.token_file)
        final_mounts = [*(mounts or ()), *([mount] if add_mount else [])]
        for variable in TOKEN_FILE_VARIABLES:
            path = _literal(env, variable)
            if path and path != layout.token_file and not _mounted(path, final_mounts):
                draft.warnings.append(f"container {name} sets {variable} to a path no volume of it mounts")
        if add_mount and any(isinstance(m, dict) and m.get("mountPath") == layout.mount_path for m in mounts or ()):
            # Go's result too (its issue #159): the API server refuses two mounts at one path.
            draft.warnings.append(f"container {name} already mounts a volume at {layout.mount_path}; "
                                  "the pod will be refused")
        if not new_env and not add_mount:
            continue  # already complete: untouched, not even a mount (Go's early exit)
        base = f"/spec/{list_name}/{index}"
        _append(ops, base, "env", env, new_env or [])
        if add_mount:
            _append(ops, base, "volumeMounts", mounts, [dict(mount)])
            if new_env is None:
                draft.warnings.append(f"container {name} names the token file but does not mount it; mount added")
        draft.injected.append(str(name))


def _literal(env: Any, name: str) -> str:
    """The literal value of env entry `name` ("" when absent or from valueFrom)."""
    for item in env or ():
        if isinstance(item, dict) and item.get("name") == name and "valueFrom" not in item:
            value = item.get("value")
            return value if isinstance(value, str) else ""
    return ""


def _mounted(path: str, mounts: Any) -> bool:
    """Whether a volume mount of the container holds `path` (a Windows path read as Linux)."""
    path = path.removeprefix("C:").replace("\\", "/")
    return any(isinstance(m, dict) and isinstance(m.get("mountPath"), str) and m["mountPath"].rstrip("/")
               and path.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts or ())


def _env_warnings(name: Any, env: Any, present: set[str], layout: _Layout) -> list[str]:
    """What in a container's own env keeps it from using the injected credentials (§warnings)."""
    warnings = [f"container {name} sets {key}: {why}" for key, why in OVERRIDING_ENV.items() if key in present]
    given = [key for key in layout.identity_env if key in present]
    if len(given) == 1:
        missing = next(key for key in layout.identity_env if key not in present)
        warnings.append(f"container {name}: {given[0]} without {missing}; nothing injected")
    elif given and (preset := _preset(env, layout)):
        warnings.append(f"container {name} presets {', '.join(preset)}; no credentials injected into it")
    return warnings


def _preset(env: Any, layout: _Layout) -> list[str]:
    """The mode's env pair as set by someone else (another value, or valueFrom): it blocks ours (§env).

    Our own values, as a reinvocation sees them, are not a preset."""
    ours = layout.identity_env
    return [item["name"] for item in env or () if isinstance(item, dict) and item.get("name") in ours
            and (item.get("value") != ours[item["name"]] or "valueFrom" in item)]


def _taken(volumes: Any, name: str) -> dict[str, Any] | None:
    """The pod's volume called `name` if it is not a projected token (§volume-collision), else None."""
    for volume in volumes if isinstance(volumes, list) else ():
        if isinstance(volume, dict) and volume.get("name") == name and token_source(volume) is None:
            return volume
    return None


def _volume(layout: _Layout, audience: str, expiration: int) -> dict[str, Any]:
    token: dict[str, Any] = {"audience": audience} if audience else {}
    token["expirationSeconds"] = expiration
    token["path"] = layout.token_path
    return {"name": layout.volume_name, "projected": {"sources": [{"serviceAccountToken": token}]}}


def plan_mutation(pod: dict[str, Any], identity: Identity, settings: MutationSettings,
                  jitter: Jitter = random.randint) -> Plan:
    """Plan the operations that give `pod` its AWS identity.

    `jitter(low, high)` is injected so tests can pin the container-credentials default.
    """
    notes: list[str] = []
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return Plan([], identity.token_expiration, notes=("pod has no spec; nothing to do",))
    metadata = pod.get("metadata")
    annotations = mapping(mapping(metadata).get("annotations"))

    warnings: list[str] = []
    choice = container_choice(annotations, spec, settings)
    for name, problem, detail in choice.problems:
        if problem == "unknown":
            warnings.append(f"{name} names {detail}, which is no container of this pod")
            continue
        notes.append(f"pod annotation {settings.annotation(name)} ignored: {detail}")
        if name == "include-containers":
            warnings.append(f"include-containers ignored ({detail}): every container gets credentials")
        else:
            warnings.append(f"skip-containers ignored ({detail}): no container is skipped")
    names = [container.get("name") for _, container in containers_of(spec)]
    if names and all(isinstance(name, str) and choice.leaves_out(name) for name in names):
        warnings.append("skip-containers and include-containers leave out every container; none gets credentials")

    layout = _layout(identity, settings, runs_on_windows(spec))
    expiration = token_expiration(annotations, identity, settings, jitter, notes, warnings)

    volumes = spec.get("volumes")
    volume_names = names_of(volumes)
    taken = _taken(volumes, layout.volume_name) if layout.volume_name in volume_names else None
    if taken is not None:
        # §volume-collision (ours): env and mount would point the SDK at a file we do not control.
        kind = volume_kind(taken)
        warnings.append(f"volume {layout.volume_name} ({kind}) already exists; pod left without AWS credentials")
        notes.append(f"the pod's volume {layout.volume_name!r} is {kind}, not a projected serviceAccountToken: "
                     "nothing injected")
        return Plan([], expiration, notes=tuple(notes), warnings=tuple(warnings), blocked="volume-collision")

    ops: list[Operation] = []
    if identity.mode is Mode.CONTAINER_CREDENTIALS:
        labels = mapping(metadata).get("labels")
        if not isinstance(metadata, dict):
            ops.append({"op": "add", "path": "/metadata", "value": {"labels": {POD_IDENTITY_LABEL: "enabled"}}})
        elif not isinstance(labels, dict):
            ops.append({"op": "add", "path": "/metadata/labels", "value": {POD_IDENTITY_LABEL: "enabled"}})
        elif labels.get(POD_IDENTITY_LABEL) != "enabled":
            path = "/metadata/labels/" + POD_IDENTITY_LABEL.replace("~", "~0").replace("/", "~1")
            ops.append({"op": "add", "path": path, "value": "enabled"})

    if volumes is None:
        ops.append({"op": "add", "path": "/spec/volumes", "value": [_volume(layout, identity.audience, expiration)]})
    elif not isinstance(volumes, list):
        notes.append("spec.volumes is not a list; no token volume added")
    elif layout.volume_name not in volume_names:
        # Inserted first, as the Go webhook does.
        ops.append({"op": "add", "path": "/spec/volumes/0", "value": _volume(layout, identity.audience, expiration)})

    if spec.get("hostNetwork") is True:
        warnings.append("hostNetwork pod: an SDK that misses its token may use the node's role (instance metadata)")
    session = session_name_env(mapping(metadata), identity, warnings)
    draft = _Draft(ops, [], [], notes, warnings)
    for list_name in ("initContainers", "containers"):
        _plan_containers(draft, list_name, spec.get(list_name), choice, identity, settings, layout, session)
    return Plan(ops, expiration, tuple(draft.injected), tuple(draft.skipped), tuple(notes), tuple(warnings))

