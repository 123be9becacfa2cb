"""Deadlines on every API call (docs/reference.md#api-timeouts): against an API server that
accepts a connection and then says nothing (a half-open connection, a frozen server), a list,
a get and a call end with TimeoutError, and a watch that goes silent ends too, so the reflector
resumes instead of waiting for ever."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from kubernetes_asyncio import client

from injector.core.settings import SettingsError
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


@contextlib.asynccontextmanager
async def core_api_of(server: asyncio.Server) -> AsyncIterator[client.CoreV1Api]:
    """A CoreV1Api for `server`; asserts that what runs inside ends within 5 s."""
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    api = client.ApiClient(configuration=configuration)
    started = time.monotonic()
    try:
        yield client.CoreV1Api(api)
    finally:
        await api.close()
        server.close()
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("how", ["list", "get", "call"])
async def test_a_call_to_a_server_that_never_answers_ends_at_its_deadline(monkeypatch, how):
    monkeypatch.setattr(kube, "CALL_TIMEOUT", aiohttp.ClientTimeout(total=1, sock_read=0.5))
    async with core_api_of(await silent_server(answer_headers=False)) as core:
        with pytest.raises(TimeoutError):
            if how == "list":
                await kube.list_page(core.list_service_account_for_all_namespaces, limit=500)
            elif how == "get":
                await kube.get_object(core.read_namespaced_service_account, "app", "team")
            else:
                await kube.call_json(core.read_namespace, "team")


async def test_a_watch_that_goes_silent_ends_at_its_idle_deadline(monkeypatch):
    monkeypatch.setattr(kube, "WATCH_CALL_TIMEOUT", aiohttp.ClientTimeout(total=None, sock_read=0.5))
    async with core_api_of(await silent_server(answer_headers=True)) as core:
        with pytest.raises(TimeoutError):
            async for _ in kube.watch_events(core.list_service_account_for_all_namespaces, resource_version="1"):
                pass


def test_the_deadlines_are_set_for_a_busy_cluster_not_for_ever():
    assert kube.CALL_TIMEOUT.total and kube.CALL_TIMEOUT.sock_read and kube.CALL_TIMEOUT.connect
    assert kube.WATCH_CALL_TIMEOUT.total is None and kube.WATCH_CALL_TIMEOUT.sock_read == kube.WATCH_IDLE


def test_an_unusable_kubeconfig_is_a_settings_error_naming_it(tmp_path):
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(SettingsError, match=f"cannot configure the API client \\(--kubeconfig={broken}\\)"):
        asyncio.run(kube.api_client(str(broken)))
