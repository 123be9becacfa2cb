"""Kubernetes Events on a ServiceAccount whose annotations the webhook cannot use as written
(the reasons: docs/mutation.md#service-account-events; the limits: docs/reference.md#service-account-events).
It never blocks admission: Events are queued, paced and dropped when the queue is full.

The store calls `notice` (one of its `problem_listeners`) when an update brings a ServiceAccount
problems or warnings it did not have. `notice` runs inside the watch's callbacks and only queues
the ServiceAccount's key. `run`, a job beside the watch, takes the keys in order, reads each
ServiceAccount again (for its uid, which the table does not keep, and for its annotations as they
are now: a mistake already fixed is not reported) and creates one core/v1 Event of type Warning
per finding, which `kubectl describe serviceaccount` lists.

What keeps this from flooding the API server, whatever the cluster does:

* Dedup. A (ServiceAccount uid, reason, message) sent in the last `window` seconds is not sent
  again. The Event's name is derived from the same three, so another replica, a restarted
  process or a later try gets 409 AlreadyExists while the Event lives (the API server's
  --event-ttl, 1 h by default) and nothing is stored twice. Nothing is patched: an Event says
  once that a ServiceAccount is wrong (`count` stays 1), until the ServiceAccount changes.
* A token bucket over every request of this job, GET and POST alike: `burst` at once, then
  `rate` a second.
* A bounded queue: past `queue_size` ServiceAccounts waiting, new ones are dropped, counted in
  `pod_identity_injector_service_account_events_total{outcome="dropped"}` and logged at warning
  once per overflow. A ServiceAccount already waiting is not queued twice.

A request that fails (403 without the RBAC rule, the API server down, a timeout) is logged at
warning and not retried: the next change to that ServiceAccount, or the next process, tries
again. Nothing here raises into the watch or admission.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client

from injector.core.identity import RoleMapping, near_misses, service_account_entry
from injector.core.settings import MutationSettings
from injector.kube.client import KubeError, call_json, get_object
from injector.kube.rate_limit import TokenBucket

log = structlog.get_logger(__name__)

COMPONENT = "pod-identity-injector"  # source.component and reportingComponent
REQUEST_TIMEOUT = 5.0
MESSAGE_BYTES = 1024  # the API server refuses a longer Event message
VALUE_CHARS = 80  # an annotation value quoted in a message is cut to this
INSTANCE_CHARS = 128  # the API server's limit for reportingInstance

# One reason per kind of finding; stable: people filter on them (kubectl get events --field-selector reason=…).
INVALID_ROLE_ARN = "InvalidRoleArn"
INVALID_STS_REGIONAL_ENDPOINTS = "InvalidStsRegionalEndpoints"
INVALID_TOKEN_EXPIRATION = "InvalidTokenExpiration"
INVALID_ANNOTATIONS = "InvalidAnnotations"
INVALID_ANNOTATION = "InvalidAnnotation"  # a problem identity.py reports that has no reason of its own yet
NEAR_MISS_ANNOTATION = "NearMissAnnotation"
NO_ROLE_ARN = "NoRoleArn"
REASONS = (INVALID_ROLE_ARN, INVALID_STS_REGIONAL_ENDPOINTS, INVALID_TOKEN_EXPIRATION, INVALID_ANNOTATIONS,
           INVALID_ANNOTATION, NEAR_MISS_ANNOTATION, NO_ROLE_ARN)

Finding = tuple[str, str]  # (reason, message)
_FAILURES = (KubeError, OSError, TimeoutError, aiohttp.ClientError)


# -- what to say --------------------------------------------------------------------------------
def findings(annotations: Any, settings: MutationSettings) -> list[Finding]:
    """(reason, message) for each thing wrong with a ServiceAccount's annotations, in a stable
    order; [] when there is nothing to say. The judgement is `service_account_entry`'s and
    `near_misses`'s (the same as the logs and the admission warnings); the wording and the fix
    are this module's."""
    entry = service_account_entry(annotations, settings)
    values = annotations if isinstance(annotations, dict) else {}
    found = [_problem(problem, values, entry, settings) for problem in entry.problems]
    for seen, meant, why in near_misses(values, settings):
        found.append((NEAR_MISS_ANNOTATION, f"annotation {_short(seen)} is ignored: {why}; rename it to {meant}"))
    if entry.annotated and not entry.role_arn:
        role = settings.annotation("role-arn")
        found.append((NO_ROLE_ARN, f"{', '.join(settings.annotation(n) for n in entry.annotated)} set without "
                                   f"{role}: pods of this ServiceAccount get no role from it (EKS Pod Identity uses "
                                   f"only sts-regional-endpoints and token-expiration); add {role} or remove them"))
    return [(reason, _cut(message)) for reason, message in found]


