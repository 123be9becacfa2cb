"""AdmissionReview on the wire: decode a body into an `AdmissionRequest`, encode answers.
Pure: bytes in, bytes out; nothing here knows HTTP.

Decoding is lenient where the Go webhook is (apiVersion is echoed, not checked; a missing
kind is fine) and strict where it matters: a body that is not an AdmissionReview (another
kind, not an object, not JSON) becomes a `BadReview` with a message that says what was
wrong, never an exception escaping into the server.

This is also the type boundary (docs/reliability.md#contract): every request field the
decision reads, and every part of the pod the planner reads, is checked here. A value of
the wrong JSON type becomes `AdmissionRequest.problem`, which `admission.precheck` turns into
an unchanged, logged allow; so the planner only ever sees a well-typed pod.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from injector.core.planner import Operation


class BadReview(ValueError):
    """The body is not an AdmissionReview we can read; `status` is the HTTP status to use."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)  # built per admission, so not frozen (docs/performance.md#where-the-time-goes)
class AdmissionRequest:
    """The parts of one AdmissionReview request that the decision depends on.

    `problem` names the first field of the wrong type ("" when there is none); when it is
    set, `pod` must not be planned. `service_account` and `pod_name` are read from `pod` once,
    by `parse_review`: the lookup and the log line both want them.
    """

    uid: str
    api_version: str | None
    kind: str | None
    namespace: str
    operation: str
    resource_kind: str
    pod: dict[str, Any] | None
    dry_run: bool
    problem: str = ""
    service_account: str = ""
    pod_name: str = ""  # the pod's name, or its generateName (pods at CREATE often have only that)


def pod_names(pod: Any) -> tuple[str, str]:
    """(ServiceAccount name, pod name or generateName) of any object, "" for what is absent or not a string."""
    if not isinstance(pod, dict):
        return "", ""
    spec, metadata = pod.get("spec"), pod.get("metadata")
    account = spec.get("serviceAccountName") if isinstance(spec, dict) else None
    name = (metadata.get("name") or metadata.get("generateName")) if isinstance(metadata, dict) else None
    return account if isinstance(account, str) else "", name if isinstance(name, str) else ""


@dataclass(slots=True)  # built per admission, so not frozen (docs/performance.md#where-the-time-goes)
class Envelope:
    """What the response must echo even when the request part is unusable."""

    api_version: str | None
    kind: str | None
    uid: str


def decode_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadReview(f"request body is not valid JSON: {exc}") from None


# -- the type boundary -------------------------------------------------------------------------
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


class _Malformed(Exception):
    """A value of the wrong type at `path` (raised and caught inside this module only)."""

    def __init__(self, path: str, value: Any, expected: str) -> None:
        super().__init__(f"{path} is {_JSON_TYPES.get(type(value), type(value).__name__)}, expected {expected}")


def _optional(value: Any, kind: type, path: str) -> Any:
    """`value` if it is absent (None) or of `kind`; else `_Malformed`."""
    if value is not None and not isinstance(value, kind):
        raise _Malformed(path, value, _JSON_TYPES[kind])
    return value


def _strings(mapping: dict[str, Any], members: tuple[str, ...], path: str) -> None:
    """Each of `members` of `mapping` is absent (None) or a string."""
    for member in members:
        value = mapping.get(member)
        if value is not None and not isinstance(value, str):
            raise _Malformed(path + member, value, _JSON_TYPES[str])


