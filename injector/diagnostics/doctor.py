"""Why a pod has, or has not, working AWS credentials: the findings of `doctor`. Pure.

Everything the checks need is gathered first into a `Case` (from files by `cli.doctor`, from
the cluster by `diagnostics.live`); `diagnose` then walks the checks in the order a person debugs:
the ServiceAccount, the webhook, the pod, each container's SDK, the token, the trust policy.
Each `Finding` has a stable `code` (docs/doctor.md), what was found and the fix. The identity
rules and the planner are the webhook's own, so the doctor cannot disagree with it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import posixpath
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonpatch

from injector.core.identity import (
    OUR_ANNOTATIONS,
    ConfigMapMapping,
    Identity,
    IdentityTables,
    Mode,
    near_misses,
    parse_expiration,
    resolve,
    service_account_entry,
)
from injector.core.planner import (
    AUTHORIZATION_TOKEN_FILE,
    CREDENTIALS_FULL_URI,
    DEFAULT_REGION,
    REGION,
    ROLE_ARN,
    STS_REGIONAL_ENDPOINTS,
    WEB_IDENTITY_TOKEN_FILE,
    container_choice,
    plan_mutation,
)
from injector.core.pod import containers_of, env_of, mapping, metadata, spec, token_source, volume_kind, volumes_of
from injector.core.role_arn import role_arn_problems
from injector.core.settings import WEB_IDENTITY_VOLUME_NAME, MutationSettings
from injector.diagnostics import trust_policy
from injector.diagnostics.webhook_config import SKIP_LABEL, describe_client, selector_matches

OK, FAIL, WARN, INFO = "ok", "fail", "warn", "info"
SYMBOLS = {OK: "✓", FAIL: "✗", WARN: "!", INFO: "·"}
SECTIONS = ("serviceaccount", "webhook", "pod", "containers", "token", "trust-policy")
_EKS_ISSUER = re.compile(r"https://oidc\.eks\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/id/[0-9A-Fa-f]+\Z")


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    status: str
    section: str
    message: str
    fix: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "status": self.status, "section": self.section, "message": self.message,
                "fix": self.fix, **({"details": dict(self.details)} if self.details else {})}


@dataclass(frozen=True, slots=True)
class WebhookView:
    """What the cluster says about the webhook that should see the pod (live only).

    `problems` are (code, message) pairs found while reading it: no ready endpoints, a
    caBundle that does not verify, an unreachable URL."""

    configuration: str
    webhook: Mapping[str, Any]
    problems: tuple[tuple[str, str], ...] = ()
    flags_from: str = ""


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """The result of checking a real token against what the issuer publishes (live only)."""

    ok: bool
    check: str
    message: str


@dataclass(frozen=True, slots=True)
class Case:
    pod: Mapping[str, Any]
    namespace: str
    service_account: Mapping[str, Any] | None
    settings: MutationSettings
    config_map: ConfigMapMapping = field(default_factory=ConfigMapMapping)
    pod_identities: frozenset[tuple[str, str]] = frozenset()
    live: bool = False
    namespace_labels: Mapping[str, str] | None = None
    webhook: WebhookView | None = None
    webhook_searched: bool = False  # live: the MutatingWebhookConfigurations were listed
    issuer: str = ""
    token: TokenCheck | None = None
    policy: Mapping[str, Any] | None = None
    # EKS Pod Identity role chaining: the association's role and its target's trust policy.
    association_role: str = ""
    target_policy: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()

    @property
    def stored(self) -> bool:
        """Admitted already: the webhook had its chance (live, or a `kubectl get -o yaml` copy)."""
        return self.live or bool(metadata(self.pod).get("uid"))

    @property
    def service_account_name(self) -> str:
        return str(mapping(self.pod.get("spec")).get("serviceAccountName") or "default")

    @property
    def pod_name(self) -> str:
        meta = metadata(self.pod)
        return f"{self.namespace}/{meta.get('name') or meta.get('generateName') or '?'}"


@dataclass(frozen=True, slots=True)
class Report:
    case: Case
    findings: tuple[Finding, ...]
    identity: Identity | None

    @property
    def failed(self) -> bool:
        return any(f.status == FAIL for f in self.findings)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def as_json(self) -> dict[str, Any]:
        return {"pod": self.case.pod_name, "serviceAccount": f"{self.case.namespace}/{self.case.service_account_name}",
                "credentials": not self.failed, "mode": self.identity.mode.value if self.identity else "",
                "roleArn": self.identity.role_arn if self.identity else "",
                "findings": [f.as_json() for f in self.findings]}


def _time(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _partition_account(role_arn: str) -> tuple[str, str]:
    parts = role_arn.split(":")
    return (parts[1], parts[4]) if len(parts) >= 6 else ("aws", "")


# -- the pod's volumes and containers -------------------------------------------------------------
def _token_behind(pod: Mapping[str, Any], container: Mapping[str, Any], path: str) -> tuple[dict | None, str]:
    """The projected token a file path in `container` reads, or why there is none."""
    path = path.removeprefix("C:").replace("\\", "/")
    by_name = volumes_of(spec(pod))
    for mount in container.get("volumeMounts") or []:
        base = str(mapping(mount).get("mountPath", "")).rstrip("/")
        if base and path.startswith(base + "/"):
            name = mount.get("name")
            token = token_source(by_name.get(name), posixpath.relpath(path, base))
            if token is not None:
                return token, ""
            kind = next((k for k in mapping(by_name.get(name)) if k != "name"), "missing")
            return None, f"{path} is on volume {name!r}, which is {kind}, not a projected serviceAccountToken"
    return None, f"no volume is mounted at {posixpath.dirname(path)} in this container"


# -- the checks -------------------------------------------------------------------------------------
class _Findings(list[Finding]):
    def add(self, code: str, status: str, section: str, message: str, fix: str = "", **details: Any) -> None:
        self.append(Finding(code, status, section, message, fix, details))


def resolve_identity(case: Case) -> tuple[Identity | None, str]:
    tables = IdentityTables(config_map=case.config_map, pod_identities=case.pod_identities)
    if case.service_account is not None:
        tables.service_accounts[f"{case.namespace}/{case.service_account_name}"] = service_account_entry(
            metadata(case.service_account).get("annotations"), case.settings)
    resolution = resolve(case.namespace, case.service_account_name, tables, case.settings)
    return resolution.identity, resolution.reason


def _check_service_account(case: Case, out: _Findings, identity: Identity | None, reason: str) -> None:
    s, name = "serviceaccount", f"{case.namespace}/{case.service_account_name}"
    annotate = (f"kubectl -n {case.namespace} annotate serviceaccount {case.service_account_name} "
                f"{case.settings.annotation('role-arn')}=arn:aws:iam::ACCOUNT:role/NAME")
    if case.service_account is None:
        where = "in the cluster" if case.live else "in the --service-account files"
        out.add("sa-not-found", FAIL if identity is None else WARN, s, f"ServiceAccount {name} not found {where}",
                f"create it (kubectl -n {case.namespace} create serviceaccount {case.service_account_name}), "
                "annotate it, then create the pod again" if case.live else
                "pass its manifest with --service-account FILE")
    else:
        out.add("sa-found", OK, s, f"ServiceAccount {name} exists")
    annotations = mapping(metadata(case.service_account).get("annotations"))
    role_key = case.settings.annotation("role-arn")
    misses = near_misses(annotations, case.settings)
    for key, meant, why in misses:
        status = FAIL if meant == role_key and identity is None else WARN
        out.add("near-miss-annotation", status, s, f"annotation {key!r} is not read by the webhook: {why}",
                f"rename it to {meant!r} (kubectl -n {case.namespace} annotate serviceaccount "
                f"{case.service_account_name} {key}- {meant}=…), then restart the pod", key=key, expected=meant)
    pod_annotations = mapping(metadata(case.pod).get("annotations"))
    service_account_only = ("role-arn", "audience", "sts-regional-endpoints")
    on_pod = [(k, "") for k in pod_annotations if k in {case.settings.annotation(n) for n in service_account_only}]
    on_pod += [(k, f" ({why})") for k, _, why in near_misses(pod_annotations, case.settings, service_account_only)]
    for key, why in on_pod:
        out.add("annotation-on-pod", WARN, s, f"pod annotation {key!r} is not read: the webhook takes it from the "
                f"ServiceAccount{why}", f"annotate the ServiceAccount {name} instead", key=key)
    raw_role = annotations.get(role_key)
    if identity is not None and identity.mode is Mode.CONTAINER_CREDENTIALS:
        out.add("identity-pod-identity", OK, s, f"{name} is listed in the EKS Pod Identity identities: container "
                "credentials (the role comes from the Pod Identity association, any role-arn is ignored)")
    elif raw_role:
        out.add("role-arn-present", OK, s, f"{role_key} = {identity.role_arn if identity else raw_role}")
    elif identity is not None:
        out.add("identity-from-config-map", OK, s, f"no {role_key}; the pod-identity-webhook ConfigMap maps {name} "
                f"to {identity.role_arn}")
    elif case.service_account is not None and not any(m[1] == role_key for m in misses):
        ours = sorted(k for k in annotations if k in {case.settings.annotation(n) for n in OUR_ANNOTATIONS})
        if ours:
            out.add("annotations-without-role-arn", FAIL, s, f"{name} has {', '.join(ours)} but no {role_key}: "
                    "without a role the webhook ignores the other annotations", annotate, annotations=ours)
        else:
            out.add("role-arn-missing", FAIL, s, f"{name} has no {role_key} annotation (and no ConfigMap entry or "
                    "Pod Identity association maps it)", annotate + ", then restart the pod")
    if identity is not None and identity.mode is Mode.WEB_IDENTITY:
        for code, message in role_arn_problems(identity.role_arn):
            out.add(code, FAIL, s, message, f"set {role_key} to a role ARN: arn:aws:iam::123456789012:role/NAME")
    entry = service_account_entry(annotations, case.settings)
    for problem in entry.problems:
        if "role-arn" not in problem:
            out.add("annotation-invalid", WARN, s, problem, "fix the value; the default is used meanwhile")


def injected(pod: Mapping[str, Any], identity: Identity, settings: MutationSettings) -> bool:
    name = settings.cc_volume_name if identity.mode is Mode.CONTAINER_CREDENTIALS else WEB_IDENTITY_VOLUME_NAME
    keys = (CREDENTIALS_FULL_URI,) if identity.mode is Mode.CONTAINER_CREDENTIALS else (ROLE_ARN,)
    # A volume of that name counts only as a token volume: any other is a collision (§volume-collision).
    return token_source(volumes_of(spec(pod)).get(name)) is not None or any(
        k in env_of(c) for _, c in containers_of(spec(pod)) for k in keys)


def _annotation_set_at(service_account: Mapping[str, Any] | None, key: str) -> dt.datetime | None:
    """When the role-arn annotation was last written, from the ServiceAccount's managedFields."""
    times = []
    for entry in metadata(service_account).get("managedFields") or []:
        owned = mapping(mapping(mapping(entry).get("fieldsV1")).get("f:metadata")).get("f:annotations") or {}
        if f"f:{key}" in owned and (when := _time(entry.get("time"))):
            times.append(when)
    return max(times) if times else None


