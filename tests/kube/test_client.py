"""Deadlines on every API call (docs/reference.md#api-timeouts): against an API server that
accepts a connection and then says nothing (a half-open connection, a frozen server), a list,
a get and a call end with TimeoutError, and a watch that goes silent ends too, so the reflector
resumes instead of waiting for ever."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from kubernetes_asyncio import client

from injector.kube import client as kube


async def silent_server(answer_headers: bool) -> asyncio.Server:
    """Accepts on 127.0.0.1; sends a chunked 200's headers (a watch that started) or nothing."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if answer_headers:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
        await asyncio.sleep(30)

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def api_for(server: asyncio.Server) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    return client.ApiClient(configuration=configuration)


@pytest.mark.parametrize("how", ["list", "get", "call"])
async def test_a_call_to_a_server_that_never_answers_ends_at_its_deadline(monkeypatch, how):
    monkeypatch.setattr(kube, "CALL_TIMEOUT", aiohttp.ClientTimeout(total=1, sock_read=0.5))
    server = await silent_server(answer_headers=False)
    api = api_for(server)
    core = client.CoreV1Api(api)
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            if how == "list":
                await kube.list_page(core.list_service_account_for_all_namespaces, limit=500)
            elif how == "get":
                await kube.get_object(core.read_namespaced_service_account, "app", "team")
            else:
                await kube.call_json(core.read_namespace, "team")
    finally:
        await api.close()
        server.close()
    assert time.monotonic() - started < 5


async def test_a_watch_that_goes_silent_ends_at_its_idle_deadline(monkeypatch):
    monkeypatch.setattr(kube, "WATCH_CALL_TIMEOUT", aiohttp.ClientTimeout(total=None, sock_read=0.5))
    server = await silent_server(answer_headers=True)
    api = api_for(server)
    core = client.CoreV1Api(api)
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            async for _ in kube.watch_events(core.list_service_account_for_all_namespaces, resource_version="1"):
                pass
    finally:
        await api.close()
        server.close()
    assert time.monotonic() - started < 5


def test_the_deadlines_are_set_for_a_busy_cluster_not_for_ever():
    assert kube.CALL_TIMEOUT.total and kube.CALL_TIMEOUT.sock_read and kube.CALL_TIMEOUT.connect
    assert kube.WATCH_CALL_TIMEOUT.total is None and kube.WATCH_CALL_TIMEOUT.sock_read == kube.WATCH_IDLE
