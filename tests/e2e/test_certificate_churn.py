"""Self-managed certificates under churn, on the real API server (docs/reliability.md#certificates,
docs/reference.md#self-managed): three replicas started at the same moment converge on one CA,
and a Secret edited by hand to garbage is repaired, never served.

Everything is in a namespace and a MutatingWebhookConfiguration of this module's own; the
configuration selects no namespace, so the rest of the session never calls these replicas.
"""

from __future__ import annotations

import base64
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from . import api
from .plane import ControlPlane, external_kubeconfig, wait_until
from .test_api_server_faults import Rest
from .webhooks import spawn_serve
from serving import Server

pytestmark = pytest.mark.skipif(bool(external_kubeconfig()), reason="runs the replicas as local processes")

NAMESPACE = "certs-churn"
SECRET = "churn-tls"
CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
CONFIGURATION = "certs-churn"
REPLICAS = 3


def secret_data(rest: Rest) -> dict[str, bytes] | None:
    status, body = rest.call("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}")
    if status == 404:
        return None
    assert status == 200, body
    return {key: base64.b64decode(value) for key, value in (body.get("data") or {}).items()}


def served_certificate(server: Server) -> x509.Certificate:
    """The certificate a replica presents (not verified here: the caller checks it)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((server.host, server.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=server.host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def signed_by(cert: x509.Certificate, ca_pem: bytes) -> bool:
    for ca in x509.load_pem_x509_certificates(ca_pem):
        try:
            cert.verify_directly_issued_by(ca)
            return True
        except Exception:  # ValueError, TypeError or InvalidSignature: not this CA
            continue
    return False


def registered_bundle(rest: Rest) -> bytes:
    status, body = rest.call("GET", f"{CONFIGURATIONS}/{CONFIGURATION}")
    assert status == 200, body
    return base64.b64decode(body["webhooks"][0]["clientConfig"].get("caBundle") or "")


@pytest.fixture(scope="module")
def replicas(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    rest = Rest(control_plane)
    status, body = rest.call("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
    assert status == 201, body
    configuration = api.webhook_configuration(CONFIGURATION, "certs-churn.e2e.pod-identity-injector.test",
                                              "https://127.0.0.1:1/mutate", control_plane.pki.ca_file,
                                              {"e2e-webhook": "certs-churn-selects-nothing"})
    status, body = rest.call("POST", CONFIGURATIONS,
                             configuration)
    assert status == 201, body
    workdir = tmp_path_factory.mktemp("certs-churn")
    procs = []
    try:
        for index in range(REPLICAS):  # all at once: none waits for another
            proc, server = spawn_serve(control_plane, workdir, f"churn-{index}", control_plane.kubeconfig,
                                       "--cert-mode=self-managed", f"--namespace={NAMESPACE}",
                                       f"--tls-secret={SECRET}", f"--webhook-configuration={CONFIGURATION}",
                                       "--service-name=churn", "--cert-san=127.0.0.1", "--cert-check-interval=1s",
                                       f"--cert-dir={workdir / f'certs-{index}'}")
            procs.append((proc, server))
        yield [server for _, server in procs]
    finally:
        for proc, _ in procs:
            proc.stop()
        rest.call("DELETE", f"{CONFIGURATIONS}/{CONFIGURATION}")
        rest.call("DELETE", f"/api/v1/namespaces/{NAMESPACE}")


def _ready(server: Server, ca_file: Path) -> bool:
    server.ca_file = ca_file
    try:
        return server.request("GET", "/readyz")[0] == 200
    except (OSError, ssl.SSLError):
        return False


def test_three_replicas_started_together_converge_on_one_ca(control_plane, replicas, tmp_path):
    rest = Rest(control_plane)
    wait_until(lambda: secret_data(rest) is not None, 30, "the Secret written by a replica")
    ca_file = tmp_path / "ca.crt"

    def all_ready() -> bool:
        data = secret_data(rest)
        assert data is not None
        ca_file.write_bytes(data["ca.crt"])
        return all(_ready(server, ca_file) for server in replicas)

    wait_until(all_ready, 60, "every replica ready and trusted by the Secret's CA")
    data = secret_data(rest)
    assert data is not None
    assert len(x509.load_pem_x509_certificates(data["ca.crt"])) == 1, "more than one CA was issued"
    # The caBundle carries that CA first; what was registered before (the placeholder this module
    # created the configuration with) stays for the overlap period, and nothing else.
    registered = x509.load_pem_x509_certificates(registered_bundle(rest))
    ours = x509.load_pem_x509_certificate(data["ca.crt"])
    placeholder = x509.load_pem_x509_certificate(Path(control_plane.pki.ca_file).read_bytes())
    assert registered[0] == ours and set(registered[1:]) <= {placeholder}
    served = {served_certificate(server).serial_number for server in replicas}
    assert served == {x509.load_pem_x509_certificate(data["tls.crt"]).serial_number}, "replicas serve different pairs"


def test_a_secret_edited_to_garbage_is_repaired_and_never_served(control_plane, replicas, tmp_path):
    rest = Rest(control_plane)
    before = secret_data(rest)
    assert before is not None
    garbage = {key: base64.b64encode(b"garbage, edited by hand\n").decode() for key in before}
    status, body = rest.call("PATCH", f"/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}", {"data": garbage})
    assert status == 200, body

    seen: set[int] = set()
    deadline = time.monotonic() + 20
    repaired = None
    while time.monotonic() < deadline:
        # Every handshake meanwhile presents a real certificate from the old CA or the new one.
        for server in replicas:
            cert = served_certificate(server)
            seen.add(cert.serial_number)
        data = secret_data(rest)
        if data and data["ca.crt"].startswith(b"-----BEGIN CERTIFICATE-----"):
            new_cert = x509.load_pem_x509_certificate(data["tls.crt"])
            if all(served_certificate(server).serial_number == new_cert.serial_number for server in replicas):
                repaired = data
                break
        time.sleep(0.2)
    assert repaired is not None, "the Secret was not repaired, or the replicas did not take the repaired pair"
    old_serial = x509.load_pem_x509_certificate(before["tls.crt"]).serial_number
    new_serial = x509.load_pem_x509_certificate(repaired["tls.crt"]).serial_number
    assert seen <= {old_serial, new_serial}, "a replica served something else meanwhile"
    assert signed_by(x509.load_pem_x509_certificate(repaired["tls.crt"]), repaired["ca.crt"])
    assert repaired["ca.crt"].split(b"-----END CERTIFICATE-----")[0] in registered_bundle(rest)
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(repaired["ca.crt"])
    assert all(_ready(server, ca_file) for server in replicas)
