"""The HTTP side of each port: its routes and handlers, served by aiohttp's low-level server.
It decides nothing itself: each review goes to `core.decision`.

Request path of /mutate: body → `review.parse_review` → `IdentityStore.resolve_waiting` →
`admission.decide` → `review.encode_response`. The handlers only translate between HTTP and
that pure path; how each kind of bad input is answered is in docs/mutation.md#answers.
Building the store and the sources is `wiring`'s job, running processes is `processes`'.

Each port has a handful of fixed paths, so a `Routes` table (a dict) stands in for
`web.Application`: its router, middleware chain and response signals were 20-40 µs of each
admission, up to a tenth of its CPU (docs/performance.md#where-the-time-goes).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import web

from injector.certificates.bundle_marker import bundle_in_place
from injector.core.decision import Decision, decide, precheck
from injector.core.review import (
    AdmissionRequest,
    BadReview,
    Envelope,
    decode_json,
    encode_error_review,
    encode_response,
    parse_review,
)
from injector.core.settings import ServeSettings
from injector.server.body_budget import SMALL_BODY, BodyBudget, OverBudget
from injector.server.logs import hot_line
from injector.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from injector.server.tls import CertificateReloader
from injector.sources.store import IdentityStore

log = structlog.get_logger(__name__)

JSON = "application/json"
_UNSUPPORTED_MEDIA = "Invalid Content-Type, expected `application/json`\n"

# What aiohttp buffers of a body the handler has not read yet (it stops reading the socket at twice
# this): a stalled client holds at most that much per connection (docs/reference.md#request-memory).
READ_BUFFER = 16 * 1024

Job = Callable[[], Awaitable[None]]
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass
class ServerState:
    """What the handlers of one process share, and what "ready" means for it."""

    settings: ServeSettings
    store: IdentityStore
    tls: CertificateReloader | None
    metrics: Any
    draining: bool = False
    body_budget: BodyBudget = field(init=False)

    def __post_init__(self) -> None:
        self.body_budget = BodyBudget(self.settings.max_inflight_request_bytes,
                                      self.settings.max_inflight_request_bytes_per_peer)

    @property
    def ready(self) -> bool:
        return not self.not_ready_because()

    def not_ready_because(self) -> list[str]:
        """Every reason /readyz fails (docs/reference.md#readiness); empty when ready."""
        reasons = []
        if self.draining:
            reasons.append("shutting down")
        if self.tls is not None and not self.tls.loaded:
            reasons.append("no serving certificate loaded")
        if self.settings.cert_mode == "self-managed" and not bundle_in_place(Path(self.settings.cert_dir)):
            reasons.append(f"caBundle of {self.settings.webhook_configuration} not in place yet")
        reasons += [f"waiting for {source}" for source in self.store.waiting_for]
        return reasons


class ServerJobs:
    """Jobs that run exactly as long as a server: started before it listens, cancelled after its
    last request has finished (`stop`); `then` runs last, to close what the jobs used (the API
    client)."""

    def __init__(self, jobs: Iterable[Job], then: Job | None = None) -> None:
        self._jobs = list(jobs)
        self._then = then
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(job()) for job in self._jobs]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._then is not None:
            await self._then()


async def refresh_gauges(state: ServerState, interval: float = 1.0) -> None:
    """Keep the gauges that describe state (not events) current, and publish the counts of the
    serving path (`Metrics.publish`), once more when stopped."""
    metrics = state.metrics
    try:
        while True:
            metrics.used.set(1 if state.store.tables.service_accounts else 0)
            metrics.ready.set(1 if state.ready else 0)
            if state.tls is not None and state.tls.not_after is not None:
                metrics.cert_expiry.set(state.tls.not_after.timestamp())
            metrics.publish()
            await asyncio.sleep(interval)
    finally:
        metrics.publish()


# -- /mutate ---------------------------------------------------------------------------------
def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text if text.endswith("\n") else text + "\n")


