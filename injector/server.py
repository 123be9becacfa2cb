"""The admission server: aiohttp over TLS, one or more serving processes.

Request path: body → `review.parse_review` → `IdentityStore.resolve` → `admission.decide`
→ `review.encode_response`. Everything that waits (sockets, files, signals) is here; the
decision itself is the pure code shared with `mutate`.

Processes: with `--workers N` > 1 a supervisor spawns N serving processes that share the
TLS port (SO_REUSEPORT) and serves /metrics itself, summing the workers' metrics. With one
worker, everything runs in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from .admission import Decision, decide, precheck
from .cert_controller import SelfManagedCertificates, bundle_in_place
from .logging import configure_logging
from .review import BadReview, Envelope, decode_json, encode_error_review, encode_response, parse_review
from .settings import ServeSettings, SettingsError
from .sources import IdentityStore
from .sources.credentials_file import CredentialsFileSource
from .sources.static import InputError, load_config_map, load_service_accounts
from .tls import CertificateLoadError, CertificateReloader, parse_cipher_suites, parse_min_version

log = structlog.get_logger("injector.server")

JSON = "application/json"
_UNSUPPORTED_MEDIA = "Invalid Content-Type, expected `application/json`\n"


def available_cpus() -> int:
    """CPUs this process may use: affinity, capped by a cgroup v2 CPU quota if any."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        count = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        with open("/sys/fs/cgroup/cpu.max") as cpu_max:
            quota, period = cpu_max.read().split()[:2]
        if quota != "max":
            count = min(count, max(1, round(int(quota) / int(period))))
    return max(1, count)


@dataclass
class ServerState:
    """What the handlers share within one process."""

    settings: ServeSettings
    store: IdentityStore
    tls: CertificateReloader | None
    metrics: Any
    draining: bool = False
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.not_ready_because()

    def not_ready_because(self) -> list[str]:
        reasons = []
        if self.draining:
            reasons.append("shutting down")
        if self.tls is not None and not self.tls.loaded:
            reasons.append("no serving certificate loaded")
        if self.settings.cert_mode == "self-managed" and not bundle_in_place(Path(self.settings.cert_dir)):
            reasons.append(f"caBundle of {self.settings.webhook_configuration} not in place yet")
        reasons += [f"waiting for {source}" for source in self.store.waiting_for]
        return reasons


STATE = web.AppKey("state", ServerState)


# -- identity sources ------------------------------------------------------------------------
def uses_cluster(settings: ServeSettings) -> bool:
    """ServiceAccounts come from the API server unless manifests were given; the ConfigMap on request."""
    return not settings.service_account_files or settings.watch_config_map


def build_store(settings: ServeSettings) -> tuple[IdentityStore, CredentialsFileSource | None]:
    """Load every file source once; a bad file stops start-up with a clear message."""
    mutation = settings.mutation
    store = IdentityStore(mutation, settings.service_account_lookup_grace_period)
    if settings.service_account_files:
        store.replace_service_accounts(load_service_accounts(settings.service_account_files, mutation))
    if settings.config_map_file:
        if settings.watch_config_map:
            raise SettingsError("--config-map FILE and --watch-config-map are exclusive: choose one source")
        store.replace_config_map(load_config_map(settings.config_map_file, mutation))
    credentials = None
    if settings.watch_container_credentials_config:
        credentials = CredentialsFileSource(settings.watch_container_credentials_config, store)
        credentials.load()
    if store.tables.service_accounts:
        log.info("service accounts loaded", count=len(store.tables.service_accounts),
                 with_role=sum(1 for e in store.tables.service_accounts.values() if e.role_arn))
        for key, entry in store.tables.service_accounts.items():
            for problem in entry.problems:
                log.warning("service account annotation problem", service_account=key, problem=problem)
    for problem in store.tables.config_map.rejected:
        log.error("config map entry rejected", problem=problem)
    return store, credentials


