"""The AdmissionReview codec: what `parse_review` makes of every shape of body, and what
`encode_response` answers (docs/mutation.md#answers)."""

from __future__ import annotations

import base64

import orjson
import pytest

from injector.core.review import AdmissionRequest, BadReview, Envelope, decode_json, encode_response, parse_review

POD = {"metadata": {"name": "web", "namespace": "from-pod"}, "spec": {"serviceAccountName": "app"}}


def request(**fields) -> dict:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u", "kind": {"kind": "Pod"}, "namespace": "ns", "operation": "CREATE",
                        "object": POD, **fields}}


@pytest.mark.parametrize("body, message", [
    (b"", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b"\xff", "not valid JSON"),
    (b"nul", "not valid JSON"),
])
def test_decode_json_refuses_what_is_not_json(body, message):
    with pytest.raises(BadReview, match=message) as error:
        decode_json(body)
    assert error.value.status == 400


@pytest.mark.parametrize("document, message", [
    ([], "not a JSON object"),
    ("review", "not a JSON object"),
    (None, "not a JSON object"),
    ({"kind": "Pod"}, "expected kind AdmissionReview, got 'Pod'"),
    ({"kind": "AdmissionReviewList", "request": {}}, "expected kind AdmissionReview"),
])
def test_what_is_not_an_admission_review_is_a_bad_review(document, message):
    with pytest.raises(BadReview, match=message):
        parse_review(document)