def _check_webhook(case: Case, out: _Findings, stored_missing: bool) -> list[str]:
    """The registration (live): is there one, does it select the pod, can it be reached.
    Returns the codes that explain a pod the webhook did not mutate."""
    s, causes = "webhook", []
    severity = FAIL if stored_missing else WARN
    labels = mapping(metadata(case.pod).get("labels"))
    if case.webhook is None:
        if case.webhook_searched:
            out.add("webhook-not-registered", severity, s, "no MutatingWebhookConfiguration sends pod creations to "
                    "pod-identity-injector", "install it (deploy/webhook-configuration.yaml or the Helm chart)")
            causes.append("webhook-not-registered")
        elif labels.get(SKIP_LABEL) is not None:
            status = FAIL if not case.stored or stored_missing else WARN
            out.add("pod-skip-label", status, s, f"the pod has the label {SKIP_LABEL}, which the shipped "
                    "webhook configuration's objectSelector excludes", f"remove the label {SKIP_LABEL}")
            causes.append("pod-skip-label")
        return causes
    hook = case.webhook.webhook
    out.add("webhook-registered", OK, s, f"MutatingWebhookConfiguration {case.webhook.configuration}, webhook "
            f"{hook.get('name')} → {describe_client(hook)}, failurePolicy {hook.get('failurePolicy', 'Fail')}"
            + (f"; flags from {case.webhook.flags_from}" if case.webhook.flags_from else ""))
    matches, why = selector_matches(hook.get("objectSelector"), labels)
    if not matches:
        code = "pod-skip-label" if SKIP_LABEL in why else "pod-not-selected"
        out.add(code, FAIL if not case.stored or stored_missing else WARN, s,
                f"the webhook's objectSelector excludes the pod: {why}",
                f"remove the label {SKIP_LABEL}" if code == "pod-skip-label" else
                "change the pod's labels or the webhook's objectSelector")
        causes.append(code)
    if case.namespace_labels is not None:
        matches, why = selector_matches(hook.get("namespaceSelector"), case.namespace_labels)
        if not matches:
            out.add("namespace-not-selected", FAIL if not case.stored or stored_missing else WARN, s,
                    f"the webhook's namespaceSelector excludes namespace {case.namespace}: {why}",
                    _namespace_fix(case.namespace, why))
            causes.append("namespace-not-selected")
    for code, message in case.webhook.problems:
        out.add(code, severity, s, message, _WEBHOOK_FIXES.get(code, ""))
        causes.append(code)
    return causes