async def connect_cluster(settings: ServeSettings, store: IdentityStore, *, manage_certificates: bool = False,
                          watch: bool = True) -> tuple[Any, list[Any]]:
    """The API client and the sources this process runs (none: `(None, [])`).

    `watch=False` skips the identity watches (the supervisor of several workers needs them
    only for the debug cache dump).
    """
    watch = watch and uses_cluster(settings)
    certificates = manage_certificates and settings.cert_mode == "self-managed"
    if not (watch or certificates):
        return None, []
    from .kube import api_client
    from .sources.configmap import ConfigMapSource
    from .sources.serviceaccounts import ServiceAccountSource

    api = await api_client(settings.kubeconfig, settings.kube_api)
    sources: list[Any] = []
    if watch and not settings.service_account_files:
        sources.append(ServiceAccountSource(api, store, settings.resync_period))
    if watch and settings.watch_config_map:
        sources.append(ConfigMapSource(api, store, settings.namespace, settings.resync_period))
    if certificates:
        controller = SelfManagedCertificates(
            api, namespace=settings.namespace, secret=settings.tls_secret, service=settings.service_name,
            webhook_configuration=settings.webhook_configuration, directory=Path(settings.cert_dir),
            validity=settings.cert_validity, renew_before=settings.cert_renew_before,
            extra_sans=settings.cert_extra_sans, check_interval=settings.cert_check_interval)
        log.info("self-managed certificate: waiting for the Secret and caBundle",
                 secret=f"{settings.namespace}/{settings.tls_secret}", configuration=settings.webhook_configuration)
        await controller.wait_until_ready()
        sources.append(controller)
    log.info("connected to the API server", api=api.configuration.host,
             sources=[type(source).__name__ for source in sources])
    return api, sources


def build_tls(settings: ServeSettings) -> CertificateReloader:
    try:
        min_version = parse_min_version(settings.tls_min_version)
        ciphers = parse_cipher_suites(settings.tls_cipher_suites)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return CertificateReloader(settings.tls_cert, settings.tls_key, min_version, ciphers)


# -- /mutate ---------------------------------------------------------------------------------
def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text if text.endswith("\n") else text + "\n")


