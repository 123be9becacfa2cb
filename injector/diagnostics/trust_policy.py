"""A role's trust policy, judged the way IAM judges it for `sts:AssumeRoleWithWebIdentity`.
Pure: the policy is given, never fetched here.

Pure, no I/O: `doctor` uses it to say which statement lets a pod's token in, or exactly which
condition keeps it out (the policy's values beside the token's), and `trust-policy` uses
`generate` to write a policy that `evaluate` accepts. The semantics are IAM's: an explicit
Deny wins over any Allow, nothing matching means deny, condition keys are case-insensitive,
several values of one key are alternatives, several keys and operators must all hold.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ACTION = "sts:AssumeRoleWithWebIdentity"
NOT_AUTHORIZED = f"Not authorized to perform {ACTION}"
POLICY_VERSION = "2012-10-17"

Context = Mapping[str, Sequence[str]]


class PolicyError(ValueError):
    """A document that is not a trust policy; the message says what is wrong."""


# -- reading the document ------------------------------------------------------------------------
def _decode(value: Any) -> Any:
    """JSON text, possibly URL-encoded (IAM's API returns `AssumeRolePolicyDocument` so)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text[:3].upper() == "%7B":
        text = urllib.parse.unquote(text)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise PolicyError(f"not JSON: {exc}") from None


def parse_policy(text: str) -> dict[str, Any]:
    """The policy from what IAM gives: the document itself, its URL-encoded form,
    `{"AssumeRolePolicyDocument": …}` or `aws iam get-role`'s `{"Role": {…}}`."""
    document = _decode(text)
    if isinstance(document, dict) and isinstance(document.get("Role"), dict):
        document = document["Role"]
    if isinstance(document, dict) and "AssumeRolePolicyDocument" in document:
        document = _decode(document["AssumeRolePolicyDocument"])
    if not isinstance(document, dict):
        raise PolicyError("expected a JSON object with a Statement")
    statements = document.get("Statement")
    if statements is None:
        raise PolicyError("the policy has no Statement")
    for index, statement in enumerate(_listify(statements)):
        if not isinstance(statement, dict):
            raise PolicyError(f"Statement[{index}] is not an object")
        if statement.get("Effect") not in ("Allow", "Deny"):
            raise PolicyError(f"Statement[{index}] has Effect {statement.get('Effect')!r}, not Allow or Deny")
        condition = statement.get("Condition", {})
        if not isinstance(condition, dict) or not all(isinstance(b, dict) for b in condition.values()):
            raise PolicyError(f"Statement[{index}]: Condition must map operators to {{key: value}} objects")
    return document


# -- what a web identity request looks like to IAM -------------------------------------------------
def provider_host_path(issuer: str) -> str:
    """The issuer as IAM names the provider and its condition keys: without `https://`."""
    return issuer.split("://", 1)[1] if "://" in issuer else issuer


def provider_arn(partition: str, account: str, issuer: str) -> str:
    return f"arn:{partition}:iam::{account}:oidc-provider/{provider_host_path(issuer)}"


def subject(namespace: str, service_account: str) -> str:
    return f"system:serviceaccount:{namespace}:{service_account}"


@dataclass(frozen=True, slots=True)
class Request:
    """The principal a token presents and the condition keys it brings (keys lower-cased)."""

    federated: str
    context: Mapping[str, tuple[str, ...]]


def web_identity_request(issuer: str, partition: str, account: str, sub: str, audiences: Iterable[str]) -> Request:
    host_path = provider_host_path(issuer)
    return Request(provider_arn(partition, account, issuer),
                   {f"{host_path}:sub".lower(): (sub,), f"{host_path}:aud".lower(): tuple(audiences)})


# -- evaluation ------------------------------------------------------------------------------------
def _listify(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _wildcard(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


_COMPARE = {
    "StringEquals": lambda value, wanted: value == wanted,
    "StringEqualsIgnoreCase": lambda value, wanted: value.lower() == wanted.lower(),
    "StringLike": lambda value, wanted: _wildcard(wanted).fullmatch(value) is not None,
}
_NEGATED = {"StringNotEquals": "StringEquals", "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
            "StringNotLike": "StringLike"}


@dataclass(frozen=True, slots=True)
class ConditionResult:
    """One operator on one key: the policy's values beside the request's (None: key absent)."""

    operator: str
    key: str
    wanted: tuple[str, ...]
    got: tuple[str, ...] | None
    holds: bool
    supported: bool = True

    def describe(self) -> str:
        got = "absent" if self.got is None else (self.got[0] if len(self.got) == 1 else list(self.got))
        wanted = self.wanted[0] if len(self.wanted) == 1 else list(self.wanted)
        if not self.supported:
            return f"{self.operator} on {self.key} is not evaluated here (treated as not holding)"
        return f"{self.operator} {self.key}: policy {json.dumps(wanted)}, token {json.dumps(got)}"


def condition_holds(operator: str, key: str, wanted: Any, context: Context) -> ConditionResult:
    """IAM's meaning of one condition:

    - a plain operator on a key with several values (a list `aud`) holds when any value matches,
      a negated one when none does; on an absent key a positive operator fails and a negated one
      holds; `…IfExists` holds on an absent key;
    - `ForAllValues:` every value matches (an absent key holds); `ForAnyValue:` at least one
      does (an absent key fails);
    - `Null`: "true" holds when the key is absent.
    """
    full, set_form = operator, None
    if operator.startswith(("ForAnyValue:", "ForAllValues:")):
        set_form, operator = operator.split(":", 1)
    if_exists = operator.endswith("IfExists")
    base = operator.removesuffix("IfExists")
    got = context.get(key.lower())
    got = tuple(got) if got is not None else None
    wanted_values = tuple(str(w).lower() if isinstance(w, bool) else str(w) for w in _listify(wanted))

    def result(holds: bool, supported: bool = True) -> ConditionResult:
        return ConditionResult(full, key, wanted_values, got, holds, supported)

    if base == "Null":
        return result((got is None) == (wanted_values[:1] == ("true",)))
    negated = base in _NEGATED
    compare = _COMPARE.get(_NEGATED.get(base, base))
    if compare is None:
        return result(False, supported=False)

    def matches(value: str) -> bool:
        return any(compare(value, w) for w in wanted_values)

    if got is None:
        if if_exists or set_form == "ForAllValues":
            return result(True)
        return result(negated and set_form is None)
    if set_form == "ForAllValues":
        return result(all(matches(v) != negated for v in got))
    if set_form == "ForAnyValue":
        return result(any(matches(v) != negated for v in got))
    hit = any(matches(v) for v in got)
    return result(not hit if negated else hit)


@dataclass(frozen=True, slots=True)
class StatementResult:
    """Whether one statement covers the request; `miss` says where it stops ("" when it covers):
    `action`, `principal`, `condition` or `unsupported`."""

    label: str
    effect: str
    miss: str
    detail: str
    conditions: tuple[ConditionResult, ...] = ()

    @property
    def covers(self) -> bool:
        return not self.miss


def _action_covered(statement: Mapping[str, Any]) -> str:
    if "Action" in statement:
        if not any(_wildcard(str(a), ignore_case=True).fullmatch(ACTION) for a in _listify(statement["Action"])):
            return f"Action {json.dumps(statement['Action'])} does not cover {ACTION}"
    elif "NotAction" in statement:
        if any(_wildcard(str(a), ignore_case=True).fullmatch(ACTION) for a in _listify(statement["NotAction"])):
            return f"NotAction {json.dumps(statement['NotAction'])} excludes {ACTION}"
    else:
        return "the statement has no Action"
    return ""


def _principal_covered(statement: Mapping[str, Any], federated: str) -> str:
    principal = statement.get("Principal")
    if principal == "*":
        return ""
    if not isinstance(principal, dict):
        return "no Principal (NotPrincipal is not evaluated here)"
    candidates = [str(p) for p in _listify(principal.get("Federated", []))]
    candidates += [str(a) for a in _listify(principal.get("AWS", [])) if a == "*"]
    if federated in candidates or "*" in candidates:
        return ""
    named = candidates[0] if len(candidates) == 1 else candidates
    return f"Principal.Federated: policy {json.dumps(named)}, token's provider {json.dumps(federated)}"


def evaluate_statement(statement: Mapping[str, Any], label: str, request: Request) -> StatementResult:
    effect = str(statement.get("Effect"))
    if why := _action_covered(statement):
        return StatementResult(label, effect, "action", why)
    if why := _principal_covered(statement, request.federated):
        return StatementResult(label, effect, "principal", why)
    results = tuple(condition_holds(operator, key, wanted, request.context)
                    for operator, block in (statement.get("Condition") or {}).items()
                    for key, wanted in block.items())
    failed = [c for c in results if not c.holds]
    if not failed:
        return StatementResult(label, effect, "", "every condition holds" if results else "no conditions", results)
    miss = "unsupported" if any(not c.supported for c in failed) else "condition"
    return StatementResult(label, effect, miss, "; ".join(c.describe() for c in failed), results)


@dataclass(frozen=True, slots=True)
class Verdict:
    """IAM's answer: `allowed`, the statement that decided (Allow, or the explicit Deny), every
    statement's result, and the error STS returns when not allowed."""

    allowed: bool
    decided_by: str
    statements: tuple[StatementResult, ...]

    @property
    def explicit_deny(self) -> bool:
        return not self.allowed and bool(self.decided_by)

    @property
    def error(self) -> str:
        return "" if self.allowed else f"AccessDenied: {NOT_AUTHORIZED}"

    @property
    def closest(self) -> StatementResult | None:
        """The Allow statement that came nearest (a failed condition beats a wrong principal)."""
        order = {"condition": 0, "unsupported": 1, "principal": 2, "action": 3}
        allows = [s for s in self.statements if s.effect == "Allow" and s.miss]
        return min(allows, key=lambda s: order.get(s.miss, 9)) if allows else None


def evaluate(policy: Mapping[str, Any], request: Request) -> Verdict:
    """Every statement against the request; an explicit Deny wins, then the first Allow."""
    results = []
    for index, statement in enumerate(_listify(policy.get("Statement", []))):
        results.append(evaluate_statement(statement, str(statement.get("Sid") or f"#{index}"), request))
    denied_by = next((r for r in results if r.covers and r.effect == "Deny"), None)
    if denied_by is not None:
        return Verdict(False, denied_by.label, tuple(results))
    allowed_by = next((r for r in results if r.covers and r.effect == "Allow"), None)
    return Verdict(allowed_by is not None, allowed_by.label if allowed_by else "", tuple(results))


# -- EKS Pod Identity ------------------------------------------------------------------------------
POD_IDENTITY_SERVICE = "pods.eks.amazonaws.com"
# The Pod Identity Agent's credentials come from AssumeRole by the EKS service, which tags the
# session (cluster, namespace, ServiceAccount, pod): without TagSession the call is refused, and
# a role chained from these credentials needs the tags to be transitive.
POD_IDENTITY_ACTIONS = ("sts:AssumeRole", "sts:TagSession")


def _service_covered(statement: Mapping[str, Any]) -> bool:
    principal = statement.get("Principal")
    if principal == "*":
        return True
    services = [str(s) for s in _listify(principal.get("Service", []))] if isinstance(principal, dict) else []
    return POD_IDENTITY_SERVICE in services or "*" in services


def _actions_of(statement: Mapping[str, Any]) -> set[str]:
    """Which of POD_IDENTITY_ACTIONS the statement's Action (or NotAction) covers."""
    if "Action" in statement:
        patterns = [_wildcard(str(a), ignore_case=True) for a in _listify(statement["Action"])]
        return {a for a in POD_IDENTITY_ACTIONS if any(p.fullmatch(a) for p in patterns)}
    if "NotAction" in statement:
        patterns = [_wildcard(str(a), ignore_case=True) for a in _listify(statement["NotAction"])]
        return {a for a in POD_IDENTITY_ACTIONS if not any(p.fullmatch(a) for p in patterns)}
    return set()


def _trust_gaps(policy: Mapping[str, Any], covers: Callable[[Mapping[str, Any]], bool], whom: str,
                prefix: str) -> list[tuple[str, str]] | None:
    """The statements whose principal `covers` must Allow both POD_IDENTITY_ACTIONS and Deny
    neither: what is missing, as (code, message) with codes `<prefix>-…`; None when no Allow
    statement names the principal at all (each caller says that its own way)."""
    allowed: set[str] = set()
    denied: set[str] = set()
    trusted = False
    for statement in _listify(policy.get("Statement", [])):
        if not isinstance(statement, Mapping) or not covers(statement):
            continue
        actions = _actions_of(statement)
        if statement.get("Effect") == "Deny":
            denied |= actions
        elif statement.get("Effect") == "Allow":
            trusted = True
            allowed |= actions
    if denied:
        return [(f"{prefix}-explicit-deny", f"a Deny statement for {whom} covers {', '.join(sorted(denied))}")]
    if not trusted:
        return None
    return [(f"{prefix}-tag-session" if action == "sts:TagSession" else f"{prefix}-action",
             f"the statements trusting {whom} do not allow {action}")
            for action in POD_IDENTITY_ACTIONS if action not in allowed]


def pod_identity_gaps(policy: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What keeps EKS Pod Identity from assuming the role, as (code, message); [] when nothing
    does. Principal and actions are judged; conditions are not (the service's keys, such as
    aws:SourceAccount, are the caller's, not the pod's)."""
    gaps = _trust_gaps(policy, _service_covered, POD_IDENTITY_SERVICE, "trust-policy")
    if gaps is None:
        return [("trust-policy-pod-identity-principal", f"no Allow statement trusts the service "
                 f"{POD_IDENTITY_SERVICE} (Principal.Service)")]
    return gaps


def _role_covered(statement: Mapping[str, Any], role_arn: str) -> bool:
    """Whether Principal.AWS names `role_arn`, its account (root ARN or bare id) or everyone."""
    principal = statement.get("Principal")
    if principal == "*":
        return True
    named = [str(p) for p in _listify(principal.get("AWS", []))] if isinstance(principal, dict) else []
    partition, _, rest = role_arn.removeprefix("arn:").partition(":iam::")
    account = rest.split(":", 1)[0]
    return any(p in ("*", role_arn, account, f"arn:{partition}:iam::{account}:root") for p in named)


def chain_gaps(policy: Mapping[str, Any], source_role_arn: str) -> list[tuple[str, str]]:
    """What keeps the Pod Identity Agent from chaining from the association's role
    (`source_role_arn`) to a target role with this trust policy: the target must trust the
    source role (or its account) with sts:AssumeRole, and with sts:TagSession, because the
    session tags EKS set are passed on. [] when nothing does; conditions are not judged."""
    gaps = _trust_gaps(policy, lambda statement: _role_covered(statement, source_role_arn), source_role_arn,
                       "target-trust-policy")
    if gaps is None:
        return [("target-trust-policy-principal", f"no Allow statement trusts {source_role_arn} or its account "
                 "(Principal.AWS)")]
    return gaps


def generate_chain_target(source_role_arn: str) -> dict[str, Any]:
    """The trust policy a Pod Identity target role needs: the association's role may assume it
    and pass its session tags on."""
    return {
        "Version": POLICY_VERSION,
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": source_role_arn},
            "Action": list(POD_IDENTITY_ACTIONS),
        }],
    }


def generate_pod_identity(account: str, partition: str = "aws") -> dict[str, Any]:
    """The trust policy EKS Pod Identity needs: its service may assume the role and tag the
    session, for clusters of `account` only (aws:SourceAccount). `partition` is accepted for
    symmetry with `generate`; the service principal is the same in every partition."""
    del partition
    return {
        "Version": POLICY_VERSION,
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": POD_IDENTITY_SERVICE},
            "Action": list(POD_IDENTITY_ACTIONS),
            "Condition": {"StringEquals": {"aws:SourceAccount": account}},
        }],
    }


# -- writing one ------------------------------------------------------------------------------------
def generate(issuer: str, account: str, service_accounts: Sequence[tuple[str, str]], partition: str = "aws",
             audience: str = "sts.amazonaws.com") -> dict[str, Any]:
    """A trust policy letting exactly these (namespace, ServiceAccount) pairs assume the role
    with tokens of `issuer` for `audience`: StringEquals on `sub` and `aud`."""
    host_path = provider_host_path(issuer)
    subjects = [subject(namespace, name) for namespace, name in service_accounts]
    return {
        "Version": POLICY_VERSION,
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": provider_arn(partition, account, issuer)},
            "Action": ACTION,
            "Condition": {"StringEquals": {
                f"{host_path}:sub": subjects[0] if len(subjects) == 1 else subjects,
                f"{host_path}:aud": audience,
            }},
        }],
    }