_WEBHOOK_FIXES = {
    "webhook-no-endpoints": "start the webhook's pods (kubectl -n NS rollout status deployment/…) and check their "
                            "readiness: with failurePolicy Ignore, pods created meanwhile get no credentials",
    "webhook-ca-mismatch": "put the CA that signed the serving certificate into the caBundle (the Helm chart and "
                           "--cert-mode=self-managed keep it in step)",
    "webhook-unreachable": "make the webhook's URL reachable from the API server",
}


def _check_pod(case: Case, out: _Findings, identity: Identity) -> dict[str, Any]:
    """What the webhook would do now, beside the pod as it is; returns the pod the SDK sees."""
    s, pod = "pod", dict(case.pod)
    plan = plan_mutation(pod, identity, case.settings, jitter=lambda low, high: high)
    volume_name = case.settings.cc_volume_name if identity.mode is Mode.CONTAINER_CREDENTIALS \
        else WEB_IDENTITY_VOLUME_NAME
    collided = volumes_of(spec(pod)).get(volume_name)
    if collided is not None and token_source(collided) is None:
        kind = volume_kind(collided)
        out.add("volume-name-collision", FAIL, s, f"the pod already has a volume {volume_name!r} ({kind}), not a "
                "projected serviceAccountToken: the webhook leaves the pod unchanged (§volume-collision)",
                f"rename the pod's volume {volume_name!r}")
    chooser_keys = [case.settings.annotation(name) for name in ("skip-containers", "include-containers")]
    annotations = mapping(metadata(pod).get("annotations"))
    choice = container_choice(annotations, spec(pod), case.settings)
    for name, problem, detail in choice.problems:
        key = case.settings.annotation(name)
        if problem == "unknown":
            out.add(f"{name}-unknown", WARN, s, f"{key} names {detail!r}, which is no container of the pod",
                    "fix the name")
        elif isinstance(annotations[key], str):  # a value of another type cannot come from the API server
            out.add(f"{name}-invalid", WARN, s, f"{key} {annotations[key]!r} is ignored: {detail}",
                    "write it as comma-separated container names")
    if spec(pod).get("hostNetwork") is True:
        out.add("host-network", WARN, s, "the pod uses hostNetwork: it reaches the node's instance metadata, so an "
                "SDK that cannot read its token file falls back to the node's role without an error",
                "keep hostNetwork off where you can; else make sure the token file is there (containers below)")
    key = case.settings.annotation("token-expiration")
    if annotations.get(key) is not None and parse_expiration(annotations[key]) is None:
        out.add("pod-token-expiration-invalid", WARN, s, f"pod annotation {key} {annotations[key]!r} is not an "
                "integer: the ServiceAccount's lifetime is used", "write it in seconds, e.g. 3600")
    name = metadata(pod).get("name")
    if identity.session_name and identity.mode is Mode.WEB_IDENTITY and isinstance(name, str) and len(name) == 1:
        out.add("session-name-too-short", WARN, s, f"the pod's name {name!r} is shorter than the 2 characters STS "
                "wants in a session name: AWS_ROLE_SESSION_NAME is not set", "give the pod a longer name")
    names = [c.get("name") for _, c in containers_of(spec(pod))]
    if names and all(isinstance(n, str) and choice.leaves_out(n) for n in names):
        out.add("no-container-has-credentials", FAIL, s, "skip-containers and include-containers leave out every "
                "container: none gets credentials", f"name the containers that need credentials in "
                f"{case.settings.annotation('include-containers')}, or remove them from "
                f"{case.settings.annotation('skip-containers')}")
    for note in plan.notes:
        if not any(key in note for key in chooser_keys) and "token-expiration" not in note:
            out.add("plan-note", INFO, s, note)
    if not case.stored:
        if plan.blocked:
            pass  # said above, as a failure
        elif plan.operations:
            out.add("pod-would-be-injected", OK, s, f"the webhook would add {len(plan.operations)} operations "
                    f"({identity.mode.value}), env and mount in: {', '.join(plan.injected) or 'no container'}",
                    operations=len(plan.operations))
        else:
            out.add("pod-already-injected", OK, s, "the pod already carries everything the webhook would add")
        return jsonpatch.apply_patch(pod, plan.operations) if plan.operations else pod
    if not plan.operations and not plan.blocked:
        out.add("pod-injected", OK, s, f"the pod was mutated at admission ({identity.mode.value})")
    elif injected(pod, identity, case.settings):
        out.add("pod-partially-injected", WARN, s, f"the pod was mutated, but the webhook would now still add "
                f"{len(plan.operations)} operations (containers {', '.join(plan.injected) or '-'})",
                "restart the pod's owner so the webhook sees the whole pod", operations=len(plan.operations))
    return pod


