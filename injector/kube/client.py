"""Talking to the API server: client configuration and raw JSON list/watch/get calls.
No identity rule and no caching here: callers get plain JSON.

The generated kubernetes-asyncio methods are called with `_preload_content=False` so that
responses are read as JSON straight into dicts: no model objects for thousands of
ServiceAccounts, and watch streams parsed line by line with orjson.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio import client, config
from kubernetes_asyncio.config.config_exception import ConfigException

from injector.core.settings import SettingsError

ListCall = Callable[..., Awaitable[Any]]
IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# etcd refuses objects over 1.5 MiB by default; their JSON, with managedFields, stays well below this.
MAX_EVENT_BYTES = 16 * 1024 * 1024
# Every call has deadlines (docs/reference.md#api-timeouts): kubernetes-asyncio sets none, and a
# half-open connection would otherwise hold a relist or a certificate renewal for ever. A LIST
# of 100k ServiceAccounts from the watch cache is one ~50 MiB answer: minutes would be absurd.
CALL_TIMEOUT = aiohttp.ClientTimeout(total=120, connect=10, sock_connect=10, sock_read=60)
# A watch lasts as long as the server keeps it; it must not go silent: the API server sends a
# bookmark about every minute to a watch that asked for them, so three minutes of nothing means
# the connection is dead, and the reflector resumes from the last version it saw.
WATCH_IDLE = 180.0
WATCH_CALL_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10, sock_read=WATCH_IDLE)


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0 when there was no response)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status


async def api_client(kubeconfig: str = "", kube_api: str = "") -> client.ApiClient:
    """--kubeconfig, else in-cluster config, else the default kubeconfig; --kube-api overrides the URL.
    No usable configuration is a `SettingsError`: start-up ends with one line saying so."""
    try:
        configuration = await _configuration(kubeconfig, kube_api)
    except (ConfigException, OSError) as exc:
        where = f"--kubeconfig={kubeconfig}" if kubeconfig else "no --kubeconfig or in-cluster token: ~/.kube/config"
        raise SettingsError(f"cannot configure the API client ({where}): {exc}") from None
    return client.ApiClient(configuration=configuration)


async def _configuration(kubeconfig: str, kube_api: str) -> client.Configuration:
    configuration = client.Configuration()
    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    elif os.path.exists(IN_CLUSTER_TOKEN):
        config.load_incluster_config(client_configuration=configuration)
    elif kube_api:
        pass  # a bare URL: e.g. a local proxy that adds credentials (kubectl proxy)
    else:
        await config.load_kube_config(client_configuration=configuration)
    if kube_api:
        configuration.host = kube_api.rstrip("/")
    return configuration


async def _read_json(response: Any) -> Any:
    body = await response.read()
    if not 200 <= response.status < 300:
        raise KubeError(response.status, _status_message(body))
    return orjson.loads(body)


def _status_message(body: bytes) -> str:
    try:
        status = orjson.loads(body)
        return str(status.get("message") or status)
    except (orjson.JSONDecodeError, AttributeError):
        return body[:200].decode(errors="replace")


async def list_page(call: ListCall, **params: Any) -> dict[str, Any]:
    """One page of a list call, as the raw `...List` JSON object."""
    response = await call(_preload_content=False, _request_timeout=CALL_TIMEOUT, **params)
    try:
        return await _read_json(response)
    finally:
        response.release()


async def get_object(call: ListCall, *args: Any, timeout: float | None = None) -> dict[str, Any] | None:
    """GET one object; None when it does not exist (404)."""
    try:
        response = await call(*args, _preload_content=False, _request_timeout=timeout or CALL_TIMEOUT)
    except client.ApiException as exc:
        raise KubeError(exc.status or 0, str(exc.reason)) from None
    try:
        return await _read_json(response)
    except KubeError as exc:
        if exc.status == 404:
            return None
        raise
    finally:
        response.release()


async def watch_events(call: ListCall, *, max_event_bytes: int = MAX_EVENT_BYTES,
                       **params: Any) -> AsyncIterator[dict[str, Any]]:
    """The events of one watch request (`{"type": …, "object": …}`) until the server ends it.

    A line that is not a JSON object, or longer than `max_event_bytes`, is a `KubeError`: the
    reflector backs off and lists again."""
    response = await call(watch=True, _preload_content=False, _request_timeout=WATCH_CALL_TIMEOUT, **params)
    try:
        if response.status != 200:
            raise KubeError(response.status, _status_message(await response.read()))
        # Split lines ourselves: a ConfigMap event can be far longer than aiohttp's line limit;
        # but not without bound: a line longer than any object the API server stores is an error.
        # One split per chunk, in C: at 100k events a sync is mostly lines of ~250 bytes.
        partial: list[bytes] = []  # the start of a line that goes on in the next chunk
        partial_size = 0
        async for chunk in response.content.iter_any():
            if b"\n" in chunk:
                lines = chunk.split(b"\n")
                if partial:
                    partial.append(lines[0])
                    lines[0] = b"".join(partial)
                rest = lines.pop()
                partial, partial_size = ([rest], len(rest)) if rest else ([], 0)
                for line in lines:
                    if line and not line.isspace():
                        yield _event(line)
            else:
                partial.append(chunk)
                partial_size += len(chunk)
            if partial_size > max_event_bytes:
                raise KubeError(0, f"watch event longer than {max_event_bytes} bytes without a newline")
    finally:
        response.release()


def _event(line: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise KubeError(0, f"watch event is not valid JSON: {exc}") from None
    if not isinstance(event, dict) or not isinstance(event.get("object", {}), dict):
        raise KubeError(0, "watch event is not an object with an object")
    return event


async def call_json(call: ListCall, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Any generated API call (create, replace, patch, …) answered as a raw JSON object."""
    try:
        response = await call(*args, _preload_content=False, **{"_request_timeout": CALL_TIMEOUT, **kwargs})
    except client.ApiException as exc:
        raise KubeError(exc.status or 0, str(exc.reason)) from None
    try:
        return await _read_json(response)
    finally:
        response.release()