def _problem(problem: str, values: dict[str, Any], entry: RoleMapping, settings: MutationSettings) -> Finding:
    def about(name: str) -> bool:
        return problem.startswith(settings.annotation(name) + " ")

    def value(name: str) -> str:
        return f"{settings.annotation(name)} {_short(values.get(settings.annotation(name)))}"

    if about("role-arn"):
        also = " or, with --compose-role-arn, a role name" if settings.compose_role_arn else ""
        return INVALID_ROLE_ARN, (f"{value('role-arn')} is not an IAM role ARN; pods get it as AWS_ROLE_ARN and "
                                  f"STS refuses it. Set it to arn:aws:iam::<account-id>:role/<name>{also}")
    if about("sts-regional-endpoints"):
        default = "regional" if settings.sts_regional_endpoint else "global"
        return INVALID_STS_REGIONAL_ENDPOINTS, (f"{value('sts-regional-endpoints')} is not a boolean, so the "
                                                f"default ({default} STS endpoint) applies; set it to \"true\" or "
                                                "\"false\"")
    if about("token-expiration"):
        return INVALID_TOKEN_EXPIRATION, (f"{value('token-expiration')} is not a whole number of seconds, so "
                                          f"{entry.token_expiration} applies; set e.g. \"86400\" (at least 600)")
    if problem.startswith("metadata.annotations "):
        return INVALID_ANNOTATIONS, "metadata.annotations is not a map, so the webhook reads none of them"
    return INVALID_ANNOTATION, problem


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else type(value).__name__
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS - 1] + "…"


def _cut(message: str, limit: int = MESSAGE_BYTES) -> str:
    data = message.encode()
    if len(data) <= limit:
        return message
    return data[:limit - len("…".encode())].decode(errors="ignore") + "…"


# -- the Event ------------------------------------------------------------------------------------
def event_name(service_account: str, uid: str, reason: str, message: str) -> str:
    """`<ServiceAccount name>.<16 hex digits of the triple>`: the same finding on the same object
    always has the same name (a DNS subdomain, as the ServiceAccount's own name is)."""
    digest = hashlib.sha256("\0".join((uid, reason, message)).encode()).hexdigest()[:16]
    return f"{service_account[:253 - 17].rstrip('.-')}.{digest}"


def event_body(service_account: dict[str, Any], reason: str, message: str, instance: str,
               now: datetime) -> dict[str, Any]:
    """A core/v1 Event about this ServiceAccount object (its metadata as read)."""
    metadata = service_account["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    involved = {"apiVersion": "v1", "kind": "ServiceAccount", "namespace": namespace, "name": name, "uid": uid}
    if metadata.get("resourceVersion"):
        involved["resourceVersion"] = metadata["resourceVersion"]
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": event_name(name, uid, reason, message), "namespace": namespace},
        "involvedObject": involved,
        "type": "Warning", "reason": reason, "message": message,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT, "reportingInstance": instance,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
    }


def reporting_instance() -> str:
    """The webhook pod's name: POD_NAME (the chart sets it from the downward API), else the host
    name, which in a pod is the pod's name too."""
    return (os.environ.get("POD_NAME") or socket.gethostname() or COMPONENT)[:INSTANCE_CHARS]