def _why_not_injected(case: Case, out: _Findings, causes: list[str], identity: Identity) -> None:
    s = "pod"
    created = _time(metadata(case.pod).get("creationTimestamp"))
    role_key = case.settings.annotation("role-arn")
    annotated = _annotation_set_at(case.service_account, role_key)
    if identity.mode is Mode.WEB_IDENTITY and created and annotated and annotated > created:
        out.add("pod-created-before-annotation", FAIL, s, f"the pod was created at {created:%Y-%m-%dT%H:%M:%SZ}, "
                f"before {role_key} was set on the ServiceAccount ({annotated:%Y-%m-%dT%H:%M:%SZ}): the webhook "
                "only mutates pods at creation", "restart the pod (or its owner: kubectl rollout restart …)")
        causes.append("pod-created-before-annotation")
    if any(finding.code == "volume-name-collision" for finding in out):
        causes.append("volume-name-collision")
    if not causes:
        unknown = "" if annotated or not case.service_account else (
            f"; or {role_key} was added after the pod was created (the ServiceAccount has no managedFields "
            "entry that says when)")
        out.add("pod-missed-by-webhook", FAIL, s, "the pod was not mutated and nothing today explains it: the "
                "webhook was probably unavailable or failed when the pod was created (failurePolicy Ignore "
                f"admits the pod unchanged){unknown}", "restart the pod (or its owner) now that the webhook is up")
    out.add("pod-not-injected", FAIL, s, "the pod has no injected credentials (no token volume, no AWS_ROLE_ARN or "
            f"{CREDENTIALS_FULL_URI})", "after fixing the cause, restart the pod (or its owner)", causes=causes)


