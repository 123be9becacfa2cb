"""AdmissionReview on the wire: decode a body into an `AdmissionRequest`, encode answers.

Decoding is lenient where the Go webhook is (apiVersion is echoed, not checked; a missing
kind is fine) and strict where it matters: a body that is not an AdmissionReview (another
kind, not an object, not JSON) becomes a `BadReview` with a message that says what was
wrong, never an exception escaping into the server.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from .planner import Operation


class BadReview(ValueError):
    """The body is not an AdmissionReview we can read; `status` is the HTTP status to use."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """The parts of one AdmissionReview request that the decision depends on."""

    uid: str
    api_version: str | None
    kind: str | None
    namespace: str
    operation: str
    resource_kind: str
    pod: dict[str, Any] | None
    dry_run: bool

    @property
    def service_account(self) -> str:
        spec = (self.pod or {}).get("spec")
        name = spec.get("serviceAccountName") if isinstance(spec, dict) else None
        return name if isinstance(name, str) else ""

    @property
    def pod_name(self) -> str:
        """The pod's name, or its generateName (pods at CREATE often have only that)."""
        metadata = (self.pod or {}).get("metadata")
        if not isinstance(metadata, dict):
            return ""
        name = metadata.get("name") or metadata.get("generateName") or ""
        return name if isinstance(name, str) else ""


@dataclass(frozen=True, slots=True)
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

    resource = request.get("kind")
    resource_kind = resource.get("kind", "") if isinstance(resource, dict) else ""
    pod = request.get("object")
    if not isinstance(pod, dict):
        pod = None
    elif not resource_kind:
        resource_kind = pod.get("kind") or "Pod"
    namespace = request.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        namespace = ((pod or {}).get("metadata") or {}).get("namespace") or ""
    return envelope, AdmissionRequest(
        uid=uid,
        api_version=api_version,
        kind=kind,
        namespace=namespace if isinstance(namespace, str) else "",
        operation=str(request.get("operation") or "CREATE"),
        resource_kind=str(resource_kind),
        pod=pod,
        dry_run=request.get("dryRun") is True,
    )


def encode_response(envelope: Envelope, allowed: bool, operations: list[Operation] | None = None,
                    message: str | None = None) -> bytes:
    """The AdmissionReview answer: TypeMeta and uid echoed, patch as base64 JSON Patch."""
    response: dict[str, Any] = {"uid": envelope.uid, "allowed": allowed}
    if message:
        response["status"] = {"message": message} if allowed else {"message": message, "code": 403}
    if operations:
        response["patch"] = base64.b64encode(orjson.dumps(operations)).decode("ascii")
        response["patchType"] = "JSONPatch"
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
