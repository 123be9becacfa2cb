"""A loopback Kubernetes control plane for the e2e tier: PKI, etcd and kube-apiserver as processes.

Everything listens on 127.0.0.1 and is contacted only there. The binary is
`tools/kube-test-plane` (kube-apiserver and an embedded etcd in one static file); see
docs/e2e.md and the harness notes for why each flag is set.

External mode (`E2E_KUBECONFIG`, e.g. a kind cluster): `connect_external_cluster` starts
nothing and gives the same attributes for an existing cluster; the webhooks the tests start
listen on `E2E_WEBHOOK_HOST`, the address at which that cluster's API server reaches them.
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import http.client
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from injector.certificates.authority import (
    cert_to_pem,
    generate_ca,
    generate_private_key,
    generate_serving_cert,
    key_to_pem,
)

from serving import free_port

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tools" / "kube-test-plane" / "build.sh"
ADMIN_USER = "e2e-admin"
LOOPBACK = "127.0.0.1"
STOP_TIMEOUT = 30.0
# An audit policy that logs every ServiceAccount request (metadata only) and nothing else: what
# tests and benchmarks count the webhook's API requests with (`--audit-policy-file`).
SERVICE_ACCOUNT_AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  resources: [{group: "", resources: [serviceaccounts]}]
- level: None
"""
WEBHOOK_USER_AGENT = "OpenAPI-Generator"  # what kubernetes-asyncio, our webhook's client, sends


def webhook_audit_entries(audit_log: Path) -> list[dict]:
    """The entries of an audit log for requests our webhook made (its client's user agent)."""
    entries = (json.loads(line) for line in audit_log.read_text().splitlines())
    return [entry for entry in entries if entry.get("userAgent", "").startswith(WEBHOOK_USER_AGENT)]


class BinaryUnavailable(RuntimeError):
    """kube-test-plane is neither given nor buildable on this machine."""


def find_binary() -> str:
    """`KUBE_TEST_PLANE_BIN` if it names an executable, else whatever build.sh prints
    (a no-op when the cached binary is current; a cold build takes minutes)."""
    given = os.environ.get("KUBE_TEST_PLANE_BIN", "")
    if given and Path(given).is_file() and os.access(given, os.X_OK):
        return given
    try:
        result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=45 * 60,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BinaryUnavailable(f"{BUILD_SCRIPT} failed: {exc}") from None
    path = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if result.returncode != 0 or not path or not os.access(path, os.X_OK):
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise BinaryUnavailable(f"{BUILD_SCRIPT} exited {result.returncode}: {tail}")
    return path


def binary_for_tests() -> str:
    """`find_binary`, or the test skips — fails instead under `E2E_REQUIRED=1` (what CI sets)."""
    import pytest

    try:
        return find_binary()
    except BinaryUnavailable as exc:
        if os.environ.get("E2E_REQUIRED") == "1":
            pytest.fail(f"E2E_REQUIRED=1 but kube-test-plane is unavailable: {exc}", pytrace=False)
        pytest.skip(f"kube-test-plane unavailable (set E2E_REQUIRED=1 to make this an error): {exc}")