def _check_containers(case: Case, out: _Findings, identity: Identity, pod: Mapping[str, Any]) -> None:
    s = "containers"
    choice = container_choice(mapping(metadata(pod).get("annotations")), spec(pod), case.settings)
    for kind, container in containers_of(spec(pod)):
        name = str(container.get("name"))
        label = f"{'init container' if kind == 'initContainers' else 'container'} {name}"
        env = env_of(container)
        original = next((c for k, c in containers_of(spec(case.pod)) if k == kind and c.get("name") == name), {})
        preset = {k: v for k, v in env_of(original).items()
                  if k in (ROLE_ARN, WEB_IDENTITY_TOKEN_FILE, CREDENTIALS_FULL_URI, AUTHORIZATION_TOKEN_FILE)}
        if container.get("envFrom"):
            out.add("env-from", WARN, s, f"{label} has envFrom: AWS_* variables from there are not seen here "
                    "(AWS_ACCESS_KEY_ID or AWS_PROFILE in them would take over)", "check the referenced "
                    "ConfigMaps/Secrets for AWS_* keys", container=name)
        if "AWS_ACCESS_KEY_ID" in env:
            out.add("sdk-static-keys", FAIL, s, f"{label} sets AWS_ACCESS_KEY_ID: the SDK uses those keys, not "
                    "the role (environment credentials come first in every SDK's chain)",
                    "remove AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from the container", container=name)
            continue
        if "AWS_PROFILE" in env:
            out.add("sdk-profile", WARN, s, f"{label} sets AWS_PROFILE={env['AWS_PROFILE']}: a profile with its "
                    "own credentials (or role_arn/source_profile) can take precedence over web identity",
                    "remove AWS_PROFILE unless the profile itself uses web_identity_token_file", container=name)
        if _mount_added_for_preset_file(original, container, identity, case.settings):
            out.add("token-mount-added", WARN, s, f"{label} names the token file in its env but does not mount it: "
                    "the webhook adds the mount (the Go webhook would not, and the SDK would find no file)",
                    "add the mount to the manifest, or leave the AWS_* pair to the webhook", container=name)
        if choice.leaves_out(name):
            why = "is in skip-containers" if name in choice.skip else "is not in include-containers"
            out.add("container-skipped", WARN, s, f"{label} {why}: it gets no credentials", container=name)
            continue
        if ROLE_ARN in env or WEB_IDENTITY_TOKEN_FILE in env:
            _web_identity_container(case, out, identity, pod, container, label, env, preset)
        elif CREDENTIALS_FULL_URI in env:
            _container_credentials(case, out, pod, container, label, env, preset)
        else:
            if not any(f.code == "volume-name-collision" for f in out):  # said once, for the pod
                out.add("container-no-credentials", FAIL, s, f"{label} has neither {ROLE_ARN} nor "
                        f"{CREDENTIALS_FULL_URI}: the SDK finds no credentials", "see the findings above",
                        container=name)
            continue
        _region(out, label, name, env)


def _mount_added_for_preset_file(original: Mapping[str, Any], container: Mapping[str, Any], identity: Identity,
                                 settings: MutationSettings) -> bool:
    """Whether the webhook mounts our volume into a container that named our token file itself."""
    cc = identity.mode is Mode.CONTAINER_CREDENTIALS
    volume = settings.cc_volume_name if cc else WEB_IDENTITY_VOLUME_NAME
    variable = AUTHORIZATION_TOKEN_FILE if cc else WEB_IDENTITY_TOKEN_FILE
    mount_path = settings.cc_mount_path if cc else settings.token_mount_path
    named = env_of(original).get(variable, "").removeprefix("C:").replace("\\", "/")
    mounted = {mapping(m).get("name") for m in original.get("volumeMounts") or ()}
    now = {mapping(m).get("name") for m in container.get("volumeMounts") or ()}
    return (named.startswith(mount_path.rstrip("/") + "/") and volume not in mounted and volume in now
            and all(k in env_of(original) for k in ((CREDENTIALS_FULL_URI, AUTHORIZATION_TOKEN_FILE) if cc
                                                     else (ROLE_ARN, WEB_IDENTITY_TOKEN_FILE))))


