"""One admission decision: request + resolved identity → allow, with or without a patch.
Pure: no I/O, no logging; the server logs and counts what this returns.

Pure like the planner, so the server, the offline CLI and the tests share it. Anything
this code cannot decide is allowed unchanged with a reason, never denied: a pod that
starts without AWS credentials is visible in the logs, a pod that cannot start is an
outage.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from injector.core.identity import Resolution
from injector.core.planner import Jitter, Operation, Plan, plan_mutation
from injector.core.review import AdmissionRequest
from injector.core.settings import MutationSettings


@dataclass(slots=True)  # built per admission, so not frozen (docs/performance.md#where-the-time-goes)
class Decision:
    """What we answer and why; `reason` is a stable word for logs and metrics."""

    allowed: bool
    reason: str
    operations: list[Operation]
    mode: str = ""
    role_arn: str = ""
    plan: Plan | None = None
    message: str = ""
    warnings: tuple[str, ...] = ()  # AdmissionResponse.warnings, prefixed and short (§warnings)

    @property
    def mutated(self) -> bool:
        return bool(self.operations)

    @property
    def undecided(self) -> bool:
        """Allowed only because the input could not be decided on: logged at warning."""
        return self.reason in UNDECIDED

    @property
    def worrying(self) -> bool:
        """Logged at warning: undecided, or a pod with an identity left without it (§volume-collision)."""
        return self.undecided or self.reason in SKIPPED


# Reasons for an allow that says nothing about the pod's identity (docs/mutation.md#answers).
UNDECIDED = frozenset({"malformed", "no-pod-object", "internal-error"})
# Reasons for leaving a pod that has an identity unchanged on purpose (docs/mutation.md#volume-collision).
SKIPPED = frozenset({"volume-collision"})

WARNING_PREFIX = "pod-identity-injector: "
WARNING_LIMIT = 119  # kubectl prints each; the API server wants them short (under 120 characters)


def warning(text: str) -> str:
    """One admission warning: our name first, cut to the limit."""
    text = WARNING_PREFIX + " ".join(text.split())
    return text if len(text) <= WARNING_LIMIT else text[:WARNING_LIMIT - 1] + "…"


def precheck(request: AdmissionRequest) -> Decision | None:
    """Requests that never need an identity lookup: malformed, not a pod, not a create, no object."""
    if request.problem:
        return Decision(True, "malformed", [], message=f"malformed request: {request.problem}; allowed unchanged")
    if request.resource_kind != "Pod":
        return Decision(True, "not-a-pod", [], message=f"{request.resource_kind or 'object'} is not a Pod; ignored")
    if request.operation != "CREATE":
        return Decision(True, "not-a-create", [], message=f"{request.operation} is not mutated; only CREATE is")
    if request.pod is None:
        return Decision(True, "no-pod-object", [], message="the request carries no pod object")
    return None


def decide(request: AdmissionRequest, resolution: Resolution, settings: MutationSettings,
           jitter: Jitter = random.randint) -> Decision:
    """Turn a resolved identity into the answer for this pod."""
    early = precheck(request)
    if early is not None:
        return early
    identity = resolution.identity
    if identity is None:
        return Decision(True, resolution.reason, [], warnings=tuple(map(warning, resolution.warnings)))
    assert request.pod is not None
    plan = plan_mutation(request.pod, identity, settings, jitter)
    reason = plan.blocked or ("mutated" if plan.changes else "already-mutated")
    warnings: tuple[str, ...] = ()
    if resolution.warnings or plan.warnings:
        warnings = tuple(map(warning, (*resolution.warnings, *plan.warnings)))
    return Decision(True, reason, plan.operations, identity.mode.value, identity.role_arn, plan, warnings=warnings)
