"""One admission decision, as a table: request × resolved identity → answer and reason
(docs/mutation.md#answers, #precedence)."""

from __future__ import annotations

import pytest

from injector.core.decision import decide, precheck, warning
from injector.core.identity import Identity, Mode, Resolution
from injector.core.review import AdmissionRequest
from injector.core.settings import MutationSettings

SETTINGS = MutationSettings()
POD = {"metadata": {"generateName": "web-"}, "spec": {"serviceAccountName": "app", "containers": [{"name": "c"}]}}
WEB = Identity(Mode.WEB_IDENTITY, "arn:aws:iam::111122223333:role/app", "sts.amazonaws.com", False, 3600)
CC = Identity(Mode.CONTAINER_CREDENTIALS, "", "pods.eks.amazonaws.com", False, 3600)


def pod_request(resource_kind: str = "Pod", operation: str = "CREATE", pod: dict | None = POD) -> AdmissionRequest:
    return AdmissionRequest("u", "admission.k8s.io/v1", "AdmissionReview", "ns", operation, resource_kind, pod, False)


def found(identity: Identity | None, reason: str = "service-account-annotation") -> Resolution:
    return Resolution(identity, reason, True)


@pytest.mark.parametrize("request_, reason, message", [
    (pod_request(resource_kind="Deployment"), "not-a-pod", "Deployment is not a Pod; ignored"),
    (pod_request(resource_kind=""), "not-a-pod", "object is not a Pod; ignored"),
    (pod_request(operation="UPDATE"), "not-a-create", "UPDATE is not mutated; only CREATE is"),
    (pod_request(pod=None), "no-pod-object", "the request carries no pod object"),
    (AdmissionRequest("u", None, None, "", "", "", None, False, problem="request.operation is a number, expected "
                      "a string"), "malformed",
     "malformed request: request.operation is a number, expected a string; allowed unchanged"),
])
def test_requests_that_need_no_lookup_are_allowed_unchanged_with_a_reason(request_, reason, message):
    early = precheck(request_)
    assert (early.allowed, early.reason, early.operations, early.message) == (True, reason, [], message)
    assert decide(request_, found(WEB), SETTINGS) == early


def test_a_pod_create_needs_the_lookup():
    assert precheck(pod_request()) is None


@pytest.mark.parametrize("resolution, reason", [
    (Resolution(None, "service-account-not-found", False), "service-account-not-found"),
    (Resolution(None, "service-account-has-no-role", True), "service-account-has-no-role"),
])
def test_without_an_identity_the_pod_is_allowed_unchanged_for_the_resolutions_reason(resolution, reason):
    decision = decide(pod_request(), resolution, SETTINGS)
    assert (decision.allowed, decision.reason, decision.operations, decision.mode) == (True, reason, [], "")
    assert not decision.mutated


@pytest.mark.parametrize("identity, mode, role", [
    (WEB, "sts_web_identity", WEB.role_arn),
    (CC, "container_credentials", ""),
])
def test_with_an_identity_the_pod_is_mutated_in_its_mode(identity, mode, role):
    decision = decide(pod_request(), found(identity), SETTINGS, jitter=lambda low, high: low)
    assert (decision.allowed, decision.reason, decision.mode, decision.role_arn) == (True, "mutated", mode, role)
    assert decision.mutated and decision.plan is not None and decision.plan.injected == ("c",)


def test_a_pod_that_already_has_everything_is_already_mutated():
    import jsonpatch

    first = decide(pod_request(), found(WEB), SETTINGS)
    mutated = jsonpatch.apply_patch(POD, first.operations)
    again = decide(pod_request(pod=mutated), found(WEB), SETTINGS)
    assert (again.reason, again.operations, again.mutated) == ("already-mutated", [], False)


# -- warnings (docs/mutation.md#warnings) --------------------------------------------------------
PRESET = {"metadata": {"name": "web"}, "spec": {"serviceAccountName": "app", "containers": [
    {"name": "c", "env": [{"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::111122223333:role/other"}]}]}}
COLLIDING = {"metadata": {"name": "web"}, "spec": {"serviceAccountName": "app", "containers": [{"name": "c"}],
                                                   "volumes": [{"name": "aws-iam-token", "emptyDir": {}}]}}


@pytest.mark.parametrize("pod, resolution, reason, warnings", [
    (PRESET, found(WEB), "mutated",
     ("pod-identity-injector: container c: AWS_ROLE_ARN without AWS_WEB_IDENTITY_TOKEN_FILE; nothing injected",)),
    (COLLIDING, found(WEB), "volume-collision",
     ("pod-identity-injector: volume aws-iam-token (emptyDir) already exists; pod left without AWS credentials",)),
    (POD, Resolution(None, "service-account-has-no-role", True, ("ServiceAccount has audience but no role",)),
     "service-account-has-no-role", ("pod-identity-injector: ServiceAccount has audience but no role",)),
    (PRESET, Resolution(WEB, "service-account-annotation", True, ("from the ServiceAccount",)), "mutated",
     ("pod-identity-injector: from the ServiceAccount",
      "pod-identity-injector: container c: AWS_ROLE_ARN without AWS_WEB_IDENTITY_TOKEN_FILE; nothing injected")),
    (POD, found(WEB), "mutated", ()),
])
def test_the_decision_carries_the_prefixed_warnings_of_the_service_account_then_the_plan(
        pod, resolution, reason, warnings):
    decision = decide(pod_request(pod=pod), resolution, SETTINGS)
    assert (decision.reason, decision.warnings) == (reason, warnings)


def test_a_volume_collision_is_allowed_unchanged_and_worth_a_warning_in_the_log():
    decision = decide(pod_request(pod=COLLIDING), found(WEB), SETTINGS)
    assert (decision.allowed, decision.operations, decision.mutated) == (True, [], False)
    assert decision.worrying and not decision.undecided


def test_an_answer_without_a_pod_to_plan_has_no_warnings():
    assert precheck(pod_request(operation="UPDATE")).warnings == ()


@pytest.mark.parametrize("text", ["short", "x" * 96, "x" * 97, "y" * 500, "line\nbreaks  and\ttabs"])
def test_every_warning_is_one_line_under_120_characters_with_our_name_first(text):
    result = warning(text)
    assert result.startswith("pod-identity-injector: ") and len(result) < 120 and "\n" not in result
    assert result.endswith("…") == (len(text) > 96)