def _web_identity_container(case: Case, out: _Findings, identity: Identity, pod: Mapping[str, Any],
                            container: Mapping[str, Any], label: str, env: dict[str, str],
                            preset: dict[str, str]) -> None:
    s, name = "containers", str(container.get("name"))
    missing = [k for k in (ROLE_ARN, WEB_IDENTITY_TOKEN_FILE) if k not in env]
    if missing:
        out.add("env-preset", FAIL, s, f"{label} presets {', '.join(sorted(preset))} without {missing[0]}: one of "
                "the pair blocks the webhook from adding both", f"remove {', '.join(sorted(preset))} from the "
                "container and let the webhook add the pair", container=name)
        return
    token, why = _token_behind(pod, container, env[WEB_IDENTITY_TOKEN_FILE])
    if token is None:
        code = "env-preset" if preset else "sdk-token-file-not-mounted"
        out.add(code, FAIL, s, f"{label}: {WEB_IDENTITY_TOKEN_FILE}={env[WEB_IDENTITY_TOKEN_FILE]} but {why}"
                + (f" (preset in the manifest: {', '.join(sorted(preset))}, so the webhook left the container alone)"
                   if preset else ""),
                "remove the preset AWS_* variables so the webhook adds env and mount" if preset else
                "rename any volume of the pod named like the token volume, and restart the pod", container=name)
        return
    if identity.mode is Mode.WEB_IDENTITY and env[ROLE_ARN] != identity.role_arn:
        out.add("sdk-role-differs", WARN, s, f"{label} uses {ROLE_ARN}={env[ROLE_ARN]}, not the ServiceAccount's "
                f"{identity.role_arn} (preset in the manifest)", "remove the preset AWS_ROLE_ARN", container=name)
    out.add("sdk-web-identity", OK, s, f"{label}: web identity as {env[ROLE_ARN]}, token "
            f"{env[WEB_IDENTITY_TOKEN_FILE]} (audience {token.get('audience', '')!r}, "
            f"{token.get('expirationSeconds', 3600)} s)", container=name)


def _container_credentials(case: Case, out: _Findings, pod: Mapping[str, Any], container: Mapping[str, Any],
                           label: str, env: dict[str, str], preset: dict[str, str]) -> None:
    s, name = "containers", str(container.get("name"))
    path = env.get(AUTHORIZATION_TOKEN_FILE)
    token, why = _token_behind(pod, container, path) if path else (None, f"{AUTHORIZATION_TOKEN_FILE} is not set")
    if token is None:
        out.add("env-preset" if preset else "sdk-token-file-not-mounted", FAIL, s, f"{label}: {why}",
                "remove the preset AWS_CONTAINER_* variables so the webhook adds env and mount", container=name)
        return
    out.add("sdk-container-credentials", OK, s, f"{label}: container credentials from {env[CREDENTIALS_FULL_URI]}, "
            f"token {path}", container=name)


def _region(out: _Findings, label: str, name: str, env: dict[str, str]) -> None:
    s = "containers"
    region = env.get(REGION) or env.get(DEFAULT_REGION)
    if not region:
        out.add("sdk-no-region", WARN, s, f"{label} has no AWS_REGION or AWS_DEFAULT_REGION: the SDK may not find "
                "a region (or the STS endpoint) and fail before asking for credentials",
                "set --aws-default-region on the webhook, or AWS_REGION in the container", container=name)
    sts = env.get(STS_REGIONAL_ENDPOINTS)
    if region:
        endpoint = "regional STS" if sts == "regional" else "STS endpoint by the SDK's default"
        out.add("sdk-region", OK, s, f"{label}: region {region}, {endpoint}", container=name)
    if sts == "legacy":
        out.add("sdk-global-sts", WARN, s, f"{label} sets AWS_STS_REGIONAL_ENDPOINTS=legacy: calls go to the "
                "global sts.amazonaws.com endpoint", "annotate the ServiceAccount sts-regional-endpoints=true",
                container=name)


