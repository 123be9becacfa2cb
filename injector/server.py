"""The process roles of `serve`: one process, or a supervisor and its workers; signals, drain.

With `--workers N` > 1 a supervisor spawns N serving processes that share the TLS port
(SO_REUSEPORT) and serves /metrics itself, summing the workers' metrics; it alone manages
self-managed certificates. With one worker, everything runs in this process. Each role
lists the jobs it runs beside its app where it builds that app (`app.run_beside`), so a
background task lives exactly as long as the app it belongs to.
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
from dataclasses import replace
from functools import partial
from typing import Any

import structlog
from aiohttp import web

from .app import ServerState, metrics_app, refresh_gauges, run_beside, webhook_app
from .connections import ConnectionLimits, ConnectionStats, GuardedSite
from .logging import configure_logging
from .settings import ServeSettings
from .startup import Prepared, connect_cluster, prepare

log = structlog.get_logger(__name__)


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


def run(settings: ServeSettings) -> int:
    """`serve`: validate everything up front, then serve until SIGTERM/SIGINT."""
    configure_logging(settings.log_format, settings.log_level)
    settings = replace(settings, workers=settings.workers or available_cpus())
    prepared = prepare(settings)  # fail fast, in the foreground, on bad files or flags
    if settings.workers == 1:
        _run_loop(serve_process(prepared))
        return 0
    with tempfile.TemporaryDirectory(prefix="injector-metrics-") as metrics_dir:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
        return _run_loop(supervise(prepared))


# -- serving processes -----------------------------------------------------------------------
async def serve_process(prepared: Prepared, worker: int | None = None) -> None:
    """One process answering on the TLS port: alone (`worker` None) or as one of several.

    Alone, it also manages self-managed certificates, finishing that before it listens, and
    serves /metrics. A worker sharing the port starts listening only once its sources are
    loaded: a readiness probe reaches just one of them, so each must be ready before it
    takes requests.
    """
    from .metrics import Exposition, Metrics

    settings, tls = prepared.settings, prepared.tls
    alone = worker is None
    if not alone:
        structlog.contextvars.bind_contextvars(worker=worker)
    cluster = await connect_cluster(settings, prepared.store, watch=True, manage_certificates=alone)
    if not tls.loaded:
        tls.load()
    metrics = Metrics()
    state = ServerState(settings, prepared.store, tls, metrics)
    app = webhook_app(state)
    run_beside(app, [*cluster.jobs(), *_file_watches(prepared), partial(tls.watch, settings.cert_reload_interval),
                     partial(refresh_gauges, state)], then=cluster.close)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()  # starts the jobs
    if not alone:
        await _wait_until_ready(state)

    stop = _stop_on_signals()
    await _listen(runner, settings, settings.port, ssl_context=tls.server_context(), reuse_port=not alone)
    metrics_runner = None
    if alone and settings.metrics_port:
        metrics_runner = web.AppRunner(metrics_app(state, Exposition(metrics)), access_log=None)
        await metrics_runner.setup()
        await _listen(metrics_runner, settings, settings.metrics_port)
    log.info("serving", port=settings.port, metrics_port=settings.metrics_port if alone else None, pid=os.getpid())

    await stop.wait()
    await _drain(state, runner)
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    log.info("shutdown complete")


def _file_watches(prepared: Prepared) -> list[Any]:
    return [prepared.credentials.watch] if prepared.credentials is not None else []


async def _wait_until_ready(state: ServerState) -> None:
    for tick in itertools.count(1):
        if state.ready:
            return
        if tick % 100 == 0:  # every ~10 s
            log.info("not listening yet", waiting_for=state.not_ready_because())
        await asyncio.sleep(0.1)


async def _drain(state: ServerState, runner: web.AppRunner) -> None:
    """Report not-ready, keep serving for --shutdown-delay, then finish in-flight requests
    (docs/reference.md#shutdown); the app's jobs stop after the last request."""
    state.draining = True
    if state.settings.shutdown_delay > 0:
        log.info("draining: not ready, still serving", seconds=state.settings.shutdown_delay)
        await asyncio.sleep(state.settings.shutdown_delay)
    await runner.cleanup()  # stops accepting, waits up to shutdown_timeout for handlers


def _worker_main(settings: ServeSettings, index: int) -> None:
    """Entry point of a spawned serving process."""
    configure_logging(settings.log_format, settings.log_level)
    _run_loop(serve_process(prepare(settings), worker=index))


# -- the supervisor --------------------------------------------------------------------------
async def supervise(prepared: Prepared) -> int:
    """Spawn the serving processes, serve /metrics for all of them, forward shutdown.

    The store `run` loaded backs the debug cache routes on the metrics port; only for those
    does the supervisor watch the cluster's identities too.
    """
    from .metrics import Exposition, Metrics

    settings = prepared.settings
    cluster = await connect_cluster(settings, prepared.store, watch=settings.enable_debugging_handlers,
                                    manage_certificates=True)
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for index in range(settings.workers):
        proc = ctx.Process(target=_worker_main, args=(settings, index), name=f"injector-worker-{index}")
        proc.start()
        procs.append(proc)

    metrics = Metrics()
    state = ServerState(settings, prepared.store, None, metrics)
    stop = _stop_on_signals()
    app = metrics_app(state, Exposition(metrics))
    run_beside(app, [*cluster.jobs(), *_file_watches(prepared), partial(refresh_gauges, state)], then=cluster.close)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()  # starts the jobs, with or without a metrics port
    if settings.metrics_port:
        await _listen(runner, settings, settings.metrics_port)
    log.info("supervising", workers=settings.workers, port=settings.port, metrics_port=settings.metrics_port)

    exit_code = await _until_stopped_or_a_worker_dies(stop, procs)
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.shutdown_delay + settings.shutdown_timeout + 5
    for proc in procs:
        await asyncio.to_thread(proc.join, max(0.1, deadline - time.monotonic()))
        if proc.is_alive():
            log.error("worker did not stop in time; killing", worker=proc.name)
            proc.kill()
    await runner.cleanup()
    log.info("shutdown complete")
    return exit_code


async def _until_stopped_or_a_worker_dies(stop: asyncio.Event, procs: list[Any]) -> int:
    """0 on a stop signal; 1 when a worker exits on its own (the whole pod should restart)."""
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
    return exit_code


# -- shared by the roles ---------------------------------------------------------------------
def _stop_on_signals() -> asyncio.Event:
    """An event set by the first SIGTERM/SIGINT; a second one exits at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal; exiting immediately", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("shutdown requested", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop


async def _listen(runner: web.AppRunner, settings: ServeSettings, port: int, **kwargs: Any) -> web.TCPSite:
    """Listen on `port` with the slow-client limits (docs/reference.md#connections)."""
    site = GuardedSite(runner, settings.bind_address or None, port, limits=connection_limits(settings),
                       stats=ConnectionStats(), backlog=1024, **kwargs)
    await site.start()
    return site


def connection_limits(settings: ServeSettings) -> ConnectionLimits:
    return ConnectionLimits(settings.read_header_timeout, settings.idle_timeout, settings.max_connections,
                            settings.max_header_bytes)


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)