@pytest.mark.parametrize("document, envelope", [
    ({}, Envelope(None, None, "")),
    ({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1"},
     Envelope("admission.k8s.io/v1beta1", "AdmissionReview", "")),
    ({"kind": "AdmissionReview", "request": "text"}, Envelope(None, "AdmissionReview", "")),
    ({"kind": 5, "apiVersion": ["v1"], "request": None}, Envelope(None, None, "")),
])
def test_a_review_without_a_request_keeps_its_envelope_and_says_why(document, envelope):
    assert parse_review(document) == (envelope, "bad content: the AdmissionReview has no request")


@pytest.mark.parametrize("fields, attribute, value", [
    ({}, "namespace", "ns"),
    ({"namespace": ""}, "namespace", "from-pod"),
    ({"namespace": None}, "namespace", "from-pod"),
    ({"uid": 7}, "uid", ""),
    ({"operation": None}, "operation", "CREATE"),
    ({"operation": "DELETE"}, "operation", "DELETE"),
    ({"kind": None}, "resource_kind", "Pod"),
    ({"kind": {"kind": "Deployment"}}, "resource_kind", "Deployment"),
    ({"object": "pod"}, "pod", None),
    ({"object": None, "kind": None}, "resource_kind", ""),
    ({"dryRun": True}, "dry_run", True),
    ({"dryRun": "true"}, "dry_run", False),
])
def test_request_fields_are_read_leniently(fields, attribute, value):
    _, parsed = parse_review(request(**fields))
    assert isinstance(parsed, AdmissionRequest)
    assert getattr(parsed, attribute) == value


@pytest.mark.parametrize("pod, service_account, name", [
    (POD, "app", "web"),
    ({"metadata": {"generateName": "web-"}, "spec": {}}, "", "web-"),
    ({"metadata": "x", "spec": "y"}, "", ""),
    ({"metadata": {"name": 3}, "spec": {"serviceAccountName": 4}}, "", ""),
])
def test_the_pod_name_and_service_account_are_strings_or_empty(pod, service_account, name):
    _, parsed = parse_review(request(object=pod))
    assert (parsed.service_account, parsed.pod_name) == (service_account, name)


def test_the_answer_echoes_the_envelope_and_carries_the_patch_as_base64():
    operations = [{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}]
    answer = orjson.loads(encode_response(Envelope("admission.k8s.io/v1", "AdmissionReview", "u"), True, operations))
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == "u" and response["allowed"] is True and response["patchType"] == "JSONPatch"
    assert orjson.loads(base64.b64decode(response["patch"])) == operations


@pytest.mark.parametrize("allowed, message, status", [
    (True, None, None),
    (True, "ignored", {"message": "ignored"}),
    (False, "bad content", {"message": "bad content", "code": 403}),
])
def test_the_answer_carries_a_message_and_a_code_only_on_denial(allowed, message, status):
    answer = orjson.loads(encode_response(Envelope(None, None, ""), allowed, [], message))
    assert answer == {"response": {"uid": "", "allowed": allowed, **({"status": status} if status else {})}}


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_warnings_are_a_list_of_strings_in_the_response_of_either_version(api_version):
    """§warnings: AdmissionResponse.warnings exists in v1 and in v1beta1 (Kubernetes >= 1.19)."""
    envelope = Envelope(api_version, "AdmissionReview", "u")
    warnings = ("pod-identity-injector: a", "pod-identity-injector: b")
    answer = orjson.loads(encode_response(envelope, True, [], None, warnings))
    assert answer == {"kind": "AdmissionReview", "apiVersion": api_version, "response": {
        "uid": "u", "allowed": True, "warnings": ["pod-identity-injector: a", "pod-identity-injector: b"]}}


def test_no_warnings_means_no_warnings_member():
    answer = orjson.loads(encode_response(Envelope(None, None, "u"), True, [], None, ()))
    assert "warnings" not in answer["response"]


# -- the type boundary: the planner only ever sees a well-typed pod -----------------------------
@pytest.mark.parametrize("fields, problem", [
    ({"namespace": 5}, "request.namespace is a number, expected a string"),
    ({"namespace": {"a": 1}}, "request.namespace is an object, expected a string"),
    ({"kind": {"kind": ["Pod"]}}, "request.kind.kind is an array, expected a string"),
    ({"kind": "Pod"}, "request.kind is a string, expected an object"),
    ({"operation": True}, "request.operation is a boolean, expected a string"),
    ({"object": {"metadata": "x"}, "namespace": None}, "pod metadata is a string, expected an object"),
    ({"object": {"metadata": [1]}}, "pod metadata is an array, expected an object"),
    ({"object": {"metadata": {"annotations": {"a": 1}}}}, "pod metadata.annotations['a'] is a number"),
    ({"object": {"metadata": {"labels": []}}}, "pod metadata.labels is an array, expected an object"),
    ({"object": {"spec": {"serviceAccountName": {}}}}, "pod spec.serviceAccountName is an object"),
    ({"object": {"spec": {"containers": [{"name": {"x": 1}}]}}}, "pod spec.containers[0].name is an object"),
    ({"object": {"spec": {"volumes": [{"name": []}]}}}, "pod spec.volumes[0].name is an array"),
    ({"object": {"spec": {"initContainers": [{"env": [{"name": 1}]}]}}}, "pod spec.initContainers[0].env[0].name"),
    ({"object": {"spec": {"containers": [{"volumeMounts": {}}]}}}, "pod spec.containers[0].volumeMounts is an"),
    ({"object": {"spec": {"containers": ["app"]}}}, "pod spec.containers[0] is a string, expected an object"),
    ({"object": {"spec": {"nodeSelector": {"kubernetes.io/os": None}}}}, ""),
    ({"object": {"spec": {"nodeSelector": {"kubernetes.io/os": 1}}}}, "pod spec.nodeSelector['kubernetes.io/os']"),
    ({"object": {"spec": []}}, "pod spec is an array, expected an object"),
])
def test_a_field_of_the_wrong_type_is_named_as_the_problem(fields, problem):
    _, parsed = parse_review(request(**fields))
    assert isinstance(parsed, AdmissionRequest)
    assert parsed.problem.startswith(problem) if problem else parsed.problem == ""


@pytest.mark.parametrize("fields", [
    {"object": {"metadata": "x"}, "operation": "UPDATE"},
    {"object": {"spec": {"containers": "x"}}, "kind": {"kind": "Deployment"}},
])
def test_only_a_pod_to_plan_is_type_checked(fields):
    _, parsed = parse_review(request(**fields))
    assert parsed.problem == ""


def test_null_is_absent_everywhere_the_rules_read():
    pod = {"metadata": {"name": None, "annotations": None, "labels": None},
           "spec": {"serviceAccountName": None, "containers": [{"name": None, "env": None}], "volumes": None}}
    _, parsed = parse_review(request(object=pod))
    assert parsed.problem == "" and parsed.namespace == "ns"