def issuer_problems(issuer: str) -> list[tuple[str, str, str]]:
    """(code, status, message) about an issuer URL as IAM sees it."""
    parts = urllib.parse.urlsplit(issuer)
    if parts.scheme != "https" or not parts.hostname:
        return [("issuer-not-https", FAIL, f"issuer {issuer!r} is not an https URL: IAM OIDC providers need one")]
    if _EKS_ISSUER.match(issuer):
        return [("issuer-ok", OK, f"issuer {issuer} (EKS hosts its documents)")]
    host = parts.hostname
    private = host in ("localhost",) or host.endswith((".svc", ".cluster.local", ".internal", ".local")) or \
        host.startswith("kubernetes.default")
    try:
        address = ipaddress.ip_address(host)
        private = private or not address.is_global
    except ValueError:
        pass
    if private:
        return [("issuer-private", WARN, f"issuer {issuer} is only reachable inside the cluster or a private "
                 "network: STS cannot fetch its keys (InvalidIdentityToken: Couldn't retrieve verification key "
                 "from your identity provider)")]
    return [("issuer-ok", OK, f"issuer {issuer}")]


def _check_token(case: Case, out: _Findings, identity: Identity, pod: Mapping[str, Any]) -> tuple[str, ...]:
    """Audience and lifetime as projected; the issuer; the real token (live). Returns the audiences."""
    s = "token"
    name = case.settings.cc_volume_name if identity.mode is Mode.CONTAINER_CREDENTIALS else WEB_IDENTITY_VOLUME_NAME
    token = token_source(volumes_of(spec(pod)).get(name))
    if token is None:
        return (identity.audience,)
    audience = token.get("audience", "")
    expiration = token.get("expirationSeconds", 3600)
    if identity.mode is Mode.CONTAINER_CREDENTIALS:
        out.add("token-projection", OK, s, f"projected token: audience {audience!r}, {expiration} s")
        return (audience,)
    if not audience:
        out.add("token-audience-empty", FAIL, s, "the projected token has no audience: it gets the API server's "
                "(InvalidIdentityToken: Incorrect token audience)", "remove an empty audience annotation")
    elif audience != "sts.amazonaws.com":
        out.add("token-audience-unusual", WARN, s, f"the projected token's audience is {audience!r}, not "
                "sts.amazonaws.com: the IAM OIDC provider must list it as a client ID, else STS answers "
                "InvalidIdentityToken: Incorrect token audience",
                f"aws iam add-client-id-to-open-id-connect-provider --client-id {audience} …")
    else:
        out.add("token-projection", OK, s, f"projected token: audience {audience!r}, {expiration} s "
                "(the kubelet refreshes it at 80% of its life)")
    if not case.issuer:
        out.add("issuer-unknown", INFO, s, "issuer not checked (pass --issuer URL)")
    else:
        for code, status, message in issuer_problems(case.issuer):
            out.add(code, status, s, message, "" if status == OK else "publish the issuer at a public https URL "
                    "(docs/self-hosted.md)")
    if case.token is not None:
        if case.token.ok:
            out.add("token-verified", OK, s, case.token.message)
        else:
            out.add("token-rejected", FAIL, s, f"a token as the pod gets it is refused ({case.token.check}): "
                    f"{case.token.message} — STS answers InvalidIdentityToken",
                    "see docs/self-hosted.md#verify (oidc verify --pod)")
    return (audience,)


def _check_trust_policy(case: Case, out: _Findings, identity: Identity, audiences: tuple[str, ...]) -> None:
    s = "trust-policy"
    if identity.mode is not Mode.WEB_IDENTITY:
        if case.policy is not None:
            _check_pod_identity_trust(case, out)
        if case.target_policy is not None:
            _check_chain(case, out)
        return
    if case.policy is None:
        return
    partition, account = _partition_account(identity.role_arn)
    sub = trust_policy.subject(case.namespace, case.service_account_name)
    request = trust_policy.web_identity_request(case.issuer, partition, account, sub, audiences)
    verdict = trust_policy.evaluate(case.policy, request)
    details = {"federated": request.federated, "sub": sub, "aud": list(audiences)}
    generate = (f"pod-identity-injector trust-policy --issuer {case.issuer} --account {account} "
                f"--partition {partition} {case.namespace}:{case.service_account_name}")
    if verdict.allowed:
        out.add("trust-policy-allows", OK, s, f"statement {verdict.decided_by} allows {sub} "
                f"({request.federated})", **details)
        return
    if verdict.explicit_deny:
        out.add("trust-policy-explicit-deny", FAIL, s, f"statement {verdict.decided_by} explicitly denies {sub} — "
                f"STS answers {verdict.error}", "narrow or remove the Deny statement", **details)
        return
    closest = verdict.closest
    if closest is None:
        out.add("trust-policy-no-statement", FAIL, s, f"no Allow statement — STS answers {verdict.error}",
                f"use: {generate}", **details)
        return
    error = verdict.error
    if closest.miss == "principal":
        error += (f" (or InvalidIdentityToken: No OpenIDConnect provider found in your account for {case.issuer}, "
                  "when IAM has no provider for this issuer)")
    out.add(f"trust-policy-{'condition' if closest.miss == 'unsupported' else closest.miss}", FAIL, s,
            f"statement {closest.label}: {closest.detail} — STS answers {error}", f"fix the statement, or use: "
            f"{generate}", **details)


