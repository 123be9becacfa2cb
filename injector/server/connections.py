"""Connections on the webhook port: how long a client may take and how many it may hold
(docs/reference.md#connections). It reads no request body and decides no admission; routes do.

Any pod on the network can reach the port, so a client that opens connections and then
stalls must not be able to keep them. aiohttp alone closes a connection only when it has
been idle for its keep-alive timeout, and has no limit on how many there are. Here:

* the TLS handshake must finish within `--tls-handshake-timeout` (asyncio's handshake timeout);
* a request's headers must be complete within `--read-header-timeout` of the connection's
  opening (first request) or of the request's first byte (later ones), and must not exceed
  `--max-header-bytes` in all (HTTP 431);
* the body must arrive within `--read-body-timeout` (the handler's side, `routes.handle_mutate`);
* a connection with no request in progress is closed after `--idle-timeout`;
* at most `--max-connections` are open at once (handshakes included). A connection beyond
  that is let in by evicting another: the oldest that has not completed a request yet (a
  stalled handshake or headers), else the longest idle keep-alive one, else the oldest whose
  request body is still arriving. A connection whose request we are answering is never
  evicted; only when every one is such is the new connection closed. So a stranger's stalled
  connections cannot lock the API server out: its new connection evicts one of them, and the
  keep-alive connections it is using are never the oldest unproven ones.

A limit of 0 means none (the header-size cap always applies).

A legitimate API server sends a whole request within milliseconds of connecting and waits at
most 30 s for the answer, so the defaults never close one. Closing is logged at warning as a
summary at most every 10 s, so a flood of stalled clients cannot flood the log as well.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = structlog.get_logger(__name__)

SUMMARY_INTERVAL = 10.0
NEVER = 10.0**9  # what a limit of 0 means
# After an answer given before the whole body was read (413, 408), how long the rest is still read
# so the client sees the answer rather than a reset; aiohttp's default (10 s) would let a slow
# client keep the connection for that long past its body timeout.
LINGER = 1.0
_UNPROVEN, _IDLE, _SENDING_BODY, _NOT_EVICTABLE = range(4)
_EVICTED = {_UNPROVEN: "evicted_before_a_request", _IDLE: "evicted_idle", _SENDING_BODY: "evicted_slow_body"}
_HEADERS_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\n"
                      b"Connection: close\r\nContent-Length: 34\r\n\r\nrequest headers too large (limit)\r\n")


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    read_header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 1000
    max_header_bytes: int = 16384
    tls_handshake_timeout: float = 3.0


@dataclass
class ConnectionStats:
    """Open connections now, and why connections were closed; logged as a summary."""

    open: int = 0
    peak: int = 0
    closed: Counter[str] = field(default_factory=Counter)
    _unlogged: Counter[str] = field(default_factory=Counter)
    _logged_at: float = 0.0

    def closing(self, reason: str) -> None:
        self.closed[reason] += 1
        self._unlogged[reason] += 1
        now = time.monotonic()
        if now - self._logged_at >= SUMMARY_INTERVAL:
            log.warning("connections closed", **dict(self._unlogged), open=self.open,
                        note="counts since the previous line")
            self._unlogged.clear()
            self._logged_at = now


class GuardedHandler(RequestHandler):
    """aiohttp's request handler with a deadline for each request's headers and a size cap on
    them. It relies on three attributes of `RequestHandler`: `_request_count` (incremented as
    each request's headers are parsed), `_messages` (parsed requests not yet handled) and
    `_current_request` (set while one is handled); tests/test_connections.py fails if a new
    aiohttp changes them."""

    def __init__(self, manager: web.Server, *, limits: ConnectionLimits, stats: ConnectionStats,
                 **kwargs: Any) -> None:
        super().__init__(manager, keepalive_timeout=limits.idle_timeout or NEVER, lingering_time=LINGER,
                         max_line_size=limits.max_header_bytes, max_field_size=limits.max_header_bytes, **kwargs)
        self._limits = limits
        self._stats = stats
        self._armed_at: float | None = None  # loop time the running header deadline counts from
        self._timer: asyncio.TimerHandle | None = None  # at most one, re-armed only when it fires
        self._header_bytes = 0
        self._counted = False
        self._last_payload: Any = None
        self._open: dict[GuardedHandler, asyncio.Task | None] = {}  # the listener's, in accept order

    # -- lifetime ---------------------------------------------------------------------------
    def count_in(self, open_connections: dict[GuardedHandler, asyncio.Task | None]) -> bool:
        """Called at accept time (before any TLS handshake). At the cap another connection is
        evicted to make room (`eviction_class`); False when none may be: refuse this one."""
        stats = self._stats
        if 0 < self._limits.max_connections <= stats.open:
            victim = min(open_connections, key=lambda h: h.eviction_class(), default=None)
            if victim is None or victim.eviction_class() >= _NOT_EVICTABLE:
                stats.closing("over_max_connections")
                return False
            victim.evict(open_connections[victim])
        stats.open += 1
        stats.peak = max(stats.peak, stats.open)
        self._counted = True
        self._open = open_connections
        open_connections[self] = None
        return True

    def count_out(self) -> None:
        if self._counted:
            self._counted = False
            self._stats.open -= 1
            self._open.pop(self, None)

    def eviction_class(self) -> int:
        """Which connections go first at the cap: 0 has not completed a request (handshake or
        headers pending), 1 is idle between requests, 2 is still sending a body, and
        `_NOT_EVICTABLE` has a request we are answering. Ties go to the oldest (dict order)."""
        if self.transport is None or (self._request_count == 0 and self._current_request is None):
            return _UNPROVEN
        if self._between_requests():
            return _IDLE
        last = self._last_payload
        if last is not None and not last.is_eof():
            return _SENDING_BODY
        return _NOT_EVICTABLE

    def evict(self, handshake: asyncio.Task | None) -> None:
        """Close this connection now to let a newer one in (counted by why)."""
        self._stats.closing(_EVICTED[self.eviction_class()])
        self._open.pop(self, None)
        if self.transport is None:  # still in its TLS handshake: end that
            if handshake is not None:
                handshake.cancel()
            return
        self.force_close()
        self.transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.count_out()
        super().connection_lost(exc)

    # -- the header deadline ----------------------------------------------------------------
    def _between_requests(self) -> bool:
        """No request handled or queued, and the last one's body fully received (after an early
        answer such as 413 the rest of a body may still be arriving: that is not a new request)."""
        last = self._last_payload
        return self._current_request is None and not self._messages and (last is None or last.is_eof())

    def _arm(self) -> None:
        """Start the header deadline. A keep-alive connection arms and disarms it for every
        request, so that costs a timestamp: the one timer, when it fires, finds the deadline
        gone or moved and ends or waits again."""
        self._header_bytes = 0
        timeout = self._limits.read_header_timeout
        if timeout > 0:
            self._armed_at = self._loop.time()
            if self._timer is None:
                self._timer = self._loop.call_at(self._armed_at + timeout, self._deadline_reached)

    def _disarm(self) -> None:
        self._armed_at = None

    def _deadline_reached(self) -> None:
        self._timer = None
        if self._armed_at is None:
            return
        due = self._armed_at + self._limits.read_header_timeout
        if self._loop.time() < due:  # re-armed since this timer was set
            self._timer = self._loop.call_at(due, self._deadline_reached)
            return
        self._armed_at = None
        self._headers_late()

    def data_received(self, data: bytes) -> None:
        if self._armed_at is None and self._between_requests():
            self._arm()  # the first byte of a later request
        before = self._request_count
        if self._armed_at is not None:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._request_count != before:
            self._last_payload = self._messages[-1][1] if self._messages else None
            self._disarm()  # headers complete; the body has its own timeout
        elif self._armed_at is not None and self._header_bytes > self._limits.max_header_bytes:
            self._disarm()
            self._stats.closing("headers_too_large")
            if self.transport is not None:
                self.transport.write(_HEADERS_TOO_LARGE)
                self.transport.close()
            self.force_close()

    def _headers_late(self) -> None:
        if not self._between_requests():
            return  # a request is being handled: its own deadlines apply
        self._stats.closing("header_timeout")
        self.force_close()
        if self.transport is not None:
            self.transport.abort()  # a stalled client may not read a TLS close_notify either


class _Listener:
    """The accept loop of a `GuardedSite` (what aiohttp's site calls its server): sockets are
    accepted here, counted against the cap (over it: closed at once, before any TLS), then
    handed to asyncio with the TLS handshake timeout. Nothing reads from a socket before its
    TLS layer exists, and a handshake that fails or never finishes is counted until it ends."""

    def __init__(self, sock: socket.socket, factory: Any, ssl_context: ssl.SSLContext | None,
                 limits: ConnectionLimits, stats: ConnectionStats) -> None:
        self.sockets = [sock]
        self._factory = factory
        self._ssl = ssl_context
        self._limits = limits
        self._stats = stats
        self._tasks: set[asyncio.Task] = set()
        self._open: dict[GuardedHandler, asyncio.Task | None] = {}  # accept order: the oldest first
        self._loop = asyncio.get_running_loop()
        self._accepting = self._loop.create_task(self._accept_forever(sock))

    async def _accept_forever(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = await self._loop.sock_accept(listener)
            except asyncio.CancelledError:
                raise
            except OSError as exc:  # EMFILE and the like: wait a little instead of spinning
                self._stats.closing(f"accept_failed_{exc.errno}")
                await asyncio.sleep(0.05)
                continue
            handler: GuardedHandler = self._factory()
            if not handler.count_in(self._open):
                conn.close()
                continue
            task = self._loop.create_task(self._connect(conn, handler))
            self._open[handler] = task  # until the handshake is done: how to end it early
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket, handler: GuardedHandler) -> None:
        timeout = (self._limits.tls_handshake_timeout or NEVER) if self._ssl is not None else None
        try:
            await self._loop.connect_accepted_socket(lambda: handler, conn, ssl=self._ssl,
                                                     ssl_handshake_timeout=timeout)
        except asyncio.CancelledError:
            evicted = handler not in self._open  # `evict` took it out to let a newer one in
            conn.close()
            handler.count_out()
            if evicted:
                return
            raise
        except Exception as exc:  # timeout, reset, not TLS at all: for the client it is all the same
            conn.close()
            handler.count_out()
            self._stats.closing("tls_handshake_timeout" if isinstance(exc, TimeoutError | ConnectionAbortedError)
                                else "tls_handshake_failed")
        else:
            if handler in self._open:
                self._open[handler] = None  # handshake done

    def close(self) -> None:
        self._accepting.cancel()
        for task in list(self._tasks):
            task.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(self._accepting, *self._tasks, return_exceptions=True)


class GuardedSite(web.TCPSite):
    """A TCP(+TLS) site whose connections are `GuardedHandler`s accepted by a `_Listener`."""

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, *, limits: ConnectionLimits,
                 stats: ConnectionStats, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.limits = limits
        self.stats = stats

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        # What the runner was given for its handlers (access_log=None), minus what we set.
        handler_kwargs = {k: v for k, v in getattr(server, "_kwargs", {}).items()
                          if k not in ("keepalive_timeout", "max_line_size", "max_field_size", "lingering_time")}

        def factory() -> GuardedHandler:
            return GuardedHandler(server, loop=loop, limits=self.limits, stats=self.stats, **handler_kwargs)

        sock = _listening_socket(self._host, self._port, self._backlog, bool(self._reuse_port))
        self._server = _Listener(sock, factory, self._ssl_context, self.limits, self.stats)  # type: ignore[assignment]
        self._bound_port = sock.getsockname()[1]


def bound_socket(host: str | None, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to `port` on `host` (all interfaces, IPv6 with IPv4 mapped where
    possible, when None); start-up's port check (ports.py) binds exactly as the listeners do."""
    family = socket.AF_INET6 if (host is None and socket.has_ipv6) or (host and ":" in host) else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        if host is not None:
            raise
        family, sock = socket.AF_INET, socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # IPv6 disabled
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and host is None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
    except OSError:
        sock.close()
        raise
    return sock


def _listening_socket(host: str | None, port: int, backlog: int, reuse_port: bool) -> socket.socket:
    sock = bound_socket(host, port, reuse_port=reuse_port)
    try:
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