async def handle_mutate(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    started = time.perf_counter()
    content_type = request.headers.get("Content-Type", "")
    if content_type.split(";", 1)[0].strip().lower() != JSON:
        log.warning("admission refused", reason="unsupported content type", content_type=content_type)
        return _plain(415, _UNSUPPORTED_MEDIA)
    limit = state.settings.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        return _too_large(request.content_length, limit)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _too_large(None, limit)
    try:
        envelope, parsed = parse_review(decode_json(body))
    except BadReview as exc:
        log.warning("admission refused", reason="undecodable review", error=str(exc), bytes=len(body))
        return _plain(exc.status, str(exc))
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
        body_out = encode_response(envelope, decision.allowed, decision.operations, decision.message or None)
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


def _log_decision(envelope: Envelope, request: Any, decision: Decision, elapsed: float) -> None:
    fields: dict[str, Any] = {
        "namespace": request.namespace,
        "pod": request.pod_name,
        "service_account": request.service_account,
        "decision": decision.reason,
        "mutated": decision.mutated,
        "uid": envelope.uid,
        "duration_ms": round(elapsed * 1000, 3),
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
    if decision.message:
        fields["detail"] = decision.message
    log.info("admission", **fields)


# -- health, debug, metrics ------------------------------------------------------------------
async def handle_healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def handle_readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.ready:
        return web.Response(text="ok")
    return _plain(503, "not ready: " + "; ".join(state.not_ready_because()))


async def handle_debug_deny(request: web.Request) -> web.Response:
    body = {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
            "response": {"uid": "", "allowed": False, "status": {"message": "Test deny message"}}}
    return web.json_response(body)


async def handle_debug_500(request: web.Request) -> web.Response:
    return web.Response(status=500, text="test error")


async def handle_metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[EXPOSITION].render(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def handle_debug_cache(request: web.Request) -> web.Response:
    import orjson

    dump = request.app[STATE].store.dump()
    return web.Response(body=orjson.dumps(dump, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS),
                        content_type=JSON)


async def handle_debug_cache_clear(request: web.Request) -> web.Response:
    request.app[STATE].store.clear()
    log.warning("identity cache cleared by debug handler")
    return web.Response()


EXPOSITION = web.AppKey("exposition", object)


def counted(handler: Any) -> Any:
    """Count requests per method/path/status. A plain wrapper: aiohttp middlewares cost
    about 40 µs a request, a sixth of the whole /mutate budget."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            request.app[STATE].metrics.count_request(request.method, request.path, status)

    return wrapper


def webhook_app(state: ServerState) -> web.Application:
    app = web.Application(client_max_size=state.settings.max_request_bytes)
    app[STATE] = state
    app.router.add_route("*", "/mutate", counted(handle_mutate))
    app.router.add_get("/healthz", handle_healthz)  # probes stay out of the request counts
    app.router.add_get("/readyz", handle_readyz)
    if state.settings.enable_debugging_handlers:
        app.router.add_route("*", "/debug/alpha/deny", counted(handle_debug_deny))
        app.router.add_route("*", "/debug/alpha/500", counted(handle_debug_500))
    return app


def metrics_app(state: ServerState, exposition: Any) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app[EXPOSITION] = exposition
    app.router.add_get("/metrics", handle_metrics)
    if state.settings.enable_debugging_handlers:
        app.router.add_get("/debug/alpha/cache", handle_debug_cache)
        app.router.add_route("*", "/debug/alpha/cache/clear", handle_debug_cache_clear)
    return app


# -- process roles ---------------------------------------------------------------------------
def _host(settings: ServeSettings) -> str | None:
    return settings.bind_address or None


def _install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal; exiting immediately", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("shutdown requested", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


async def _start_site(runner: web.AppRunner, settings: ServeSettings, port: int, **kwargs: Any) -> web.TCPSite:
    await runner.setup()
    site = web.TCPSite(runner, _host(settings), port, backlog=1024, **kwargs)
    await site.start()
    return site


async def serve_process(settings: ServeSettings, *, with_metrics: bool, worker: int = 0,
                        prepared: tuple[IdentityStore, CredentialsFileSource | None, CertificateReloader] | None
                        = None) -> None:
    """One serving process: the TLS webhook port, and /metrics when it is the only process.

    The process that serves /metrics also manages self-managed certificates; it finishes
    that before it listens, so a listener always has a certificate. A worker sharing the
    port with others starts listening only once its sources are loaded: a readiness probe
    reaches just one of them, so each must be ready before it takes requests.
    """
    from .metrics import Exposition, Metrics

    shared_port = settings.workers != 1
    if shared_port:
        structlog.contextvars.bind_contextvars(worker=worker)
    store, credentials, tls = prepared or (*build_store(settings), build_tls(settings))
    api, sources = await connect_cluster(settings, store, manage_certificates=with_metrics)
    if not tls.loaded:
        tls.load()
    metrics = Metrics()
    state = ServerState(settings, store, tls, metrics)
    start_background(state, credentials, sources)
    if shared_port:
        await _wait_until_ready(state)

    stop = asyncio.Event()
    _install_stop_signals(stop)
    runner = web.AppRunner(webhook_app(state), access_log=None, shutdown_timeout=settings.shutdown_timeout)
    await _start_site(runner, settings, settings.port, ssl_context=tls.server_context(),
                      reuse_port=settings.workers != 1)
    metrics_runner = None
    if with_metrics and settings.metrics_port:
        metrics_runner = web.AppRunner(metrics_app(state, Exposition(metrics)), access_log=None)
        await _start_site(metrics_runner, settings, settings.metrics_port)

    log.info("serving", port=settings.port, metrics_port=settings.metrics_port if with_metrics else None,
             pid=os.getpid())

    await stop.wait()
    await _drain(state, runner)
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    if api is not None:
        await api.close()
    log.info("shutdown complete")


async def _wait_until_ready(state: ServerState) -> None:
    for tick in itertools.count(1):
        if state.ready:
            return
        if tick % 100 == 0:  # every ~10 s
            log.info("not listening yet", waiting_for=state.not_ready_because())
        await asyncio.sleep(0.1)


def start_background(state: ServerState, credentials: CredentialsFileSource | None, sources: list[Any]) -> None:
    """Start what runs beside the handlers: file watches, cluster watches, gauges."""
    for source in sources:
        state.tasks.append(asyncio.create_task(source.run()))
    if credentials is not None:
        state.tasks.append(asyncio.create_task(credentials.watch()))
    if state.tls is not None:
        state.tasks.append(asyncio.create_task(state.tls.watch(state.settings.cert_reload_interval)))
    state.tasks.append(asyncio.create_task(_refresh_gauges(state)))


async def _refresh_gauges(state: ServerState, interval: float = 1.0) -> None:
    metrics = state.metrics
    while True:
        metrics.used.set(1 if state.store.tables.service_accounts else 0)
        metrics.ready.set(1 if state.ready else 0)
        if state.tls is not None and state.tls.not_after is not None:
            metrics.cert_expiry.set(state.tls.not_after.timestamp())
        await asyncio.sleep(interval)


async def _drain(state: ServerState, runner: web.AppRunner) -> None:
    """Report not-ready, keep serving for --shutdown-delay, then finish in-flight requests."""
    state.draining = True
    if state.settings.shutdown_delay > 0:
        log.info("draining: not ready, still serving", seconds=state.settings.shutdown_delay)
        await asyncio.sleep(state.settings.shutdown_delay)
    for task in state.tasks:
        task.cancel()
    await runner.cleanup()  # stops accepting, waits up to shutdown_timeout for handlers


def _worker_main(settings: ServeSettings, index: int) -> None:
    """Entry point of a spawned serving process."""
    configure_logging(settings.log_format, settings.log_level)
    _run_loop(serve_process(settings, with_metrics=False, worker=index))


async def supervise(settings: ServeSettings, workers: int, store: IdentityStore,
                    credentials: CredentialsFileSource | None) -> int:
    """Spawn the serving processes, serve /metrics for all of them, forward shutdown.

    `store` (loaded by `run`) backs the debug cache routes on the metrics port.
    """
    from .metrics import Exposition, Metrics
    api, sources = await connect_cluster(settings, store, manage_certificates=True,
                                         watch=settings.enable_debugging_handlers)
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for index in range(workers):
        proc = ctx.Process(target=_worker_main, args=(settings, index), name=f"injector-worker-{index}")
        proc.start()
        procs.append(proc)

    metrics = Metrics()
    state = ServerState(settings, store, None, metrics)
    stop = asyncio.Event()
    _install_stop_signals(stop)
    runner = None
    if settings.metrics_port:
        runner = web.AppRunner(metrics_app(state, Exposition(metrics)), access_log=None)
        await _start_site(runner, settings, settings.metrics_port)
    start_background(state, credentials, sources)
    log.info("supervising", workers=workers, port=settings.port, metrics_port=settings.metrics_port)

    exit_code = 0
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
        dead = [p for p in procs if not p.is_alive()]
        if dead and not stop.is_set():
            for proc in dead:
                log.error("worker exited unexpectedly; stopping", worker=proc.name, exitcode=proc.exitcode)
            exit_code = 1
            stop.set()

    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.shutdown_delay + settings.shutdown_timeout + 5
    for proc in procs:
        await asyncio.to_thread(proc.join, max(0.1, deadline - time.monotonic()))
        if proc.is_alive():
            log.error("worker did not stop in time; killing", worker=proc.name)
            proc.kill()
    for task in state.tasks:
        task.cancel()
    if runner is not None:
        await runner.cleanup()
    if api is not None:
        await api.close()
    log.info("shutdown complete")
    return exit_code


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


def run(settings: ServeSettings) -> int:
    """`serve`: validate everything up front, then serve until SIGTERM/SIGINT."""
    configure_logging(settings.log_format, settings.log_level)
    workers = settings.workers or available_cpus()
    if settings.cert_mode == "self-managed":
        cert_dir = settings.cert_dir or tempfile.mkdtemp(prefix="injector-certs-")
        settings = replace(settings, cert_dir=cert_dir, tls_cert=os.path.join(cert_dir, "tls.crt"),
                           tls_key=os.path.join(cert_dir, "tls.key"))
    try:  # fail fast, in the foreground, on bad files or flags
        store, credentials = build_store(settings)
        tls = build_tls(settings)
        if settings.cert_mode == "files":
            tls.load()
    except (InputError, CertificateLoadError, OSError, ValueError) as exc:
        raise SettingsError(str(exc)) from None
    if workers == 1:
        _run_loop(serve_process(settings, with_metrics=True, prepared=(store, credentials, tls)))
        return 0
    settings = replace(settings, workers=workers)
    with tempfile.TemporaryDirectory(prefix="injector-metrics-") as metrics_dir:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
        return _run_loop(supervise(settings, workers, store, credentials))