def _check_pod_identity_trust(case: Case, out: _Findings) -> None:
    """EKS Pod Identity: the role must trust pods.eks.amazonaws.com with sts:AssumeRole and
    sts:TagSession (docs/doctor.md#trust-policy)."""
    s = "trust-policy"
    assert case.policy is not None
    gaps = trust_policy.pod_identity_gaps(case.policy)
    fix = "use: pod-identity-injector trust-policy --pod-identity --account ACCOUNT"
    for code, message in gaps:
        out.add(code, FAIL, s, f"{message} — the Pod Identity Agent cannot get credentials for this role"
                + (" (and a role chained from them loses the session tags)" if code == "trust-policy-tag-session"
                   else ""), fix)
    if not gaps:
        out.add("trust-policy-pod-identity-allows", OK, s, f"{trust_policy.POD_IDENTITY_SERVICE} may assume the "
                "role and tag the session (conditions are not evaluated)")


def _check_chain(case: Case, out: _Findings) -> None:
    """EKS Pod Identity with a target role: the agent assumes the association's role, then the
    target role with the session tags (docs/doctor.md#trust-policy)."""
    s = "trust-policy"
    assert case.target_policy is not None
    if not case.association_role:
        out.add("target-chain-unchecked", WARN, s, "a target role's trust policy was given but not the "
                "association's role, which it must trust", "pass --role-arn ARN (aws eks "
                "describe-pod-identity-association shows roleArn)")
        return
    gaps = trust_policy.chain_gaps(case.target_policy, case.association_role)
    fix = f"use: pod-identity-injector trust-policy --pod-identity --chained-from {case.association_role} " \
          "--account ACCOUNT"
    for code, message in gaps:
        out.add(code, FAIL, s, f"{message} — the Pod Identity Agent cannot chain to the target role"
                + (" (the session tags EKS set must be passed on)" if code.endswith("tag-session") else ""), fix)
    if not gaps:
        out.add("target-trust-policy-allows", OK, s, f"the target role trusts {case.association_role} to assume it "
                "and pass the session tags on (conditions are not evaluated)")


def diagnose(case: Case) -> Report:
    """Every check, in order; `Report.exit_code` is 0 when the pod gets working credentials."""
    out = _Findings()
    identity, reason = resolve_identity(case)
    _check_service_account(case, out, identity, reason)
    if identity is None:
        _check_webhook(case, out, stored_missing=False)
        return Report(case, tuple(out), None)
    missing = case.stored and not injected(case.pod, identity, case.settings)
    causes = _check_webhook(case, out, stored_missing=missing)
    if causes and not case.stored:
        return Report(case, tuple(out), identity)  # the webhook will not see it: nothing more to say
    pod = _check_pod(case, out, identity)
    if missing:
        _why_not_injected(case, out, causes, identity)
    else:
        _check_containers(case, out, identity, pod)
        audiences = _check_token(case, out, identity, pod)
        _check_trust_policy(case, out, identity, audiences)
    for note in case.notes:
        out.add("note", INFO, "pod", note)
    return Report(case, tuple(out), identity)


def render(report: Report) -> str:
    """One line per check, grouped by section: ✓/✗/! what was found — fix [code]."""
    lines = [f"pod {report.case.pod_name}, ServiceAccount {report.case.namespace}/{report.case.service_account_name}"]
    for section in SECTIONS:
        findings = [f for f in report.findings if f.section == section]
        if not findings:
            continue
        lines.append(section)
        for f in findings:
            fix = f" → fix: {f.fix}" if f.fix and f.status in (FAIL, WARN) else ""
            lines.append(f"  {SYMBOLS[f.status]} {f.message}{fix} [{f.code}]")
    problems = sum(f.status == FAIL for f in report.findings)
    if report.failed:
        lines.append(f"result: no working credentials ({problems} problem{'s' * (problems != 1)})")
    else:
        role = report.identity.role_arn or report.identity.mode.value if report.identity else ""
        lines.append(f"result: the pod gets credentials ({role})")
    return "\n".join(lines)


def _namespace_fix(namespace: str, why: str) -> str:
    """Excluded by name (the chart's list, or its own namespace), no label helps."""
    if not why.startswith("kubernetes.io/metadata.name NotIn"):
        return "label the namespace so the selector matches, or change the webhook's namespaceSelector"
    fix = (f"take {namespace} out of the webhook's namespaceSelector (chart: webhook.namespaceSelector."
           f"excludeNamespaces); the chart's own namespace is always excluded, so install it in a namespace of its own")
    if namespace == "kube-system":
        fix += ". The Go webhook and EKS mutate kube-system, where IRSA add-ons run (docs/migrate.md#kube-system)"
    return fix
