"""Who a pod is: the identity rules, from ServiceAccount annotations, the ConfigMap mapping
and the Pod Identity (container credentials) association list.

Everything here is pure: parsers turn raw inputs into small immutable entries, and
`resolve` applies the precedence rules of docs/mutation.md#precedence. The sources that feed the
tables (files, watches) live in `injector.sources`.
"""

from __future__ import annotations

import enum
import fnmatch
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from injector.core.role_arn import compose_role_arn, role_arn_problems
from injector.core.settings import DEFAULT_TOKEN_EXPIRATION, MutationSettings, clamp_expiration

_INT64 = re.compile(r"[+-]?[0-9]+\Z")
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


class Mode(enum.StrEnum):
    """Which credentials a pod gets; the values are the Go webhook's metric labels."""

    WEB_IDENTITY = "sts_web_identity"
    CONTAINER_CREDENTIALS = "container_credentials"


@dataclass(slots=True)  # built per admission, so not frozen (docs/performance.md#where-the-time-goes)
class Identity:
    """The resolved identity of one pod: all the planner needs besides settings."""

    mode: Mode
    role_arn: str
    audience: str
    regional_sts: bool
    token_expiration: int
    region: str = ""  # from the ServiceAccount (docs/mutation.md#region); "" means the flag's
    session_name: bool = False  # AWS_ROLE_SESSION_NAME from the pod's name (#session-name)


@dataclass(frozen=True, slots=True)
class RoleMapping:
    """One role mapping, from ServiceAccount annotations or a ConfigMap entry (both have this
    shape); `problems` are for the logs."""

    role_arn: str
    audience: str
    regional_sts: bool
    token_expiration: int
    problems: tuple[str, ...] = field(default=(), compare=False)
    # Short texts for admission warnings (docs/mutation.md#warnings). They take part in
    # equality, so an entry with warnings is never shared with the flag-defaults entry.
    warnings: tuple[str, ...] = ()
    annotated: tuple[str, ...] = ()  # which of our other annotations it has (for "no role-arn")
    region: str = ""  # ours: the region annotation, "" when absent or invalid
    session_name: bool = False  # ours: the role-session-name-from-pod annotation, else the flag

    def as_json(self) -> dict[str, Any]:
        """The Go webhook's debug dump shape (Go field names)."""
        return {
            "RoleARN": self.role_arn,
            "Audience": self.audience,
            "UseRegionalSTS": self.regional_sts,
            "TokenExpiration": self.token_expiration,
        }


def parse_go_int64(text: str) -> int | None:
    """`strconv.ParseInt(s, 10, 64)`: optional sign, digits only, int64 range."""
    if not _INT64.match(text):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def parse_expiration(raw: Any) -> int | None:
    """A token-expiration annotation: a Go base-10 int64, raised to 600; None when invalid."""
    parsed = parse_go_int64(raw) if isinstance(raw, str) else None
    return None if parsed is None else clamp_expiration(parsed)


def parse_go_bool(text: str) -> bool | None:
    """`strconv.ParseBool`: the twelve spellings Go accepts, anything else is None."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


OUR_ANNOTATIONS = ("role-arn", "audience", "sts-regional-endpoints", "token-expiration", "region",
                   "role-session-name-from-pod")
# Near misses of these are worth a warning; "region" is left out, because other tools' keys end
# in "/region" too (topology.kubernetes.io/region), and those are no typo of ours.
NEAR_MISS_NAMES = tuple(name for name in OUR_ANNOTATIONS if name != "region")
# An AWS region name: us-east-1, us-gov-west-1, cn-north-1, us-isob-east-1, …
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+\Z")


def parse_region(raw: Any) -> str | None:
    """The region annotation's value, or None when it does not look like a region name."""
    return raw if isinstance(raw, str) and _REGION.match(raw) else None


def _squash(name: str) -> str:
    return re.sub(r"[-_.]", "", name.lower())


def near_misses(annotations: Mapping[str, Any], settings: MutationSettings,
                names: tuple[str, ...] = NEAR_MISS_NAMES) -> list[tuple[str, str, str]]:
    """(key found, key meant, why) for keys the webhook does not read but a person meant it to."""
    found = []
    wanted = {_squash(n): n for n in names}
    for key in annotations:
        prefix, _, name = str(key).rpartition("/")
        meant = wanted.get(_squash(name))
        if meant is None or key == settings.annotation(meant):
            continue
        expected = settings.annotation(meant)
        if key.lower() == expected.lower():
            why = "wrong case (annotation keys are case-sensitive)"
        elif prefix == settings.annotation_prefix:
            why = f"{name!r} is not {meant!r}"
        elif not prefix:
            why = f"no prefix (the webhook reads {settings.annotation_prefix}/…)"
        elif _squash(prefix) == _squash(settings.annotation_prefix):
            why = f"{prefix!r} is not {settings.annotation_prefix!r}"
        else:
            why = f"wrong domain {prefix!r} (the webhook reads {settings.annotation_prefix}/…)"
        found.append((str(key), expected, why))
    return found


