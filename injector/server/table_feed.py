"""The supervisor's tables, kept current in its serving workers: one stream per worker.
It never calls the API server; only the supervisor does.

With `--workers N` > 1 the supervisor alone watches the cluster (injector/server/processes.py). Each
worker is forked with a copy of the tables as they stood after the initial sync; from then on
every change the supervisor's `IdentityStore` reports (`update_listeners`) is written to every
worker over its end of a socketpair, and the worker's store `apply`s it. A worker that misses a
ServiceAccount (`--service-account-lookup-grace-period`) asks the supervisor, which fetches it
once for everyone, streams the resulting change to all workers and then answers the asker; the
answer comes after the change on the same ordered stream, so the asker resolves again with it.

Messages are orjson arrays, each framed by its length (4 bytes, big-endian):

    supervisor → worker   ["put", "ns/name", ENTRY]  ["remove", "ns/name"]  ["clear"]
                          ["config_map", {"exact": {key: ENTRY}, "patterns": [[glob, name, ENTRY]],
                                          "rejected": [text]}]
                          ["pod_identities", [[namespace, name], ...]]  ["fetched", "ns/name"]
    worker → supervisor   ["fetch", namespace, name]

where ENTRY is [role_arn, audience, regional_sts, token_expiration, problems, warnings, annotated,
region, session_name]: every field of `RoleMapping`, in order.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from injector.core.identity import ConfigMapMapping, RoleMapping
from injector.sources.store import IdentityStore, Update

log = structlog.get_logger(__name__)

_LENGTH = struct.Struct(">I")
MAX_MESSAGE = 1 << 30  # a whole ConfigMap mapping is one message; etcd caps objects at 1.5 MiB


class FeedError(Exception):
    """A message that is not one of the above: a bug on the other side, never data."""


# -- encoding --------------------------------------------------------------------------------
def _entry(entry: RoleMapping) -> list[Any]:
    return [entry.role_arn, entry.audience, entry.regional_sts, entry.token_expiration, entry.problems,
            entry.warnings, entry.annotated, entry.region, entry.session_name]


def _mapping(raw: list[Any]) -> RoleMapping:
    role_arn, audience, regional_sts, expiration, problems, warnings, annotated, region, session_name = raw
    return RoleMapping(role_arn, audience, regional_sts, expiration, tuple(problems), tuple(warnings),
                       tuple(annotated), region, session_name)


def frame(message: list[Any]) -> bytes:
    body = orjson.dumps(message)
    return _LENGTH.pack(len(body)) + body


def encode_update(update: Update) -> bytes:
    kind = update[0]
    if kind == "put":
        return frame(["put", update[1], _entry(update[2])])
    if kind == "config_map":
        mapping: ConfigMapMapping = update[1]
        return frame(["config_map", {
            "exact": {key: _entry(entry) for key, entry in mapping.exact.items()},
            "patterns": [[glob, name, _entry(entry)] for glob, name, entry in mapping.patterns],
            "rejected": list(mapping.rejected)}])
    if kind == "pod_identities":
        return frame(["pod_identities", sorted(update[1])])
    return frame(list(update))  # remove, clear


def decode_update(message: list[Any]) -> Update:
    kind = message[0]
    if kind == "put":
        return ("put", message[1], _mapping(message[2]))
    if kind == "remove":
        return ("remove", message[1])
    if kind == "clear":
        return ("clear",)
    if kind == "config_map":
        raw = message[1]
        return ("config_map", ConfigMapMapping(
            {key: _mapping(entry) for key, entry in raw["exact"].items()},
            tuple((glob, name, _mapping(entry)) for glob, name, entry in raw["patterns"]),
            tuple(raw["rejected"])))
    if kind == "pod_identities":
        return ("pod_identities", frozenset((namespace, name) for namespace, name in message[1]))
    raise FeedError(f"unknown message {kind!r}")


async def read_message(reader: asyncio.StreamReader) -> list[Any] | None:
    """The next message, or None at the end of the stream."""
    try:
        head = await reader.readexactly(_LENGTH.size)
        (length,) = _LENGTH.unpack(head)
        if length > MAX_MESSAGE:
            raise FeedError(f"message of {length} bytes")
        message = orjson.loads(await reader.readexactly(length))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    if not isinstance(message, list) or not message:
        raise FeedError(f"not a message: {message!r:.100}")
    return message


# -- the supervisor's side -------------------------------------------------------------------
class TableFeed:
    """Writes every change of `store` to each worker's socket and answers their fetch requests."""

    def __init__(self, store: IdentityStore, sockets: list[socket.socket]) -> None:
        self.store = store
        self.sockets = sockets
        self.writers: list[asyncio.StreamWriter] = []
        self.readers: list[asyncio.StreamReader] = []

    async def open(self) -> None:
        """Connect the streams and start listening to the store: call it before any source runs."""
        for sock in self.sockets:
            reader, writer = await asyncio.open_connection(sock=sock)
            self.readers.append(reader)
            self.writers.append(writer)
        self.store.update_listeners.append(self.broadcast)

    def broadcast(self, update: Update) -> None:
        data = encode_update(update)
        for writer in self.writers:
            if not writer.is_closing():
                writer.write(data)

    async def run(self) -> None:
        """Serve the workers' requests until the feed is closed."""
        try:
            await asyncio.gather(*(self._serve(index) for index in range(len(self.readers))))
        finally:
            self.close()

    async def _serve(self, index: int) -> None:
        reader, writer = self.readers[index], self.writers[index]
        try:
            while (message := await read_message(reader)) is not None:
                if message[0] != "fetch" or len(message) != 3:
                    raise FeedError(f"unknown request {message[0]!r:.40}")
                self._fetch(writer, str(message[1]), str(message[2]))
        except FeedError as exc:
            log.error("table feed: unreadable request from a worker; closing its feed", worker=index,
                      error=str(exc))
            writer.close()
            return
        log.info("table feed closed by worker", worker=index)

    def _fetch(self, writer: asyncio.StreamWriter, namespace: str, name: str) -> None:
        answer = frame(["fetched", f"{namespace}/{name}"])
        fetch = self.store.fetch_missing
        if fetch is None:
            writer.write(answer)
            return
        # The fetch puts what it found into the store, which broadcasts it before this answer.
        task = asyncio.ensure_future(fetch(namespace, name))
        task.add_done_callback(lambda _: writer.is_closing() or writer.write(answer))

    def close(self) -> None:
        if self.broadcast in self.store.update_listeners:
            self.store.update_listeners.remove(self.broadcast)
        for writer in self.writers:
            writer.close()