# -- the job --------------------------------------------------------------------------------------
class ServiceAccountEvents:
    """The queue, the dedup memory and the job that creates the Events (see the module's docstring)."""

    def __init__(self, api: client.ApiClient | None, settings: MutationSettings, *, instance: str = "",
                 queue_size: int = 1000, rate: float = 1.0, burst: int = 25, window: float = 600.0,
                 remember: int = 4096, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 counted: Callable[[str], Any] = lambda outcome: None) -> None:
        """`counted(outcome)` is told every outcome (the server passes its metric's)."""
        self.core = client.CoreV1Api(api) if api is not None else None
        self.counted = counted
        self.settings = settings
        self.instance = instance or reporting_instance()
        self.queue_size, self.window, self.remember = queue_size, window, remember
        self.clock, self.now = clock, now
        self.limit = TokenBucket(rate, burst, clock, sleep)
        self.counts: Counter[str] = Counter()  # outcomes, as in the metric
        self._pending: dict[str, None] = {}  # ServiceAccount keys in arrival order
        self._wake = asyncio.Event()
        self._sent: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._overflowing = False
        self._forbidden_logged = False

    # -- the store's side: never waits ---------------------------------------------------------
    def notice(self, key: str, entry: RoleMapping) -> None:
        """A problem listener of the store: queue the ServiceAccount `namespace/name`. `entry` is
        not kept: the job reads the ServiceAccount as it is when its turn comes."""
        if key in self._pending:
            return
        if len(self._pending) >= self.queue_size:
            self._count("dropped")
            if not self._overflowing:
                self._overflowing = True
                log.warning("service account event queue full; dropping", service_account=key,
                            queued=len(self._pending))
            return
        self._pending[key] = None
        self._wake.set()

    def reconnect(self, api: client.ApiClient) -> None:
        """Carry on with another client in another event loop; what is queued stays queued."""
        self.core = client.CoreV1Api(api)
        self._wake = asyncio.Event()
        if self._pending:
            self._wake.set()

    # -- the job ---------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            while not self._pending:
                self._overflowing = False
                self._wake.clear()
                await self._wake.wait()
            key = next(iter(self._pending))
            del self._pending[key]
            try:
                await self.report(key)
            except asyncio.CancelledError:
                self._pending.setdefault(key, None)  # for whoever runs this job next
                raise
            except Exception as exc:  # one ServiceAccount must not stop the job
                log.warning("service account event failed", service_account=key,
                            error=str(exc) or type(exc).__name__)

    async def report(self, key: str) -> None:
        """Read the ServiceAccount, then create an Event for each finding not sent recently."""
        namespace, _, name = key.partition("/")
        await self.limit.acquire()
        try:
            obj = await self._get(namespace, name)
        except _FAILURES as exc:
            self._failed(key, "read", exc)
            return
        metadata = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(metadata, dict) or not metadata.get("uid"):
            log.debug("service account gone before its event", service_account=key)
            return
        obj = {**obj, "metadata": {**metadata, "namespace": namespace, "name": name}}
        for reason, message in findings(metadata.get("annotations"), self.settings):
            sent = (str(metadata["uid"]), reason, message)
            if self._recent(sent):
                self._count("suppressed")
                log.debug("service account event suppressed: sent recently", service_account=key, reason=reason)
                continue
            await self.limit.acquire()
            try:
                await self._post(namespace, event_body(obj, reason, message, self.instance, self.now()))
            except KubeError as exc:
                if exc.status != 409:
                    self._failed(key, "create", exc)
                    continue
                self._remember(sent)
                self._count("exists")
                log.debug("service account event already recorded", service_account=key, reason=reason)
                continue
            except _FAILURES as exc:
                self._failed(key, "create", exc)
                continue
            self._remember(sent)
            self._count("created")
            log.info("service account event created", service_account=key, reason=reason, message=message)

    # -- the API server (replaced in unit tests) -------------------------------------------------
    async def _get(self, namespace: str, name: str) -> dict[str, Any] | None:
        assert self.core is not None
        return await asyncio.wait_for(get_object(self.core.read_namespaced_service_account, name, namespace,
                                                 timeout=REQUEST_TIMEOUT), REQUEST_TIMEOUT)

    async def _post(self, namespace: str, body: dict[str, Any]) -> None:
        assert self.core is not None
        await asyncio.wait_for(call_json(self.core.create_namespaced_event, namespace, body,
                                         _request_timeout=REQUEST_TIMEOUT), REQUEST_TIMEOUT)

    # -- bookkeeping -------------------------------------------------------------------------------
    def _recent(self, sent: tuple[str, str, str]) -> bool:
        at = self._sent.get(sent)
        return at is not None and self.clock() - at < self.window

    def _remember(self, sent: tuple[str, str, str]) -> None:
        self._sent[sent] = self.clock()
        self._sent.move_to_end(sent)
        while len(self._sent) > self.remember:
            self._sent.popitem(last=False)

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        self.counted(outcome)

    def _failed(self, key: str, step: str, exc: BaseException) -> None:
        """Logged, counted, not retried. A 403 is said once at warning with the fix (it is the
        same for every ServiceAccount), then at debug."""
        self._count("failed")
        error = str(exc) or type(exc).__name__
        if isinstance(exc, KubeError) and exc.status == 403:
            if self._forbidden_logged:
                log.debug("service account event forbidden", service_account=key, step=step, error=error)
                return
            self._forbidden_logged = True
            log.warning("service account event forbidden", service_account=key, step=step, error=error,
                        fix="grant create on events (core group) to the webhook, or --service-account-events=false")
            return
        log.warning("service account event failed; not retried", service_account=key, step=step, error=error)
