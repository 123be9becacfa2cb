"""Test helpers: certificates on disk, a real `pod-identity-injector serve` process, and a port's
`Routes` in process (`RoutesTestServer`)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import BaseTestServer
from aiohttp.web import ServerRunner

from injector.certificates.authority import generate_ca, generate_serving_cert, write_bundle

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class RoutesTestServer(BaseTestServer):
    """aiohttp's test server for `app.Routes`, built by `Routes.server` as `serve` builds it
    (aiohttp's RawTestServer would drop its request factory, and with it the body limit)."""

    def __init__(self, routes: Any, **kwargs: Any) -> None:
        self._routes = routes
        super().__init__(**kwargs)

    async def _make_runner(self, debug: bool = True, **kwargs: Any) -> ServerRunner:
        kwargs.pop("handler_cancellation", None)  # serve keeps aiohttp's default
        return ServerRunner(self._routes.server(debug=debug, **kwargs), debug=debug, **kwargs)


def make_certs(directory: Path, ca: tuple | None = None) -> tuple:
    """Write ca.crt/ca.key/tls.crt/tls.key for 127.0.0.1; returns the CA for reuse."""
    ca = ca or generate_ca()
    cert, key = generate_serving_cert(ca[0], ca[1], ["localhost"], ["127.0.0.1"])
    write_bundle(directory, ca[0], ca[1], cert, key)
    return ca


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    metrics_port: int
    ca_file: Path
    log_file: Path
    host: str = "127.0.0.1"  # where it listens (the e2e tier may use another host)

    @property
    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ssl_context, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def review(self, document: Any, content_type: str = "application/json") -> tuple[int, Any]:
        status, _, body = self.request("POST", "/mutate", json.dumps(document).encode(),
                                       {"Content-Type": content_type})
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode()

    def metrics(self, path: str = "/metrics") -> str:
        conn = http.client.HTTPConnection(self.host, self.metrics_port, timeout=10)
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def start_server(tmp: Path, certs: Path, *extra: str, ready: bool = True, workers: int = 1) -> Server:
    port, metrics_port = free_port(), free_port()
    log_file = tmp / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "injector", "serve", "--port", str(port), "--metrics-port", str(metrics_port),
           "--bind-address", "127.0.0.1", "--tls-cert", str(certs / "tls.crt"), "--tls-key", str(certs / "tls.key"),
           "--log-format", "json", "--workers", str(workers), *extra]
    if not any(a.startswith(("--service-account", "--config-map", "--watch-container")) for a in extra):
        cmd += ["--service-account", str(EXAMPLES / "serviceaccount.yaml")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_file, "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
    server = Server(proc, port, metrics_port, certs / "ca.crt", log_file)
    if ready:
        wait_ready(server)
    return server


def wait_ready(server: Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"serve exited with {server.proc.returncode}:\n{server.logs()}")
        try:
            status, _, _ = server.request("GET", "/readyz")
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"serve not ready after {timeout}s:\n{server.logs()}")


def pod_review(api_version: str = "admission.k8s.io/v1", service_account: str = "my-app",
               namespace: str = "default", uid: str = "3a1d2c4b-0000-4000-8000-000000000001",
               containers: int = 1, **pod_spec: Any) -> dict:
    spec = {"serviceAccountName": service_account,
            "containers": [{"name": f"c{i}", "image": "busybox"} for i in range(containers)], **pod_spec}
    return {
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-"}, "spec": spec},
        },
    }