# -- PKI ---------------------------------------------------------------------------------------
def generate_client_cert(ca_cert: x509.Certificate, ca_key: Any, common_name: str, groups: list[str],
                         days: int = 2) -> tuple[x509.Certificate, Any]:
    """A TLS client certificate as kube-apiserver reads it: CN = user name, O = groups."""
    key = generate_private_key()
    subject = x509.Name([*(x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups),
                         x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


@dataclass(frozen=True)
class Pki:
    """One CA for everything: the API server's and the webhooks' serving certificates, the
    admin's client certificate; plus the ServiceAccount token signing pair."""

    directory: Path

    def path(self, name: str) -> str:
        return str(self.directory / name)

    @property
    def ca_file(self) -> str:
        return self.path("ca.crt")


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = generate_ca("e2e-ca", days=2)
    files: dict[str, bytes] = {"ca.crt": cert_to_pem(ca_cert), "ca.key": key_to_pem(ca_key)}
    for name in ("apiserver", "webhook"):
        cert, key = generate_serving_cert(ca_cert, ca_key, ["localhost"], ["127.0.0.1"], days=2)
        files[f"{name}.crt"], files[f"{name}.key"] = cert_to_pem(cert), key_to_pem(key)
    cert, key = generate_client_cert(ca_cert, ca_key, ADMIN_USER, ["system:masters"])
    files["admin.crt"], files["admin.key"] = cert_to_pem(cert), key_to_pem(key)
    signing = generate_private_key()
    files["sa.key"] = key_to_pem(signing)
    files["sa.pub"] = signing.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    for name, data in files.items():
        (directory / name).write_bytes(data)
        os.chmod(directory / name, 0o600 if name.endswith(".key") else 0o644)
    return Pki(directory)


def write_kubeconfig(path: Path, server: str, ca_file: str, *, client_cert: str = "", client_key: str = "",
                     token: str = "", user: str = "e2e") -> Path:
    credentials: dict[str, str] = {"token": token} if token else {
        "client-certificate": client_cert, "client-key": client_key}
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "e2e", "preferences": {},
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority": ca_file}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
    }
    path.write_text(yaml.safe_dump(config))
    os.chmod(path, 0o600)
    return path


# -- processes ---------------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1
try:
    _LIBC: Any = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _LIBC = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the thread that started it (pytest's main thread)
    dies without running the teardown, e.g. on SIGKILL."""
    if _LIBC is not None and hasattr(_LIBC, "prctl"):
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# Every process started here and still running: their logs are attached to failing tests, and
# whatever a crashed or interrupted session did not stop is stopped when the interpreter exits.
LIVE: list[Proc] = []


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(LIVE):
        proc.stop(timeout=5)


@dataclass
class Proc:
    """A child process writing stdout and stderr to one log file."""

    name: str
    cmd: list[str]
    log_file: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = field(default=None, init=False)

    def start(self) -> Proc:
        with open(self.log_file, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, preexec_fn=_die_with_parent)
        LIVE.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self in LIVE:
            LIVE.remove(self)
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def wait_until(check: Callable[[], bool], timeout: float, what: str, *, proc: Proc | None = None,
               interval: float = 0.1) -> float:
    """Poll `check` until it is true; returns the seconds it took. A process that exits
    meanwhile fails at once, with its log."""
    started = time.monotonic()
    while True:
        if proc is not None and not proc.running():
            raise RuntimeError(f"{proc.name} exited ({proc.proc.returncode if proc.proc else '?'}) "
                               f"while waiting for {what}:\n{proc.tail()}")
        try:
            if check():
                return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > timeout:
            tail = f":\n{proc.tail()}" if proc is not None else ""
            raise TimeoutError(f"{what}: not after {timeout:.0f}s{tail}")
        time.sleep(interval)


def _http_get(port: int, path: str, context: ssl.SSLContext | None = None, timeout: float = 5) -> tuple[int, bytes]:
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# -- the control plane -----------------------------------------------------------------------
@dataclass
class ControlPlane:
    external: ClassVar[bool] = False
    binary: str
    workdir: Path
    pki: Pki
    etcd: Proc
    apiserver: Proc
    port: int
    kubeconfig: Path
    startup_seconds: float
    etcd_port: int = 0
    extra_flags: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # -- faults (tests/e2e/test_api_server_faults.py; only on a plane of a test's own) -----------
    def start_apiserver(self, port: int, name: str = "kube-apiserver") -> Proc:
        """Another kube-apiserver on the same etcd (HA, or the same port again after a stop)."""
        proc = Proc(name, [self.binary, "kube-apiserver", *_apiserver_flags(self.pki, port, self.etcd_port),
                           *self.extra_flags], self.workdir / f"{name}-{port}.log").start()
        context = ssl.create_default_context(cafile=self.pki.ca_file)
        wait_until(lambda: _http_get(port, "/readyz", context)[0] == 200, 90, f"{name} /readyz on {port}",
                   proc=proc, interval=0.2)
        return proc

    def etcd_revision(self) -> int:
        return int(self._etcd_post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])

    def compact_etcd(self) -> int:
        """Compact etcd's history up to now: any watch from an older version gets 410 Gone."""
        revision = self.etcd_revision()
        self._etcd_post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def _etcd_post(self, path: str, body: dict) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.etcd_port, timeout=10)
        try:
            conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"etcd {path}: {response.status} {data[:200]!r}")
            return json.loads(data)
        finally:
            conn.close()

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def api_ca_file(self) -> str:
        """The CA of the API server's serving certificate (here the one CA of everything)."""
        return self.pki.ca_file

    @property
    def webhook_host(self) -> str:
        return LOOPBACK

    def admin_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.pki.ca_file)
        context.load_cert_chain(self.pki.path("admin.crt"), self.pki.path("admin.key"))
        return context

    def get(self, path: str) -> tuple[int, bytes]:
        """A GET as the admin (client certificate), e.g. /metrics or the OIDC discovery document."""
        return _http_get(self.port, path, self.admin_context(), timeout=10)

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 10,
             port: int | None = None) -> tuple[int, dict]:
        """One request as the admin with a JSON body and answer (PATCH as a merge patch), to this
        API server or, by `port`, to another of the plane's."""
        conn = http.client.HTTPSConnection("127.0.0.1", port or self.port, context=self.admin_context(),
                                           timeout=timeout)
        try:
            headers = {"Content-Type": "application/merge-patch+json" if method == "PATCH" else "application/json"}
            conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, json.loads(data) if data else {}
        finally:
            conn.close()

    def requests_served(self, verb: str, resource: str = "serviceaccounts") -> float:
        """`verb` (LIST, WATCH, GET, …) requests for `resource` the API server has answered so
        far, anyone's, from its apiserver_request_total metric."""
        status, body = self.get("/metrics")
        assert status == 200
        return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
                   if line.startswith("apiserver_request_total{") and f'verb="{verb}"' in line
                   and f'resource="{resource}"' in line)

    def stop(self) -> None:
        self.apiserver.stop()
        self.etcd.stop()