def _annotation_warnings(annotations: Mapping[str, Any], settings: MutationSettings) -> list[str]:
    """Near-miss keys (docs/mutation.md#warnings)."""
    return [f"ServiceAccount key {key} is ignored; use {meant}"
            for key, meant, _ in near_misses(annotations, settings)]


def _bool_annotation(annotations: Mapping[str, Any], key: str, default: bool, problems: list[str]) -> bool:
    """A boolean annotation as Go's ParseBool reads it; an invalid one is a problem, and the default."""
    raw = annotations.get(key)
    if raw is None:
        return default
    parsed = parse_go_bool(raw) if isinstance(raw, str) else None
    if parsed is None:
        problems.append(f"{key} {raw!r} is not a boolean; using the default")
        return default
    return parsed


def service_account_entry(annotations: Any, settings: MutationSettings) -> RoleMapping:
    """Parse a ServiceAccount's annotations (docs/mutation.md#service-account-annotations).

    Invalid values fall back to the flag defaults, as in the Go webhook, and are reported in
    `problems` so the edge can log them instead of failing silently.
    """
    problems: list[str] = []
    if annotations is not None and not isinstance(annotations, Mapping):
        problems.append(f"metadata.annotations is {type(annotations).__name__}, not a map; treated as none")
        annotations = None
    annotations = annotations or {}
    key = settings.annotation
    warnings = _annotation_warnings(annotations, settings)

    role_arn = annotations.get(key("role-arn"), "")
    if not isinstance(role_arn, str):
        role_arn = ""
    if role_arn:
        role_arn = compose_role_arn(role_arn, settings)
        arn_problems = role_arn_problems(role_arn)
        if arn_problems:
            problems.append(f"{key('role-arn')} {role_arn!r} does not look like an IAM role ARN: {arn_problems[0][1]}")

    audience = annotations.get(key("audience"), settings.token_audience)
    if not isinstance(audience, str):
        audience = settings.token_audience

    regional_sts = _bool_annotation(annotations, key("sts-regional-endpoints"), settings.sts_regional_endpoint,
                                    problems)

    expiration = settings.token_expiration
    raw = annotations.get(key("token-expiration"))
    if raw is not None:
        parsed_expiration = parse_expiration(raw)
        if parsed_expiration is None:
            problems.append(f"{key('token-expiration')} {raw!r} is not an integer; using the default")
            warnings.append(f"ServiceAccount token-expiration {raw!r:.20} is not an integer; using {expiration}")
        else:
            expiration = parsed_expiration

    region = ""
    raw = annotations.get(key("region"))
    if raw is not None:
        parsed_region = parse_region(raw)
        if parsed_region is None:
            problems.append(f"{key('region')} {raw!r} is not an AWS region name; using the default")
            warnings.append(f"ServiceAccount region {raw!r:.30} is not an AWS region; "
                            f"using {settings.aws_default_region or 'none'}")
        else:
            region = parsed_region

    session_name = _bool_annotation(annotations, key("role-session-name-from-pod"),
                                    settings.role_session_name_from_pod, problems)

    annotated = tuple(name for name in OUR_ANNOTATIONS[1:] if key(name) in annotations)
    return RoleMapping(role_arn, audience, regional_sts, expiration, tuple(problems), tuple(warnings), annotated,
                       region, session_name)


class ConfigMapError(ValueError):
    """The `config` document as a whole cannot be used; the previous mapping stays."""


_CM_FIELDS = {
    "rolearn": ("role_arn", str),
    "audience": ("audience", str),
    "useregionalsts": ("regional_sts", bool),
    "tokenexpiration": ("token_expiration", int),
}


