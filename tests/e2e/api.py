"""Small async helpers over kubernetes_asyncio for the e2e tests.

Objects go in and come out as raw JSON dicts (`_preload_content=False`), never as client
models: a model would drop fields this client version does not know, and some tests check
exactly that the API server stored such fields intact.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import yaml
from kubernetes_asyncio import client, config

T = TypeVar("T")

ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"
SKIP_LABEL = "eks.amazonaws.com/skip-pod-identity-webhook"
NAMESPACE_LABEL = "e2e-webhook"
# deploy/rbac.yaml: where the webhook's ServiceAccount, Role and ConfigMap live.
WEBHOOK_NAMESPACE = "pod-identity-injector"
WEBHOOK_SERVICE_ACCOUNT = "pod-identity-webhook"


class ApiError(Exception):
    """A non-2xx answer; `status` is the HTTP status, `message` the Status object's message."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.message = body.get("message", "") if isinstance(body, dict) else str(body)
        self.reason = body.get("reason", "") if isinstance(body, dict) else ""
        super().__init__(f"{status} {self.reason}: {self.message}")


async def api_client(kubeconfig: str | Path) -> client.ApiClient:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration=configuration)


# The cluster-scoped creates of the suite; in external mode the admin labels what they create.
CLUSTER_SCOPED_CREATES = frozenset({"create_namespace", "create_mutating_webhook_configuration",
                                    "create_cluster_role", "create_cluster_role_binding"})


class Kube:
    """One identity's view of the API server (admin, or the webhook's ServiceAccount).

    `owner_labels` (external mode): added to every namespace, MutatingWebhookConfiguration,
    ClusterRole and ClusterRoleBinding created through this client, so that the session can
    find and delete exactly what the tests created in a cluster that is not theirs."""

    def __init__(self, api: client.ApiClient, *, owner_labels: dict[str, str] | None = None) -> None:
        self.api = api
        self.owner_labels = dict(owner_labels or {})
        self.core = client.CoreV1Api(api)
        self.admission = client.AdmissionregistrationV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.authorization = client.AuthorizationV1Api(api)
        self.authentication = client.AuthenticationV1Api(api)

    async def call(self, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """Any generated API method, answered as decoded JSON; non-2xx raises ApiError."""
        if self.owner_labels and getattr(method, "__name__", "") in CLUSTER_SCOPED_CREATES:
            body = copy.deepcopy(args[0])
            body.setdefault("metadata", {})["labels"] = {**(body["metadata"].get("labels") or {}),
                                                         **self.owner_labels}
            args = (body, *args[1:])
        response = await method(*args, _preload_content=False, **kwargs)
        try:
            body = await response.read()
        finally:
            response.release()
        try:
            decoded = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            decoded = body.decode(errors="replace")
        if not 200 <= response.status < 300:
            raise ApiError(response.status, decoded)
        return decoded

    # -- objects the tests need all the time ----------------------------------------------------
    async def namespace(self, prefix: str, labels: dict[str, str] | None = None,
                        service_accounts: tuple[str, ...] = ("default",)) -> str:
        """A fresh namespace (never deleted by the local tier: without a controller-manager it
        would never finish terminating) and its ServiceAccounts, which nothing else creates
        there. In a real cluster the controller-manager may create `default` first: fine."""
        name = f"{prefix[:40].rstrip('-')}-{uuid.uuid4().hex[:6]}"
        await self.call(self.core.create_namespace, {"metadata": {"name": name, "labels": labels or {}}})
        for sa in service_accounts:
            try:
                await self.service_account(name, sa)
            except ApiError as exc:
                if exc.status != 409:
                    raise
        return name

    async def service_account(self, namespace: str, name: str, annotations: dict[str, str] | None = None) -> dict:
        body = {"metadata": {"name": name, "annotations": annotations or {}}}
        return await self.call(self.core.create_namespaced_service_account, namespace, body)

    async def annotate_service_account(self, namespace: str, name: str, annotations: dict[str, str | None]) -> dict:
        """Strategic merge patch; a None value removes the annotation."""
        return await self.call(self.core.patch_namespaced_service_account, name, namespace,
                               {"metadata": {"annotations": annotations}})

    async def create_pod(self, namespace: str, pod: dict, *, dry_run: bool = False) -> dict:
        kwargs = {"dry_run": "All"} if dry_run else {}
        return await self.call(self.core.create_namespaced_pod, namespace, pod, **kwargs)

    async def read_pod(self, namespace: str, name: str) -> dict:
        return await self.call(self.core.read_namespaced_pod, name, namespace)

    async def apply_manifests(self, documents: list[dict]) -> None:
        """Create what deploy/rbac.yaml holds (a create-only `kubectl apply` for these kinds)."""
        for doc in documents:
            namespace = doc["metadata"].get("namespace", "")
            method, args = {
                "ServiceAccount": (self.core.create_namespaced_service_account, (namespace, doc)),
                "ClusterRole": (self.rbac.create_cluster_role, (doc,)),
                "ClusterRoleBinding": (self.rbac.create_cluster_role_binding, (doc,)),
                "Role": (self.rbac.create_namespaced_role, (namespace, doc)),
                "RoleBinding": (self.rbac.create_namespaced_role_binding, (namespace, doc)),
            }[doc["kind"]]
            try:
                await self.call(method, *args)
            except ApiError as exc:
                if exc.status != 409:
                    raise

    async def token(self, namespace: str, service_account: str, *, audiences: list[str] | None = None,
                    expiration_seconds: int = 3600, bound_pod: dict | None = None) -> dict:
        """TokenRequest: the raw `TokenRequest` answer (`status.token`, `status.expirationTimestamp`)."""
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        if audiences is not None:
            spec["audiences"] = audiences
        if bound_pod is not None:
            spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": bound_pod["metadata"]["name"],
                                      "uid": bound_pod["metadata"]["uid"]}
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        return await self.call(self.core.create_namespaced_service_account_token, service_account, namespace, body)

    async def can_i(self, verb: str, resource: str, *, namespace: str = "", group: str = "", name: str = "") -> bool:
        """SelfSubjectAccessReview: may *this* client's identity do it?"""
        attributes = {"verb": verb, "resource": resource, "group": group, "namespace": namespace, "name": name}
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": {k: v for k, v in attributes.items() if v}}}
        answer = await self.call(self.authorization.create_self_subject_access_review, review)
        return bool(answer["status"].get("allowed"))