def _apiserver_flags(pki: Pki, port: int, etcd_port: int) -> list[str]:
    return [
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
        "--endpoint-reconciler-type=none",
        f"--tls-cert-file={pki.path('apiserver.crt')}", f"--tls-private-key-file={pki.path('apiserver.key')}",
        f"--client-ca-file={pki.ca_file}",
        "--authorization-mode=RBAC",
        f"--service-account-issuer=https://127.0.0.1:{port}",
        f"--service-account-key-file={pki.path('sa.pub')}",
        f"--service-account-signing-key-file={pki.path('sa.key')}",
        f"--api-audiences=https://127.0.0.1:{port}",
        "--service-cluster-ip-range=10.0.0.0/24",
        "--allow-privileged=true",
        "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,MutatingAdmissionWebhook,"
        "ValidatingAdmissionWebhook",
        "--profiling=false", "--v=1",
    ]


def start_control_plane(binary: str, workdir: Path, attempts: int = 3,
                        extra_flags: tuple[str, ...] = ()) -> ControlPlane:
    """etcd, then kube-apiserver (with `extra_flags` after ours), on free loopback ports;
    retried if a port was taken meanwhile."""
    pki = make_pki(workdir / "pki")
    started = time.monotonic()
    last: Exception | None = None
    for attempt in range(attempts):
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd = Proc("etcd", [binary, "etcd", "--data-dir", str(workdir / f"etcd-{attempt}"),
                             "--listen-client-url", f"http://127.0.0.1:{etcd_port}",
                             "--listen-peer-url", f"http://127.0.0.1:{peer_port}"],
                    workdir / f"etcd-{attempt}.log").start()
        apiserver: Proc | None = None
        try:
            wait_until(lambda: _http_get(etcd_port, "/health")[1].find(b'"true"') >= 0,  # noqa: B023
                       30, "etcd /health", proc=etcd)
            apiserver = Proc("kube-apiserver", [binary, "kube-apiserver", *_apiserver_flags(pki, api_port, etcd_port),
                                                *extra_flags],
                             workdir / f"kube-apiserver-{attempt}.log").start()
            context = ssl.create_default_context(cafile=pki.ca_file)
            wait_until(lambda: _http_get(api_port, "/readyz", context)[0] == 200,  # noqa: B023
                       90, "kube-apiserver /readyz", proc=apiserver, interval=0.2)
        except (RuntimeError, TimeoutError) as exc:
            last = exc
            if apiserver is not None:
                apiserver.stop()
            etcd.stop()
            continue
        kubeconfig = write_kubeconfig(workdir / "admin.kubeconfig", f"https://127.0.0.1:{api_port}", pki.ca_file,
                                      client_cert=pki.path("admin.crt"), client_key=pki.path("admin.key"),
                                      user=ADMIN_USER)
        return ControlPlane(binary, workdir, pki, etcd, apiserver, api_port, kubeconfig,
                            time.monotonic() - started, etcd_port, tuple(extra_flags))
    raise RuntimeError(f"control plane did not start in {attempts} attempts: {last}")