async def handle_mutate(state: ServerState, request: web.BaseRequest) -> web.StreamResponse:
    started = time.perf_counter()
    content_type = request.headers.get("Content-Type", "")
    if content_type.split(";", 1)[0].strip().lower() != JSON:
        log.warning("admission refused", reason="unsupported content type", content_type=content_type)
        return _plain(415, _UNSUPPORTED_MEDIA)
    limit = state.settings.max_request_bytes
    size = request.content_length
    if size is not None and size > limit:
        return _too_large(size, limit)
    small = size is not None and size <= SMALL_BODY  # every review the API server sends: no bookkeeping
    try:
        with _UNRESERVED if small else state.body_budget.reserved(_peer(request), limit if size is None else size):
            try:
                if request.content.is_eof():  # the whole body came with the headers: nothing to wait for
                    body = request.content.read_nowait()
                    if len(body) > limit:
                        return _too_large(len(body), limit)
                else:
                    async with asyncio.timeout(state.settings.read_body_timeout or None):
                        body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return _too_large(None, limit)
            except TimeoutError:
                return _too_slow(state.settings.read_body_timeout)
            except ConnectionError as exc:  # the client went away mid-body: its doing, not ours
                return _client_gone(_peer(request), exc)
            try:
                envelope, parsed = parse_review(decode_json(body))
            except BadReview as exc:
                log.warning("admission refused", reason="undecodable review", error=str(exc), bytes=len(body))
                return _plain(exc.status, str(exc))
    except OverBudget as exc:
        return _over_budget(state, _peer(request), size, exc.scope)
    if isinstance(parsed, str):
        log.warning("admission denied", reason="bad content", detail=parsed)
        return web.Response(body=encode_error_review(envelope, parsed), content_type=JSON)

    try:
        decision = precheck(parsed)
        if decision is None:
            resolution = await state.store.resolve_waiting(parsed.namespace, parsed.service_account)
            if not resolution.service_account_known and resolution.identity is None:
                state.metrics.missing_sa.inc()
            decision = decide(parsed, resolution, state.settings.mutation)
        body_out = encode_response(envelope, decision.allowed, decision.operations, decision.message or None,
                                   decision.warnings)
    except Exception as exc:  # allow-and-log: never fail a pod because of our own bug
        log.exception("admission failed; allowing the pod unchanged", uid=envelope.uid)
        decision = Decision(True, "internal-error", [], message=f"pod-identity-injector error: {exc}")
        body_out = encode_response(envelope, True, None, decision.message)

    elapsed = time.perf_counter() - started
    state.metrics.count_admission(decision.mode, decision.reason, elapsed)
    _log_decision(envelope, parsed, decision, elapsed)
    return web.Response(body=body_out, content_type=JSON)


def _too_large(size: int | None, limit: int) -> web.Response:
    got = f"{size} bytes" if size is not None else "more"
    log.warning("admission refused", reason="request body too large", limit=limit, size=size)
    return _plain(413, f"request body too large: {got}, the limit is {limit} bytes (--max-request-bytes)")


_UNRESERVED = contextlib.nullcontext()


def _peer(request: web.BaseRequest) -> str:
    return request.remote or "unknown"


CLIENT_CLOSED = 499  # nginx's code for "the client closed the request": counted apart from our 5xx


def _client_gone(peer: str, exc: BaseException) -> web.Response:
    """docs/reference.md#client-errors: logged once, as a warning without a traceback; nobody
    reads the answer."""
    log.warning("admission abandoned by the client", reason="connection lost mid-body", peer=peer,
                error=str(exc) or type(exc).__name__)
    response = web.Response(status=CLIENT_CLOSED, text="client closed the request\n")
    response.force_close()
    return response


def _over_budget(state: ServerState, peer: str, size: int | None, scope: str) -> web.Response:
    """docs/reference.md#request-memory: refused before a byte of the body is read."""
    budget = state.body_budget
    limit = budget.per_peer if scope == "peer" else budget.total
    flag = "--max-inflight-request-bytes" + ("-per-peer" if scope == "peer" else "")
    log.warning("admission refused", reason="request bodies in flight over budget", scope=scope, peer=peer,
                size=size, limit=limit)
    response = _plain(503, f"too many request body bytes in flight ({flag} {limit}); retry")
    response.headers["Retry-After"] = "1"
    response.force_close()
    return response


def _too_slow(seconds: float) -> web.Response:
    """docs/reference.md#connections: the body did not arrive in time; the connection is closed
    after the answer (and after at most `connections.LINGER` more reading of the rest)."""
    log.warning("admission refused", reason="request body too slow", limit_seconds=seconds)
    response = _plain(408, f"request body not received within {seconds:g}s (--read-body-timeout)")
    response.force_close()
    return response


def _log_decision(envelope: Envelope, request: AdmissionRequest, decision: Decision, elapsed: float) -> None:
    """One structured line per admission (docs/reference.md#logs)."""
    fields: dict[str, Any] = {
        "namespace": request.namespace,
        "pod": request.pod_name,
        "service_account": request.service_account,
        "decision": decision.reason,
        "mutated": decision.mutated,
        "uid": envelope.uid,
        "duration_ms": int(elapsed * 1_000_000) / 1000,  # µs resolution; round() costs more
    }
    if decision.mode:
        fields["mode"] = decision.mode
    if decision.role_arn:
        fields["role_arn"] = decision.role_arn
    if request.dry_run:
        fields["dry_run"] = True
    plan = decision.plan
    if plan is not None:
        if plan.injected:
            fields["containers"] = list(plan.injected)
        if plan.skipped:
            fields["skipped_containers"] = list(plan.skipped)
        if plan.notes:
            fields["notes"] = list(plan.notes)
    if decision.warnings:
        fields["warnings"] = list(decision.warnings)
    if decision.message:
        fields["detail"] = decision.message
    hot_line("warning" if decision.worrying else "info", "admission", fields)


# -- health, debug, metrics ------------------------------------------------------------------
async def handle_healthz(request: web.BaseRequest) -> web.Response:
    return web.Response(text="ok")


