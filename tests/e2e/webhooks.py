"""Our webhook as a real `serve` process registered with the API server, and small helper
servers (a second webhook, a container-credentials endpoint) running in threads.

Whatever the API server calls listens on `plane.webhook_host` (127.0.0.1, or
`E2E_WEBHOOK_HOST` against an existing cluster); what only the tests' own processes call
(the credentials endpoint botocore uses) stays on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from . import api
from .api import NAMESPACE_LABEL, Kube
from .plane import LOOPBACK, ControlPlane, ExternalCluster, Proc, host_port, webhook_host
from serving import Server, free_port, wait_ready

PROBE_ROLE = "arn:aws:iam::111122223333:role/e2e-probe"


def free_port_on(host: str) -> int:
    if host == LOOPBACK:
        return free_port()
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Webhook:
    """A running `pod-identity-injector serve` and the configuration that sends it pods from
    namespaces labelled `e2e-webhook=<label>`."""

    name: str
    label: str
    proc: Proc
    server: Server

    @property
    def url(self) -> str:
        return f"https://{host_port(self.server.host, self.server.port)}/mutate"

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {NAMESPACE_LABEL: self.label}

    def log_entries(self) -> list[dict]:
        entries = []
        for line in self.proc.logs().splitlines():
            try:
                entries.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
        return entries

    def log_events(self, event: str) -> list[dict]:
        return [entry for entry in self.log_entries() if entry.get("event") == event]

    def decisions(self, **match: Any) -> list[dict]:
        """The webhook's log lines for admissions, optionally only those with these field values."""
        return [entry for entry in self.log_events("admission") if all(entry.get(k) == v for k, v in match.items())]


def spawn_serve(plane: ControlPlane | ExternalCluster, workdir: Path, name: str, kubeconfig: Path,
                *flags: str) -> tuple[Proc, Server]:
    """`serve` with the API server as its identity source (not waited for). Call it from the
    main thread: the child's parent-death signal is tied to the thread that started it."""
    host = plane.webhook_host
    port, metrics_port = free_port_on(host), free_port_on(host)
    cmd = [sys.executable, "-m", "injector", "serve", "--port", str(port), "--metrics-port", str(metrics_port),
           "--bind-address", host, "--tls-cert", plane.pki.path("webhook.crt"),
           "--tls-key", plane.pki.path("webhook.key"), "--workers", "1", "--log-format", "json",
           "--kubeconfig", str(kubeconfig), "--service-account-lookup-grace-period", "1s",
           "--resync-period", "60s", *flags]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = Proc(name, cmd, workdir / f"{name}.log", env=env).start()
    assert proc.proc is not None
    return proc, Server(proc.proc, port, metrics_port, Path(plane.pki.ca_file), proc.log_file, host)


async def probe_namespace(admin: Kube, labels: dict[str, str]) -> str:
    """A namespace with the given labels and an annotated ServiceAccount `probe`."""
    namespace = await admin.namespace("e2e-probe-" + "-".join(labels.values()), labels)
    await admin.service_account(namespace, "probe", {api.ROLE_ANNOTATION: PROBE_ROLE})
    return namespace


async def wait_until_active(admin: Kube, namespace: str, *, service_account: str = "probe",
                            accept: Any = api.mutated, timeout: float = 30) -> dict:
    """Dry-run a probe pod until the API server's answer shows the webhook at work."""
    return await api.eventually(
        lambda: admin.create_pod(namespace, api.pod(api.unique("probe"), service_account), dry_run=True),
        accept, timeout=timeout, interval=0.2, what=f"webhook active for namespace {namespace}")


async def launch(plane: ControlPlane | ExternalCluster, admin: Kube, workdir: Path, kubeconfig: Path, *, name: str,
                 label: str, flags: tuple[str, ...] = ()) -> Webhook:
    """Start `serve`, register it (deploy/webhook-configuration.yaml, by URL), wait until the
    API server calls it."""
    proc, server = spawn_serve(plane, workdir, name, kubeconfig, *flags)
    hook = Webhook(name, label, proc, server)
    try:
        await asyncio.to_thread(wait_ready, server, 30)  # /readyz: certificate loaded, initial lists done
        configuration = api.webhook_configuration(name, f"{name}.e2e.pod-identity-injector.test", hook.url,
                                                  plane.pki.ca_file, hook.namespace_labels)
        await admin.call(admin.admission.create_mutating_webhook_configuration, configuration)
        await wait_until_active(admin, await probe_namespace(admin, hook.namespace_labels))
    except BaseException:
        await asyncio.to_thread(proc.stop)
        raise
    return hook


async def retire(admin: Kube, hook: Webhook) -> int | None:
    """Unregister, then stop with SIGTERM; returns the exit code."""
    try:
        await admin.call(admin.admission.delete_mutating_webhook_configuration, hook.name)
    finally:
        code = await asyncio.to_thread(hook.proc.stop)
    return code


class BackgroundServer:
    """An aiohttp application in its own thread and event loop, so it answers whatever the
    test's own loop is doing (including blocking in a subprocess). It listens on `host`; by
    default a TLS server is a webhook the API server calls (`webhook_host()`), a plain HTTP
    one a local stand-in for the tests' own processes (127.0.0.1)."""

    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext | None = None, *,
                 host: str | None = None) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.host = host or (webhook_host() if ssl_context is not None else LOOPBACK)
        self.port = free_port_on(self.host)
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="e2e-helper-server", daemon=True)

    def start(self) -> BackgroundServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{host_port(self.host, self.port)}"


def serving_context(plane: ControlPlane | ExternalCluster) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(plane.pki.path("webhook.crt"), plane.pki.path("webhook.key"))
    return context

