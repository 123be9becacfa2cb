"""The process roles of `serve`: one process, or a supervisor and the workers it forks; signals, drain.
It decides nothing about pods and holds no identity rule.

With one worker everything runs in this process. With `--workers N` > 1 (the chart runs two)
there are N serving processes sharing the TLS port (SO_REUSEPORT): the supervisor and N-1 that
it forks. The supervisor alone talks to the API server: it connects, finishes the initial sync
of every source and the self-managed certificate, then forks the others. They inherit its
tables at the fork and from then on receive every change over a socketpair each
(injector/server/table_feed.py); they never call the API server. The supervisor answers admissions like
them, goes on watching, serves /metrics (every process's metrics summed) and alone manages
self-managed certificates, which reach the workers as files they reload. Serving in the
supervisor too saves a whole process: a forked worker costs about 10 MiB of its own, an idle
supervisor as much. Each role lists the jobs it runs beside its server where it starts that
server (`_serve`, `routes.ServerJobs`), so a background task lives exactly as long as the server it
belongs to.

Why the fork is safe (`_fork_workers`): the initial sync runs in an event loop of its own
(`asyncio.run`, not uvloop, whose libuv thread pool would outlive the loop), which is closed,
with its API client, its default executor's threads joined, before anything forks. At fork
time the supervisor is a single thread with no event loop, no open connection to the API
server and no lock held; a worker starts a fresh loop, and the supervisor a fresh loop and
client, resuming each watch from the resourceVersion the sync ended at. `gc.freeze()` before
the fork moves every object then alive (modules, the tables) out of the collector's sight, so
no collection in a worker writes to those pages and they stay shared. A worker closes every
descriptor of the feed but its own end, asks for SIGTERM when the supervisor dies
(PR_SET_PDEATHSIG) and stops when its feed ends; the supervisor stops everything when a worker
exits on its own, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import itertools
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import structlog
from aiohttp import web

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None

from injector.core.settings import ServeSettings, SettingsError
from injector.server.connections import ConnectionLimits, ConnectionStats, GuardedSite
from injector.server.heap import trim_heap, trim_heap_every
from injector.server.logs import configure_logging, flush_logs
from injector.server.metrics import Exposition, Metrics, use_multiprocess_dir
from injector.server.ports import allow_low_ports, check_can_listen, listen_failure, listening_ports
from injector.server.routes import (
    ServerJobs,
    ServerState,
    health_routes,
    metrics_routes,
    refresh_gauges,
    webhook_routes,
)
from injector.server.table_feed import TableFeed, TableFeedClient
from injector.server.wiring import ClusterConnection, ServingInputs, connect_cluster, load_inputs

log = structlog.get_logger(__name__)
PR_SET_PDEATHSIG = 1


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
    if any(port < 1024 for _, port in listening_ports(settings)):
        log.info("port below 1024: NET_BIND_SERVICE", effective=allow_low_ports())
    inputs = load_inputs(settings)  # fail fast, in the foreground, on bad files or flags
    check_can_listen(settings)  # a port that cannot be had: one line now, not one per worker
    # Everything imported and inputs lives as long as the process, and none of it is garbage:
    # out of the collector's sight, a full collection no longer walks ~80k objects (70-90 ms
    # each, here, and one before the fork), and no collection writes to their pages.
    gc.freeze()
    if settings.workers == 1:
        _run_loop(serve_process(inputs))
        return 0
    with tempfile.TemporaryDirectory(prefix="injector-metrics-") as metrics_dir:
        use_multiprocess_dir(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or metrics_dir)
        cluster = asyncio.run(_sync_before_fork(inputs))  # a plain loop, closed before the fork
        if cluster is None:
            return 0
        workers = _fork_workers(inputs, settings.workers - 1)  # the supervisor is the first
        return _run_loop(supervise(inputs, cluster, workers))


# -- one process alone -------------------------------------------------------------------------
async def serve_process(inputs: ServingInputs) -> None:
    """The only process: watches, manages self-managed certificates (finishing that before it
    listens), answers on the TLS port and serves /metrics."""
    settings, tls = inputs.settings, inputs.tls
    cluster = await connect_cluster(settings, inputs.store, watch=True, manage_certificates=True)
    if not tls.loaded:
        tls.load()
    state = ServerState(settings, inputs.store, tls, Metrics())
    stop = _stop_on_signals()
    serving = await _serve(state, [*cluster.jobs(), *_file_watches(inputs)], then=cluster.close,
                           exposition=Exposition(state.metrics))
    await stop.wait()
    await _drain(state, serving)
    log.info("shutdown complete")


@dataclass
class Serving:
    """What `_serve` started: the TLS port, the jobs beside it and the metrics port, if any."""

    runner: web.ServerRunner
    jobs: ServerJobs
    metrics_runner: web.ServerRunner | None = None
    health_runner: web.ServerRunner | None = None

    async def close(self) -> None:
        """Stop accepting and let in-flight requests finish (up to --shutdown-timeout), then stop
        the jobs, which those requests may still have needed, then the metrics and probe ports."""
        await self.runner.cleanup()
        await self.jobs.stop()
        for runner in (self.metrics_runner, self.health_runner):
            if runner is not None:
                await runner.cleanup()


async def _serve(state: ServerState, jobs: list[Any], *, then: Callable[[], Awaitable[Any]] | None = None,
                 exposition: Any = None, reuse_port: bool = False) -> Serving:
    """Start `jobs` (and the TLS reloader, the gauges and the heap trim), listen on the TLS
    port, and on the metrics port when an `exposition` is given and a port is set."""
    settings, tls = state.settings, state.tls
    background = ServerJobs([*jobs, partial(tls.watch, settings.cert_reload_interval),
                             partial(refresh_gauges, state), trim_heap_every], then=then)
    background.start()
    runner = web.ServerRunner(webhook_routes(state).server(access_log=None), shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()
    serving = Serving(runner, background)
    try:
        await _listen(runner, settings, "--port", settings.port, ssl_context=tls.server_context(),
                      reuse_port=reuse_port)
        if settings.health_port:  # the kubelet's own port (docs/reference.md#probes)
            serving.health_runner = web.ServerRunner(health_routes(state).server(access_log=None))
            await serving.health_runner.setup()
            await _listen(serving.health_runner, settings, "--health-port", settings.health_port,
                          reuse_port=reuse_port)
        if exposition is not None and settings.metrics_port:
            serving.metrics_runner = web.ServerRunner(metrics_routes(state, exposition).server(access_log=None))
            await serving.metrics_runner.setup()
            await _listen(serving.metrics_runner, settings, "--metrics-port", settings.metrics_port)
    except SettingsError:
        await serving.close()  # the jobs too: the process ends with one line (cli/main.py), nothing else
        raise
    log.info("serving", port=settings.port, metrics_port=settings.metrics_port if serving.metrics_runner else None,
             health_port=settings.health_port or None, pid=os.getpid())
    return serving


def _file_watches(inputs: ServingInputs) -> list[Any]:
    return [inputs.credentials.watch] if inputs.credentials is not None else []


async def _wait_until(done: Callable[[], bool], waiting_for: Callable[[], Any], message: str,
                      interval: float) -> None:
    """Poll `done` every `interval` seconds; every ~10 s, log `message` with what is awaited."""
    every = max(1, round(10 / interval))
    for tick in itertools.count(1):
        if done():
            return
        if tick % every == 0:
            log.info(message, waiting_for=waiting_for())
        await asyncio.sleep(interval)


async def _drain(state: ServerState, serving: Serving,
                 before_closing: Callable[[], Awaitable[Any]] | None = None) -> None:
    """Report not-ready, keep serving for --shutdown-delay, then finish in-flight requests
    (docs/reference.md#shutdown); the jobs stop after the last request. The supervisor passes
    `before_closing`: its workers' ending, which needs its feed and watch until then."""
    state.draining = True
    if state.settings.shutdown_delay > 0:
        log.info("draining: not ready, still serving", seconds=state.settings.shutdown_delay)
        await asyncio.sleep(state.settings.shutdown_delay)
    if before_closing is not None:
        await before_closing()
    await serving.close()


# -- the supervisor, before the fork -----------------------------------------------------------
async def _sync_before_fork(inputs: ServingInputs) -> ClusterConnection | None:
    """Connect, settle the self-managed certificate, run every identity source until its first
    sync is in the store, then stop them and close the client (the loop closes after this).
    None when SIGTERM/SIGINT came first: nothing listens yet, so there is nothing to drain."""
    stop = _stop_on_signals()
    settings, store = inputs.settings, inputs.store
    connecting = asyncio.create_task(connect_cluster(settings, store, watch=True, manage_certificates=True))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([connecting, stopping], return_when=asyncio.FIRST_COMPLETED)
    if not connecting.done():
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        log.info("stopped before serving")
        return None
    stopping.cancel()
    cluster = connecting.result()
    tasks = [asyncio.create_task(job()) for job in cluster.sync_jobs()]
    try:
        await _wait_until(lambda: not store.waiting_for or stop.is_set(), lambda: list(store.waiting_for),
                          "not serving yet", 0.02)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await cluster.close()
    if stop.is_set():
        log.info("stopped before serving")
        return None
    if not inputs.tls.loaded:
        inputs.tls.load()  # the workers inherit the pair loaded once
    return cluster


@dataclass
class Worker:
    index: int
    pid: int
    feed: socket.socket  # the supervisor's end
    exitcode: int | None = None

    def poll(self) -> int | None:
        """The exit code once the process has ended (reaped here), else None."""
        if self.exitcode is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid == 0:
                    return None
                self.exitcode = os.waitstatus_to_exitcode(status)
            if self.exitcode is None:
                self.exitcode = -1  # reaped elsewhere: it is gone all the same
        return self.exitcode


def _fork_workers(inputs: ServingInputs, count: int) -> list[Worker]:
    """Fork the serving processes from a single-threaded supervisor with no event loop (see the
    module's docstring); each child runs `worker_process` and never returns here."""
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else threading.active_count()
    if threads != 1:
        log.warning("forking with other threads alive; their locks may be held in the workers", threads=threads)
    pairs = [socket.socketpair() for _ in range(count)]
    supervisor = os.getpid()
    gc.collect()
    trim_heap()  # the sync's free pages back to the system first, not copied into every worker
    gc.freeze()
    workers = []
    for index, (ours, theirs) in enumerate(pairs, start=1):  # the supervisor serves as worker 0
        flush_logs()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - measured through the processes in tests/test_server.py
            code = 1
            try:
                for other_ours, other_theirs in pairs:
                    other_ours.close()
                    if other_theirs is not theirs:
                        other_theirs.close()
                _die_with(supervisor)
                code = _run_loop(worker_process(inputs, index, theirs))
            except SettingsError as exc:  # its port, taken since the supervisor's check
                log.error("worker cannot serve", worker=index, error=str(exc))
                code = 2
            except BaseException:
                log.exception("worker failed", worker=index)
            finally:
                flush_logs()
                os._exit(code)
        theirs.close()
        workers.append(Worker(index, pid, ours))
    return workers


def _die_with(parent: int) -> None:
    """SIGTERM when the supervisor dies (and at once if it already has)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


# -- a forked worker ---------------------------------------------------------------------------
async def worker_process(inputs: ServingInputs, index: int, feed_socket: socket.socket) -> int:
    """One of several processes answering on the TLS port, from tables the supervisor keeps
    current (injector/server/table_feed.py); 1 when the supervisor went away, else 0."""
    structlog.contextvars.bind_contextvars(worker=index)
    settings, tls, store = inputs.settings, inputs.tls, inputs.store
    store.problem_listeners, store.update_listeners = [], []  # the supervisor reports; it inherited these
    stop = _stop_on_signals()
    lost = []

    def supervisor_gone() -> None:
        if not stop.is_set():
            log.error("the supervisor is gone; stopping")
            lost.append(True)
            stop.set()

    feed = TableFeedClient(store, feed_socket, on_lost=supervisor_gone)
    await feed.open()
    if store.fetch_missing is not None:
        store.fetch_missing = feed.fetch  # the supervisor fetches, for every worker
    if not tls.loaded:
        tls.load()
    state = ServerState(settings, store, tls, Metrics())
    # A probe reaches one process of several: each must be ready before it listens.
    await _wait_until(lambda: state.ready, state.not_ready_because, "not listening yet", 0.1)
    serving = await _serve(state, [feed.run], reuse_port=True)

    await stop.wait()
    await _drain(state, serving)
    log.info("shutdown complete")
    return 1 if lost else 0


# -- the supervisor, after the fork ------------------------------------------------------------
async def supervise(inputs: ServingInputs, cluster: ClusterConnection, workers: list[Worker]) -> int:
    """Serve as worker 0, and for every worker keep watching, stream them every change, serve
    /metrics for all of them and forward shutdown."""
    structlog.contextvars.bind_contextvars(worker=0)
    settings, tls = inputs.settings, inputs.tls
    stop = _stop_on_signals()
    await cluster.reconnect(settings)
    feed = TableFeed(inputs.store, [worker.feed for worker in workers])
    await feed.open()  # before any source runs: no change is missed
    state = ServerState(settings, inputs.store, tls, Metrics())
    serving = await _serve(state, [feed.run, *cluster.jobs(), *_file_watches(inputs)], then=cluster.close,
                           exposition=Exposition(state.metrics), reuse_port=True)
    log.info("supervising", workers=len(workers), pids=[worker.pid for worker in workers], port=settings.port,
             metrics_port=settings.metrics_port)

    exit_code = await _until_stopped_or_a_worker_dies(stop, workers)
    for worker in workers:
        if worker.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
    await _drain(state, serving, before_closing=partial(_reap, workers, settings))
    log.info("shutdown complete")
    return exit_code


async def _reap(workers: list[Worker], settings: ServeSettings) -> None:
    """Wait for the workers to finish their drain (sent SIGTERM with ours); kill what is left."""
    deadline = time.monotonic() + settings.shutdown_timeout + 5
    while any(worker.poll() is None for worker in workers) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for worker in workers:
        if worker.poll() is None:
            log.error("worker did not stop in time; killing", worker=worker.index, pid=worker.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(worker.pid, 0)


async def _until_stopped_or_a_worker_dies(stop: asyncio.Event, workers: list[Worker]) -> int:
    """0 on a stop signal; 1 when a worker exits on its own (the whole pod should restart)."""
    exit_code = 0
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
        dead = [worker for worker in workers if worker.poll() is not None]
        if dead and not stop.is_set():
            for worker in dead:
                log.error("worker exited unexpectedly; stopping", worker=worker.index, pid=worker.pid,
                          exitcode=worker.exitcode)
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
            flush_logs()
            os._exit(1)
        log.info("shutdown requested", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop


async def _listen(runner: web.BaseRunner, settings: ServeSettings, flag: str, port: int,
                  **kwargs: Any) -> web.TCPSite:
    """Listen on `port` with the slow-client limits (docs/reference.md#connections); a port that
    cannot be had is a `SettingsError` naming `flag`."""
    site = GuardedSite(runner, settings.bind_address or None, port, limits=connection_limits(settings),
                       stats=ConnectionStats(), backlog=1024, **kwargs)
    try:
        await site.start()
    except OSError as exc:
        raise SettingsError(listen_failure(flag, port, settings.bind_address, exc)) from None
    return site


def connection_limits(settings: ServeSettings) -> ConnectionLimits:
    return ConnectionLimits(settings.read_header_timeout, settings.idle_timeout, settings.max_connections,
                            settings.max_header_bytes, settings.tls_handshake_timeout)


def _run_loop(coro: Any) -> Any:
    return uvloop.run(coro) if uvloop is not None else asyncio.run(coro)