def _config_map_entry(key: str, raw: Any, settings: MutationSettings) -> RoleMapping:
    if not isinstance(raw, dict):
        raise ConfigMapError(f"entry {key!r} is not an object")
    values: dict[str, Any] = {"role_arn": "", "audience": "", "regional_sts": False, "token_expiration": 0}
    for member, value in raw.items():
        known = _CM_FIELDS.get(member.lower())
        if known is None:
            continue  # unknown members are ignored, as Go's decoder does
        attr, kind = known
        if value is None:
            continue
        # JSON integers only for int: Go's int64 refuses true/false and 1.5.
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            raise ConfigMapError(f"entry {key!r}: {member} must be a {kind.__name__}, got {value!r}")
        values[attr] = value
    expiration = values["token_expiration"] or settings.token_expiration
    return RoleMapping(
        role_arn=values["role_arn"],
        # Improvement over the Go webhook: a missing audience means the default audience,
        # not a token STS would reject.
        audience=values["audience"] or settings.token_audience,
        regional_sts=values["regional_sts"],
        token_expiration=clamp_expiration(expiration),
        session_name=settings.role_session_name_from_pod,
    )


@dataclass(frozen=True, slots=True)
class ConfigMapMapping:
    """The `pod-identity-webhook` ConfigMap's mapping: exact keys, then namespace globs."""

    exact: Mapping[str, RoleMapping] = field(default_factory=dict)
    # (namespace pattern, service account name, entry), most specific pattern first.
    patterns: tuple[tuple[str, str, RoleMapping], ...] = ()
    rejected: tuple[str, ...] = field(default=(), compare=False)

    def lookup(self, namespace: str, name: str) -> RoleMapping | None:
        """Exact `namespace/name` wins; then the most specific glob (`team-*`, then `*`)."""
        entry = self.exact.get(f"{namespace}/{name}")
        if entry is not None:
            return entry
        for pattern, sa_name, candidate in self.patterns:
            if sa_name == name and fnmatch.fnmatchcase(namespace, pattern):
                return candidate
        return None

    def lookup_exact(self, namespace: str, name: str) -> RoleMapping | None:
        return self.exact.get(f"{namespace}/{name}")

    def __len__(self) -> int:
        return len(self.exact) + len(self.patterns)


EMPTY_CONFIG_MAP = ConfigMapMapping()


def parse_config_map(document: Any, settings: MutationSettings) -> ConfigMapMapping:
    """Parse the decoded `config` value (docs/mutation.md#config-map, with #differences).

    A wrong type anywhere rejects the whole document (as in Go); a malformed key is
    rejected on its own and reported in `rejected` instead of crashing.
    """
    if not isinstance(document, dict):
        raise ConfigMapError("the config value must be a JSON object of \"namespace/name\" keys")
    exact: dict[str, RoleMapping] = {}
    patterns: list[tuple[str, str, RoleMapping]] = []
    rejected: list[str] = []
    for key, raw in document.items():
        entry = _config_map_entry(key, raw, settings)
        namespace, sep, name = key.partition("/")
        if not sep or not namespace or not name or "/" in name:
            rejected.append(f"key {key!r} is not of the form \"namespace/serviceAccountName\"")
            continue
        if any(ch in namespace for ch in "*?["):
            patterns.append((namespace, name, entry))
        else:
            exact[key] = entry
    patterns.sort(key=lambda p: (-len(p[0].replace("*", "").replace("?", "")), p[0], p[1]))
    return ConfigMapMapping(exact, tuple(patterns), tuple(rejected))


# encoding/json's case-insensitive match of a key to a field name: ASCII letters fold, and
# so do the only two other runes whose fold set holds an ASCII letter (U+017F ſ, U+212A K).
_GO_FOLD = {**{c: c + 32 for c in range(ord("A"), ord("Z") + 1)}, 0x17F: ord("s"), 0x212A: ord("k")}