async def handle_readyz(state: ServerState, request: web.BaseRequest) -> web.Response:
    if state.ready:
        return web.Response(text="ok")
    return _plain(503, "not ready: " + "; ".join(state.not_ready_because()))


async def handle_debug_deny(request: web.BaseRequest) -> web.Response:
    body = {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
            "response": {"uid": "", "allowed": False, "status": {"message": "Test deny message"}}}
    return web.json_response(body)


async def handle_debug_500(request: web.BaseRequest) -> web.Response:
    return web.Response(status=500, text="test error")


async def handle_metrics(exposition: Any, request: web.BaseRequest) -> web.Response:
    return web.Response(body=exposition.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


async def handle_debug_cache(state: ServerState, request: web.BaseRequest) -> web.Response:
    return web.Response(body=orjson.dumps(state.store.dump(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS),
                        content_type=JSON)


async def handle_debug_cache_clear(state: ServerState, request: web.BaseRequest) -> web.Response:
    state.store.clear()
    log.warning("identity cache cleared by debug handler")
    return web.Response()


# -- the ports -------------------------------------------------------------------------------
GET = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class Route:
    handler: Handler
    methods: frozenset[str] | None = None  # None: any method
    counted: bool = False  # in http_requests_total, per method and status


class Routes:
    """One port's paths and the handler of each: the request handler of aiohttp's low-level
    `web.Server` (see the module's docstring). An unknown path is 404 and a method a route does
    not take is 405 with `Allow`, as aiohttp's router answers them. While `closing()` is true
    (the drain), every answer ends its connection (docs/reference.md#shutdown)."""

    def __init__(self, routes: dict[str, Route], metrics: Any, max_body: int = 1024**2,
                 closing: Callable[[], bool] = lambda: False) -> None:
        self.routes = routes
        self._metrics = metrics
        self._max_body = max_body
        self._closing = closing
        self._loop: asyncio.AbstractEventLoop | None = None  # set by `Routes.server`

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        response = await self._answer(request)
        if self._closing():
            response.force_close()
        return response

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        route = self.routes.get(request.path)
        if route is None:
            return web.Response(status=404, text="404: Not Found")
        if route.methods is not None and request.method not in route.methods:
            return web.Response(status=405, text="405: Method Not Allowed",
                                headers={"Allow": ",".join(sorted(route.methods))})
        if not route.counted:
            return await route.handler(request)
        status, started = 500, time.perf_counter()
        try:
            response = await route.handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self._metrics.count_request(request.method, request.path, status, time.perf_counter() - started)

    def make_request(self, message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        """The server's request factory: a plain request whose body may be `max_body` bytes."""
        return web.BaseRequest(message, payload, protocol, writer, task, self._loop, client_max_size=self._max_body)

    def server(self, **kwargs: Any) -> web.Server:
        """The low-level server of these routes, on the running loop (asked once here: each
        `asyncio.get_running_loop()` is a getpid(2))."""
        self._loop = asyncio.get_running_loop()
        kwargs.setdefault("read_bufsize", READ_BUFFER)
        return web.Server(self, request_factory=self.make_request, loop=self._loop, **kwargs)


def webhook_routes(state: ServerState) -> Routes:
    """The TLS port: /mutate, the probes (not counted) and, on request, the Go webhook's debug routes."""
    routes = {"/mutate": Route(partial(handle_mutate, state), counted=True), **_probes(state)}
    if state.settings.enable_debugging_handlers:
        routes["/debug/alpha/deny"] = Route(handle_debug_deny, counted=True)
        routes["/debug/alpha/500"] = Route(handle_debug_500, counted=True)
    # Draining, an answer ends its keep-alive connection: the API server's next call opens one to a
    # replica that stays, instead of reusing this one until the moment it is closed under it.
    return Routes(routes, state.metrics, state.settings.max_request_bytes, closing=lambda: state.draining)


def health_routes(state: ServerState) -> Routes:
    """The probes' own plain-HTTP port (--health-port): nothing a stranger can fill but its own
    connection slots, and a new connection evicts a stalled one (docs/reference.md#probes)."""
    return Routes(_probes(state), state.metrics)


def _probes(state: ServerState) -> dict[str, Route]:
    """/healthz and /readyz, on the webhook port and on the probe port alike (not counted)."""
    return {"/healthz": Route(handle_healthz, GET), "/readyz": Route(partial(handle_readyz, state), GET)}


def metrics_routes(state: ServerState, exposition: Any) -> Routes:
    """The plain-HTTP port: /metrics, /healthz and, on request, the identity cache debug routes.
    /healthz is here as in the Go webhook up to v0.5.5, whose manifests (kOps's addon, the
    community chart) still probe it on this port (docs/migrate.md#probes)."""
    routes = {"/metrics": Route(partial(handle_metrics, exposition), GET), "/healthz": Route(handle_healthz, GET)}
    if state.settings.enable_debugging_handlers:
        routes["/debug/alpha/cache"] = Route(partial(handle_debug_cache, state), GET)
        routes["/debug/alpha/cache/clear"] = Route(partial(handle_debug_cache_clear, state))
    return Routes(routes, state.metrics)