def _string_map(value: Any, path: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _Malformed(path, value, _JSON_TYPES[dict])
    for key, item in value.items():
        if item is not None and not isinstance(item, str):
            raise _Malformed(f"{path}[{key!r}]", item, _JSON_TYPES[str])


def _named_items(value: Any, *path: str | int) -> list[Any]:
    """A list of objects whose `name`, if any, is a string. `path` is given in parts, joined
    only to name a problem: this runs for every list of every pod."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Malformed(_joined(path), value, _JSON_TYPES[list])
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise _Malformed(f"{_joined(path)}[{index}]", item, _JSON_TYPES[dict])
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            raise _Malformed(f"{_joined(path)}[{index}].name", name, _JSON_TYPES[str])
    return value


def _joined(parts: tuple[str | int, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else part for part in parts)


_METADATA_STRINGS = ("name", "generateName", "namespace")


def check_pod(pod: dict[str, Any]) -> str:
    """The first part of `pod` the rules read that has the wrong type, or "" (well typed).

    What is checked is exactly what identity resolution and the planner read: names,
    annotations, labels, the node selector, volumes, and each container's name, env and
    volumeMounts. Everything else is passed through untouched and never read, except the
    node affinity, which `pod.runs_on_windows` reads defensively (docs/reliability.md#contract).
    """
    try:
        metadata = _optional(pod.get("metadata"), dict, "metadata") or {}
        _strings(metadata, _METADATA_STRINGS, "metadata.")
        _string_map(metadata.get("annotations"), "metadata.annotations")
        _string_map(metadata.get("labels"), "metadata.labels")
        spec = _optional(pod.get("spec"), dict, "spec") or {}
        _optional(spec.get("serviceAccountName"), str, "spec.serviceAccountName")
        _string_map(spec.get("nodeSelector"), "spec.nodeSelector")
        _named_items(spec.get("volumes"), "spec.volumes")
        for list_name in ("initContainers", "containers"):
            for index, container in enumerate(_named_items(spec.get(list_name), "spec.", list_name)):
                for member in ("env", "volumeMounts"):
                    _named_items(container.get(member), "spec.", list_name, index, ".", member)
    except _Malformed as exc:
        return f"pod {exc}"
    return ""


def parse_review(document: Any) -> tuple[Envelope, AdmissionRequest | str]:
    """Split a decoded body into its envelope and either a request or why there is none."""
    if not isinstance(document, dict):
        raise BadReview("request body is not a JSON object (expected an AdmissionReview)")
    api_version, kind = document.get("apiVersion"), document.get("kind")
    api_version = api_version if isinstance(api_version, str) else None
    kind = kind if isinstance(kind, str) else None
    if kind not in (None, "AdmissionReview"):
        raise BadReview(f"expected kind AdmissionReview, got {kind!r}")

    request = document.get("request")
    if not isinstance(request, dict):
        return Envelope(api_version, kind, ""), "bad content: the AdmissionReview has no request"
    uid = request.get("uid")
    uid = uid if isinstance(uid, str) else ""
    envelope = Envelope(api_version, kind, uid)

    problem = ""
    try:
        resource = _optional(request.get("kind"), dict, "request.kind") or {}
        resource_kind = _optional(resource.get("kind"), str, "request.kind.kind") or ""
        operation = _optional(request.get("operation"), str, "request.operation") or "CREATE"
        namespace = _optional(request.get("namespace"), str, "request.namespace") or ""
    except _Malformed as exc:
        problem, resource_kind, operation, namespace = str(exc), "", "", ""
    pod = request.get("object")
    if not isinstance(pod, dict):
        pod = None
    elif not problem:
        if not resource_kind:
            pod_kind = pod.get("kind")
            resource_kind = pod_kind if isinstance(pod_kind, str) and pod_kind else "Pod"
        if resource_kind == "Pod" and operation == "CREATE":  # only a pod to plan is read further
            problem = check_pod(pod)
            if not namespace and not problem:
                namespace = (pod.get("metadata") or {}).get("namespace") or ""
    # Positional: keyword arguments to a dataclass's __init__ cost twice as much, per admission.
    return envelope, AdmissionRequest(uid, api_version, kind, namespace, operation, resource_kind, pod,
                                      request.get("dryRun") is True, problem, *pod_names(pod))


def encode_response(envelope: Envelope, allowed: bool, operations: list[Operation] | None = None,
                    message: str | None = None, warnings: Sequence[str] = ()) -> bytes:
    """The AdmissionReview answer: TypeMeta and uid echoed, patch as base64 JSON Patch.

    `warnings` become `response.warnings` (both v1 and v1beta1 have it since Kubernetes 1.19;
    older API servers ignore the unknown field); no member at all when there are none.
    """
    response: dict[str, Any] = {"uid": envelope.uid, "allowed": allowed}
    if message:
        response["status"] = {"message": message} if allowed else {"message": message, "code": 403}
    if operations:
        response["patch"] = binascii.b2a_base64(orjson.dumps(operations), newline=False).decode("ascii")
        response["patchType"] = "JSONPatch"
    if warnings:
        response["warnings"] = list(warnings)
    review: dict[str, Any] = {}
    if envelope.kind is not None:
        review["kind"] = envelope.kind
    if envelope.api_version is not None:
        review["apiVersion"] = envelope.api_version
    review["response"] = response
    return orjson.dumps(review)


def encode_error_review(envelope: Envelope, message: str) -> bytes:
    """A denial for a review we could read but not act on (Go's "bad content")."""
    return encode_response(envelope, allowed=False, message=message)