def load_manifests(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# -- pods --------------------------------------------------------------------------------------
def pod(name: str, service_account: str = "default", *, containers: tuple[str, ...] = ("app",),
        init_containers: tuple[str, ...] = (), labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None, **spec: Any) -> dict:
    """A minimal pod; it stays Pending (no scheduler, no kubelet), which is all we need."""
    body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
        "spec": {"serviceAccountName": service_account,
                 "containers": [{"name": c, "image": "registry.k8s.io/pause:3.10"} for c in containers],
                 **spec},
    }
    if init_containers:
        body["spec"]["initContainers"] = [{"name": c, "image": "registry.k8s.io/pause:3.10"}
                                          for c in init_containers]
    return body


def env_of(pod: dict, container: str) -> dict[str, str]:
    for c in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]:
        if c["name"] == container:
            return {e["name"]: e.get("value", "") for e in c.get("env", [])}
    raise KeyError(container)


def mounts_of(pod: dict, container: str) -> dict[str, dict]:
    for c in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]:
        if c["name"] == container:
            return {m["name"]: m for m in c.get("volumeMounts", [])}
    raise KeyError(container)


def volume(pod: dict, name: str) -> dict | None:
    return next((v for v in pod["spec"].get("volumes", []) if v["name"] == name), None)


def mutated(pod: dict) -> bool:
    """Does any container carry credentials of either mode?"""
    keys = {"AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_FULL_URI"}
    return any(keys & env_of(pod, c["name"]).keys() for c in pod["spec"]["containers"])


# -- webhook registration ----------------------------------------------------------------------
def ca_bundle(ca_file: str | Path) -> str:
    return base64.b64encode(Path(ca_file).read_bytes()).decode()


DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def webhook_configuration(name: str, webhook: str, url: str, ca_file: str | Path,
                          namespace_labels: dict[str, str], *, failure_policy: str = "Ignore",
                          reinvocation: str = "IfNeeded") -> dict:
    """deploy/webhook-configuration.yaml as shipped, but calling `url` (never a Service: the API
    server would dial its ClusterIP) and only for namespaces that also carry `namespace_labels`."""
    document = yaml.safe_load((DEPLOY / "webhook-configuration.yaml").read_text())
    document["metadata"]["name"] = name
    [hook] = document["webhooks"]
    hook["name"] = webhook
    hook["clientConfig"] = {"url": url, "caBundle": ca_bundle(ca_file)}
    hook["namespaceSelector"]["matchLabels"] = dict(namespace_labels)
    hook["failurePolicy"] = failure_policy
    hook["reinvocationPolicy"] = reinvocation
    return document


# -- waiting -----------------------------------------------------------------------------------
async def eventually(probe: Callable[[], Awaitable[T] | T], accept: Callable[[T], Any], *, timeout: float = 15.0,
                     interval: float = 0.1, what: str = "condition") -> T:
    """Call `probe` (a coroutine function or a plain one) until `accept(result)` is true; the
    last result, or API error, is in the failure message."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
            if inspect.isawaitable(last):
                last = await last
            if accept(last):
                return last
        except ApiError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached after {timeout:.0f}s; last result: {last!r}"[:4000])
        await asyncio.sleep(interval)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"