# -- an existing cluster (external mode) ---------------------------------------------------------
class ExternalClusterError(RuntimeError):
    """E2E_KUBECONFIG or E2E_WEBHOOK_HOST cannot be used."""


def external_kubeconfig() -> str:
    """`E2E_KUBECONFIG`: run the tier against that cluster instead of starting one."""
    return os.environ.get("E2E_KUBECONFIG", "")


def webhook_host() -> str:
    """The address at which the API server reaches the processes the tests start (webhooks, the
    reinvocation test's sidecar injector): `E2E_WEBHOOK_HOST` in external mode (kind: the
    gateway of the docker network `kind`), else always 127.0.0.1."""
    if external_kubeconfig():
        return os.environ.get("E2E_WEBHOOK_HOST", "") or LOOPBACK
    return LOOPBACK


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_webhook_pki(directory: Path, host: str) -> Pki:
    """External mode: a fresh CA and the webhooks' serving certificate (SANs localhost,
    127.0.0.1 and `host`); the cluster's own PKI is not ours to use."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = generate_ca("e2e-webhook-ca", days=2)
    cert, key = generate_serving_cert(ca_cert, ca_key, ["localhost"], list(dict.fromkeys([LOOPBACK, host])), days=2)
    for name, data in {"ca.crt": cert_to_pem(ca_cert), "ca.key": key_to_pem(ca_key),
                       "webhook.crt": cert_to_pem(cert), "webhook.key": key_to_pem(key)}.items():
        (directory / name).write_bytes(data)
        os.chmod(directory / name, 0o600 if name.endswith(".key") else 0o644)
    return Pki(directory)


@dataclass
class ExternalCluster:
    """An existing cluster given by an admin kubeconfig: nothing is started or stopped here.
    The attributes the tests use, as ControlPlane has them: `url`, `kubeconfig` (a copy of the
    current context with absolute file paths), `workdir`, `pki` (the webhooks' serving
    certificates only), `issuer` (from the cluster's OIDC discovery document), `get()` as
    the kubeconfig's user."""

    external: ClassVar[bool] = True
    workdir: Path
    pki: Pki
    kubeconfig: Path
    url: str
    api_ca_file: str
    webhook_host: str
    client_cert: str = ""
    client_key: str = ""
    token: str = ""
    issuer: str = ""
    jwks_uri: str = ""
    startup_seconds: float = 0.0

    def admin_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.api_ca_file)
        if self.client_cert:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context

    def get(self, path: str) -> tuple[int, bytes]:
        """A GET as the kubeconfig's user, e.g. /metrics or the OIDC discovery document."""
        server = urllib.parse.urlsplit(self.url)
        conn = http.client.HTTPSConnection(server.hostname or "", server.port or 443,
                                           context=self.admin_context(), timeout=10)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            conn.request("GET", server.path.rstrip("/") + path, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        """Nothing to stop: the cluster is not ours (conftest deletes what the tests created)."""


_FILE_FIELDS = ("certificate-authority", "client-certificate", "client-key", "tokenFile")


def _current_context(path: Path) -> tuple[str, dict, dict, dict]:
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ExternalClusterError(f"cannot read {path}: {exc}") from None
    name = config.get("current-context") or ""

    def entry(kind: str, wanted: str) -> dict:
        found = [item.get(kind) or {} for item in config.get(f"{kind}s") or [] if item.get("name") == wanted]
        if not found:
            raise ExternalClusterError(f"{path}: no {kind} {wanted!r} (current-context {name!r})")
        return dict(found[0])

    context = entry("context", name)
    cluster, user = entry("cluster", context.get("cluster", "")), entry("user", context.get("user", ""))
    for item in (cluster, user):  # relative paths are relative to the kubeconfig's directory
        for key in _FILE_FIELDS:
            if item.get(key):
                item[key] = str((path.parent / os.path.expanduser(item[key])).resolve())
    return name, context, cluster, user


def _credential_file(item: dict, key: str, target: Path) -> str:
    """`key` as a file: the path as given, or `key-data` decoded into `target`."""
    if item.get(key):
        return item[key]
    if item.get(f"{key}-data"):
        target.write_bytes(base64.b64decode(item[f"{key}-data"]))
        os.chmod(target, 0o600)
        return str(target)
    return ""


def connect_external_cluster(kubeconfig: Path, workdir: Path, host: str, timeout: float = 60) -> ExternalCluster:
    """Read the admin kubeconfig, make the webhooks' certificates for `host`, wait for /readyz
    and read the issuer from /.well-known/openid-configuration."""
    started = time.monotonic()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ExternalClusterError(f"E2E_WEBHOOK_HOST={host!r} is not an IP address (the webhooks bind to it "
                                   "and their serving certificate names it as an IP SAN)") from None
    name, context, cluster, user = _current_context(kubeconfig)
    if not str(cluster.get("server", "")).startswith("https://"):
        raise ExternalClusterError(f"{kubeconfig}: cluster server {cluster.get('server')!r} is not https://")
    workdir.mkdir(parents=True, exist_ok=True)
    api_ca = _credential_file(cluster, "certificate-authority", workdir / "cluster-ca.crt")
    if not api_ca:
        raise ExternalClusterError(f"{kubeconfig}: the cluster has no certificate-authority(-data); the "
                                   "webhooks' kubeconfig needs the API server's CA")
    client_cert = _credential_file(user, "client-certificate", workdir / "admin.crt")
    client_key = _credential_file(user, "client-key", workdir / "admin.key")
    token = user.get("token") or ""
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    if not (client_cert and client_key) and not token:
        raise ExternalClusterError(f"{kubeconfig}: user {context.get('user')!r} has neither a client certificate "
                                   "nor a bearer token (exec and auth-provider plugins are not supported; kind's "
                                   "kubeconfig has a client certificate)")
    copy = {"apiVersion": "v1", "kind": "Config", "current-context": name, "preferences": {},
            "clusters": [{"name": context["cluster"], "cluster": cluster}],
            "users": [{"name": context["user"], "user": user}],
            "contexts": [{"name": name, "context": context}]}
    (workdir / "admin.kubeconfig").write_text(yaml.safe_dump(copy))
    os.chmod(workdir / "admin.kubeconfig", 0o600)
    plane = ExternalCluster(workdir, make_webhook_pki(workdir / "pki", host), workdir / "admin.kubeconfig",
                            cluster["server"].rstrip("/"), api_ca, host, client_cert, client_key, token)

    def ready() -> bool:
        status, body = plane.get("/readyz")
        if status in (401, 403):
            raise ExternalClusterError(f"{plane.url}/readyz: {status} for the kubeconfig's user: {body[:300]!r}")
        return status == 200

    wait_until(ready, timeout, f"{plane.url}/readyz", interval=0.5)
    status, body = plane.get("/.well-known/openid-configuration")
    if status != 200:
        raise ExternalClusterError(f"{plane.url}/.well-known/openid-configuration: {status} {body[:300]!r}")
    document = json.loads(body)
    plane.issuer, plane.jwks_uri = document["issuer"], document.get("jwks_uri", "")
    plane.startup_seconds = time.monotonic() - started
    return plane