# -- a worker's side -------------------------------------------------------------------------
class TableFeedClient:
    """Applies the supervisor's changes to this worker's copy of the tables; asks it for misses."""

    def __init__(self, store: IdentityStore, sock: socket.socket,
                 on_lost: Callable[[], None] | None = None) -> None:
        self.store = store
        self.sock = sock
        self.on_lost = on_lost
        self.lost = False
        self.applied = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: dict[str, asyncio.Future] = {}

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(sock=self.sock)

    def fetch(self, namespace: str, name: str) -> asyncio.Future:
        """Ask the supervisor for one missing ServiceAccount; resolves once its answer, and any
        change it brought, have arrived. Every waiter for the same name shares one request."""
        key = f"{namespace}/{name}"
        future = self._waiting.get(key)
        if future is None:
            future = self._waiting[key] = asyncio.get_running_loop().create_future()
            if self.lost or self._writer is None:
                future.set_result(False)
                del self._waiting[key]
            else:
                self._writer.write(frame(["fetch", namespace, name]))
        return future

    async def run(self) -> None:
        """Apply changes until the stream ends (the supervisor is gone); cancelling is not losing."""
        assert self._reader is not None, "open() first"
        try:
            while (message := await read_message(self._reader)) is not None:
                if message[0] == "fetched":
                    future = self._waiting.pop(str(message[1]), None)
                    if future is not None and not future.done():
                        future.set_result(True)
                    continue
                self.store.apply(decode_update(message))
                self.applied += 1
        except (FeedError, ValueError, KeyError, TypeError) as exc:
            log.error("table feed: unreadable message from the supervisor; stopping", error=str(exc))
        self._lose()

    def _lose(self) -> None:
        """The supervisor is gone (or stopped this feed): nothing will update the tables again."""
        if self.lost:
            return
        self.lost = True
        for future in self._waiting.values():
            if not future.done():
                future.set_result(False)
        self._waiting.clear()
        if self._writer is not None:
            self._writer.close()
        if self.on_lost is not None:
            self.on_lost()