def go_json_members(obj: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The members of a decoded JSON object that Go's `json.Unmarshal` would store in a struct
    with these field names: a key matches a field exactly, else case-insensitively; a later key
    overwrites an earlier one, a null overwrites nothing, and unknown keys are ignored."""
    folded = {name.translate(_GO_FOLD): name for name in names}
    found: dict[str, Any] = {}
    for key, value in obj.items():
        name = key if key in names else folded.get(key.translate(_GO_FOLD))
        if name is not None and value is not None:
            found[name] = value
    return found


@dataclass(frozen=True, slots=True)
class SkippedIdentity:
    """An entry of the identities file that was left out, and why (for a log line)."""

    index: int
    entry: str  # the entry as JSON, shortened
    problem: str

    def __str__(self) -> str:
        return f"identities[{self.index}] {self.entry} skipped: {self.problem}"


@dataclass(frozen=True, slots=True)
class PodIdentities:
    """The identities file's associations, and the entries that could not be used."""

    pairs: frozenset[tuple[str, str]] = frozenset()
    skipped: tuple[SkippedIdentity, ...] = ()


def _short_json(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=repr)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _identity_pair(item: Any) -> str | tuple[str, str]:
    """The (namespace, serviceAccount) pair of one entry, or what is wrong with it."""
    if not isinstance(item, dict):
        return f"an entry must be an object, not {'null' if item is None else type(item).__name__}"
    members = go_json_members(item, ("namespace", "serviceAccount"))
    for name in ("namespace", "serviceAccount"):
        if not isinstance(members.get(name, ""), str):
            return f"\"{name}\" must be a string"
    namespace, name = members.get("namespace", ""), members.get("serviceAccount", "")
    if not namespace or not name:
        return "it needs a non-empty \"namespace\" and \"serviceAccount\""
    return namespace, name


def parse_pod_identities(document: Any) -> PodIdentities:
    """The container-credentials identities file: `{"identities":[{namespace, serviceAccount}]}`
    (docs/mutation.md#pod-identity-file).

    Keys match as Go's JSON decoding matches them. A document that is not of this shape is a
    `ValueError` (the caller keeps the previous set); a bad entry is only left out, in `skipped`.
    """
    if document is None:
        return PodIdentities()  # the JSON `null`: Go decodes it to an empty list
    if not isinstance(document, dict):
        raise ValueError("must be a JSON object with an \"identities\" list")
    items = go_json_members(document, ("identities",)).get("identities")
    if items is None:
        return PodIdentities()
    if not isinstance(items, list):
        raise ValueError("\"identities\" must be a list")
    pairs = set()
    skipped = []
    for index, item in enumerate(items):
        found = _identity_pair(item)
        if isinstance(found, str):
            skipped.append(SkippedIdentity(index, _short_json(item), found))
        else:
            pairs.add(found)
    return PodIdentities(frozenset(pairs), tuple(skipped))


@dataclass(slots=True)  # built per admission, so not frozen (docs/performance.md#where-the-time-goes)
class Resolution:
    """The outcome of identity resolution, with enough context for the decision log."""

    identity: Identity | None
    reason: str
    service_account_known: bool
    warnings: tuple[str, ...] = ()  # about the ServiceAccount's annotations, for the admission answer


@dataclass(slots=True)
class IdentityTables:
    """The current lookup tables; the sources replace members, `resolve` only reads them."""

    service_accounts: dict[str, RoleMapping] = field(default_factory=dict)
    config_map: ConfigMapMapping = EMPTY_CONFIG_MAP
    pod_identities: frozenset[tuple[str, str]] = frozenset()


def resolve(
    namespace: str, name: str, tables: IdentityTables, settings: MutationSettings
) -> Resolution:
    """Apply docs/mutation.md#precedence: Pod Identity > annotation > ConfigMap."""
    key = f"{namespace}/{name}"
    sa_entry = tables.service_accounts.get(key)
    known = sa_entry is not None

    if (namespace, name) in tables.pod_identities:
        # Container credentials: only the common settings come from the SA or ConfigMap;
        # any role ARN is ignored. The ConfigMap wildcard is not consulted here.
        common = sa_entry or tables.config_map.lookup_exact(namespace, name)
        regional_sts, expiration, region = (
            (common.regional_sts, common.token_expiration, common.region) if common
            else (False, DEFAULT_TOKEN_EXPIRATION, "")
        )
        identity = Identity(Mode.CONTAINER_CREDENTIALS, "", settings.cc_audience, regional_sts, expiration, region)
        return Resolution(identity, "pod-identity-association", known, sa_entry.warnings if sa_entry else ())

    warnings = sa_entry.warnings if sa_entry else ()
    if sa_entry is not None and not sa_entry.role_arn and sa_entry.annotated:
        warnings += (f"ServiceAccount has {', '.join(sa_entry.annotated)} but no "
                     f"{settings.annotation('role-arn')}; they are ignored",)
    if sa_entry is not None and sa_entry.role_arn:
        return Resolution(_web_identity(sa_entry), "service-account-annotation", True, warnings)

    cm_entry = tables.config_map.lookup(namespace, name)
    if cm_entry is not None and cm_entry.role_arn:
        return Resolution(_web_identity(cm_entry), "config-map", known, warnings)

    reason = "service-account-has-no-role" if known else "service-account-not-found"
    return Resolution(None, reason, known, warnings)


def _web_identity(entry: RoleMapping) -> Identity:
    return Identity(Mode.WEB_IDENTITY, entry.role_arn, entry.audience, entry.regional_sts, entry.token_expiration,
                    entry.region, entry.session_name)
