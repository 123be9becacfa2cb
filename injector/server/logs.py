"""structlog set-up: JSON lines in production, readable lines on a terminal.
Formatting and level only; what to log is the caller's.

JSON lines go through one processor of our own (level, timestamp, exception, orjson) and a
writer that gathers the lines of one event-loop turn into one write(2): a log line per
admission is part of the serving path, and at thousands of admissions a second a system call
per line was about a twentieth of each request's CPU. Lines are written before the turn ends,
at once outside an event loop, and by `flush_logs()` before a fork or `os._exit`.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
import time
from typing import Any, BinaryIO

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_LEVEL_NAMES = {"warn": "warning", "exception": "error"}  # as structlog's add_log_level names them


class LineWriter:
    """A structlog logger for rendered lines (bytes): in an event loop they are written together
    when the loop turns; outside one, at once."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self._pending: list[bytes] = []
        self._lock = threading.Lock()
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on

    def msg(self, line: bytes) -> None:
        """Take one rendered line, its newline included."""
        with self._lock:
            self._pending.append(line)
            flush_on = self._flush_on
            if flush_on is not None and flush_on.is_running():
                return  # a flush is already due on a running loop (asking for the loop is a getpid(2))
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is None:
                self._write_pending()
            elif self._flush_on is not loop:  # none yet, or on a loop that ended before its turn
                self._flush_on = loop
                loop.call_soon(self.flush)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = failure = msg

    def flush(self) -> None:
        with self._lock:
            self._write_pending()

    def _write_pending(self) -> None:
        self._flush_on = None
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            try:
                self.stream.write(data)
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: nowhere left to say it
                pass


_writer: LineWriter | None = None
# Set by configure_logging for JSON lines: (the method names written at its level, the JSON processors).
_hot: tuple[frozenset[str], Any, Any] | None = None


def flush_logs() -> None:
    """Write every pending line now (before a fork or `os._exit`)."""
    if _writer is not None:
        _writer.flush()
    sys.stderr.flush()


atexit.register(flush_logs)


_DIGITS = tuple(f"{n:03d}" for n in range(1000))  # a format spec per line costs more than the lookups


class _Clock:
    """UTC ISO-8601 timestamps with microseconds; the date and time part is formatted once a second."""

    def __init__(self) -> None:
        self._second, self._prefix = -1, ""

    def now(self) -> str:
        micros = time.time_ns() // 1000
        second, fraction = divmod(micros, 1_000_000)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        return self._prefix + _DIGITS[fraction // 1000] + _DIGITS[fraction % 1000] + "Z"


def _json_line(clock: _Clock) -> Any:
    """The JSON renderer with level, timestamp and exception added, in one processor."""

    def render(logger: Any, method_name: str, event_dict: dict[str, Any]) -> bytes:
        event_dict["level"] = _LEVEL_NAMES.get(method_name, method_name)
        event_dict["timestamp"] = clock.now()
        if "exc_info" in event_dict:
            event_dict = structlog.processors.format_exc_info(logger, method_name, event_dict)
        return orjson.dumps(event_dict, default=str, option=orjson.OPT_APPEND_NEWLINE)

    return render


def hot_line(method: str, event: str, fields: dict[str, Any]) -> None:
    """`log.<method>(event, **fields)` for a line logged per request: with JSON lines, the same
    processors and writer without structlog's wrapper around them (its lazy proxy, level
    wrapper and context copies were half the cost of the admission line); otherwise structlog.
    `fields` is the caller's to give away: the event is added to it."""
    hot, writer = _hot, _writer
    if hot is None or writer is None:
        getattr(structlog.get_logger(), method)(event, **fields)
        return
    written, merge, render = hot
    if method in written:
        fields["event"] = event
        writer.msg(render(writer, method, merge(writer, method, fields)))


class StdlibBridge(logging.Handler):
    """The standard library's log records (aiohttp's, asyncio's) as our lines: one structured
    line each, its exception as one `error` field and never a traceback, so a client that
    resets or speaks garbage cannot put plain text into the JSON log."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                fields["error"] = f"{type(exc).__name__}: {exc}"
            structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **fields)
        except Exception:  # a broken record must not take the process down
            self.handleError(record)


def _bridge_stdlib(level: str) -> None:
    root = logging.getLogger()
    root.handlers = [StdlibBridge()]
    root.setLevel(_LEVELS.get(level, logging.INFO))


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """`auto` picks the console renderer when stderr is a terminal, JSON otherwise."""
    global _writer, _hot
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    if as_json:
        if _writer is None or _writer.stream is not sys.stderr.buffer:  # stderr replaced (tests)
            flush_logs()
            _writer = LineWriter(sys.stderr.buffer)
        writer = _writer
        processors = [structlog.contextvars.merge_contextvars, _json_line(_Clock())]
        lowest = _LEVELS.get(level, logging.INFO)
        written = frozenset(method for method in (*_LEVELS, *_LEVEL_NAMES)
                            if _LEVELS[_LEVEL_NAMES.get(method, method)] >= lowest)
        _hot = (written, *processors)

        def factory(*_: Any) -> LineWriter:
            return writer
    else:
        _hot = None
        processors = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                      structlog.processors.TimeStamper(fmt="iso", utc=True),
                      structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
        factory = structlog.PrintLoggerFactory(sys.stderr)
    _bridge_stdlib(level)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
