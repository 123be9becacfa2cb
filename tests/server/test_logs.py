"""injector/server/logs.py: the JSON line format, and when lines reach stderr."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from datetime import datetime

import orjson
import pytest
import structlog

from injector.server import logs as injector_logging
from injector.server.logs import LineWriter, configure_logging, flush_logs, hot_line


class CountingStream(io.BytesIO):
    """A binary stream that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes += 1
        return super().write(data)

    def lines(self) -> list[dict]:
        return [orjson.loads(line) for line in self.getvalue().splitlines()]


class Stderr:
    """What the module uses of sys.stderr: its binary buffer, isatty, flush."""

    def __init__(self, buffer: CountingStream) -> None:
        self.buffer = buffer

    def isatty(self) -> bool:
        return False

    def flush(self) -> None:
        pass


def json_logging(monkeypatch, level: str) -> CountingStream:
    """JSON logging at `level` into a counting stream; monkeypatch puts the module back."""
    out = CountingStream()
    monkeypatch.setattr(injector_logging, "_writer", None)
    monkeypatch.setattr(injector_logging, "_hot", None)
    monkeypatch.setattr(injector_logging.sys, "stderr", Stderr(out))
    root = logging.getLogger()  # configure_logging bridges the standard library's records: put it back
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    configure_logging("json", level)
    return out


@pytest.fixture
def stream(monkeypatch) -> CountingStream:
    """JSON logging at info into a counting stream, put back as it was afterwards."""
    yield json_logging(monkeypatch, "info")
    structlog.reset_defaults()


def test_a_json_line_has_the_fields_then_event_level_and_a_utc_timestamp(stream):
    structlog.get_logger().info("admission", namespace="ns", pod="p", service_account="sa", decision="mutated")
    (line,) = stream.lines()
    assert list(line) == ["namespace", "pod", "service_account", "decision", "event", "level", "timestamp"]
    assert line["event"] == "admission" and line["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"])
    when = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert abs(when.timestamp() - datetime.now().timestamp()) < 5


def test_levels_are_named_as_structlog_names_them_and_below_the_level_nothing_is_written(stream):
    log = structlog.get_logger()
    log.debug("hidden")
    log.warning("w")
    log.warn("w2")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = stream.lines()
    assert [(line["event"], line["level"]) for line in lines] == [("w", "warning"), ("w2", "warning"),
                                                                  ("failed", "error")]
    assert "ValueError: boom" in lines[-1]["exception"] and "exc_info" not in lines[-1]


def test_values_json_cannot_encode_are_written_as_text(stream):
    structlog.get_logger().info("odd", value={1, 2}.__class__, path=object.__new__(object).__class__)
    (line,) = stream.lines()
    assert line["value"] == "<class 'set'>"


def test_outside_an_event_loop_each_line_is_written_at_once(stream):
    log = structlog.get_logger()
    log.info("one")
    assert stream.lines()[-1]["event"] == "one"
    log.info("two")
    assert [line["event"] for line in stream.lines()] == ["one", "two"]


def test_in_an_event_loop_the_lines_of_one_turn_are_one_write_before_the_next_turn(stream):
    log = structlog.get_logger()

    async def burst() -> tuple[int, int]:
        before = stream.writes
        for n in range(50):
            log.info("admission", n=n)
        written_during_the_turn = stream.writes - before
        await asyncio.sleep(0)  # the loop turns: the writer's callback runs
        return written_during_the_turn, stream.writes - before

    during, after = asyncio.run(burst())
    assert (during, after) == (0, 1)
    assert [line["n"] for line in stream.lines()] == list(range(50))


def test_flush_logs_writes_what_is_pending_at_once(stream):
    log = structlog.get_logger()

    async def pending_then_flushed() -> list[dict]:
        log.info("before exit")
        flush_logs()  # as before os._exit or a fork, when the loop will not turn again
        return stream.lines()

    assert [line["event"] for line in asyncio.run(pending_then_flushed())] == ["before exit"]


def test_a_closed_stream_loses_the_line_without_raising():
    out = CountingStream()
    writer = LineWriter(out)
    out.close()
    writer.msg(b'{"event":"lost"}')  # nowhere to write it; the caller goes on


def test_console_format_is_readable_text(monkeypatch, capsys):
    monkeypatch.setattr(injector_logging, "_hot", None)
    configure_logging("console", "info")
    try:
        structlog.get_logger().info("admission", namespace="ns")
    finally:
        structlog.reset_defaults()
    err = capsys.readouterr().err
    assert "admission" in err and "namespace" in err and "ns" in err and not err.lstrip().startswith("{")


def test_the_hot_line_is_the_line_structlog_writes_with_the_bound_context(stream):
    structlog.contextvars.bind_contextvars(worker=1)
    try:
        structlog.get_logger().info("admission", namespace="ns", decision="mutated")
        hot_line("info", "admission", {"namespace": "ns", "decision": "mutated"})
    finally:
        structlog.contextvars.clear_contextvars()
    first, second = stream.lines()
    assert list(first) == list(second) == ["namespace", "decision", "event", "worker", "level", "timestamp"]
    assert {k: v for k, v in first.items() if k != "timestamp"} == {k: v for k, v in second.items() if k != "timestamp"}


def test_the_hot_line_keeps_the_level_filter(monkeypatch):
    out = json_logging(monkeypatch, "warning")
    try:
        hot_line("info", "admission", {"decision": "mutated"})
        hot_line("warning", "admission", {"decision": "volume-collision"})
    finally:
        structlog.reset_defaults()
    assert [line["decision"] for line in out.lines()] == ["volume-collision"]


def test_the_hot_line_on_a_terminal_goes_through_structlog(monkeypatch, capsys):
    monkeypatch.setattr(injector_logging, "_hot", None)
    configure_logging("console", "info")
    try:
        hot_line("info", "admission", {"namespace": "ns"})
    finally:
        structlog.reset_defaults()
    assert "admission" in capsys.readouterr().err


def test_lines_left_by_a_loop_that_ended_before_its_turn_go_out_with_the_next_loop(stream):
    log = structlog.get_logger()

    loop = asyncio.new_event_loop()
    loop.call_soon(log.info, "from the first loop")  # schedules its flush for the next turn...
    loop.call_soon(loop.stop)  # ...which never comes
    loop.run_forever()
    loop.close()
    assert stream.lines() == []

    async def next_loop() -> list[str]:
        log.info("from the second loop")
        await asyncio.sleep(0)
        return [line["event"] for line in stream.lines()]

    assert asyncio.run(next_loop()) == ["from the first loop", "from the second loop"]


def test_aiohttp_and_asyncio_records_become_json_lines_without_a_traceback(stream):
    """A client that resets mid-request makes aiohttp or asyncio log with exc_info; the line
    stays one JSON object with the exception in one field."""
    try:
        raise ConnectionResetError("Connection lost")
    except ConnectionResetError:
        logging.getLogger("aiohttp.server").error("Error handling request from %s", "10.0.0.9", exc_info=True)
    logging.getLogger("asyncio").debug("below the level: dropped")
    flush_logs()
    [line] = stream.lines()
    assert line["event"] == "Error handling request from 10.0.0.9" and line["level"] == "error"
    assert line["logger"] == "aiohttp.server" and line["error"] == "ConnectionResetError: Connection lost"
    assert "Traceback" not in stream.getvalue().decode()
