"""TLS flags and certificate hot reload (docs/reference.md#tls and
docs/reference.md#certificate-reload), over real TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
from cryptography import x509

from injector.certificates import authority as certs
from injector.server import tls

# --- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ca_a():
    return certs.generate_ca("test-ca-a")


@pytest.fixture(scope="module")
def ca_b():
    return certs.generate_ca("test-ca-b")


@pytest.fixture(scope="module")
def key_1():
    return certs.generate_private_key()


@pytest.fixture(scope="module")
def key_2():
    return certs.generate_private_key()


def issue(ca, key, days=30) -> x509.Certificate:
    return certs.generate_serving_cert(ca[0], ca[1], ["localhost"], ["127.0.0.1"], days, key=key)[0]


def write_pair(directory: Path, cert: x509.Certificate | None, key=None) -> None:
    """Replace tls.crt and/or tls.key the way a careful writer does (atomic renames)."""
    if key is not None:
        certs.write_atomic(directory / "tls.key", certs.key_to_pem(key), 0o600)
    if cert is not None:
        certs.write_atomic(directory / "tls.crt", certs.cert_to_pem(cert), 0o644)


def reloader_for(directory: Path, **kwargs) -> tls.CertificateReloader:
    return tls.CertificateReloader(directory / "tls.crt", directory / "tls.key", **kwargs)


@pytest.fixture
def client_context(ca_a, ca_b) -> ssl.SSLContext:
    """A client that trusts both test CAs and verifies the host name, like the API server."""
    cadata = (certs.cert_to_pem(ca_a[0]) + certs.cert_to_pem(ca_b[0])).decode()
    context = ssl.create_default_context(cadata=cadata)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


@dataclass(frozen=True)
class Peer:
    serial: int
    alpn: str | None
    version: str | None
    cipher: str


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def serving(context: ssl.SSLContext):
    """An asyncio TLS server on 127.0.0.1 with the given listener context; yields its port."""
    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=context)
    async with server:
        yield server.sockets[0].getsockname()[1]


@contextlib.asynccontextmanager
async def connection(port: int, context: ssl.SSLContext, server_hostname: str = "localhost"):
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=server_hostname
    )
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


def peer_of(writer: asyncio.StreamWriter) -> Peer:
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True)
    return Peer(
        serial=x509.load_der_x509_certificate(der).serial_number,
        alpn=ssl_object.selected_alpn_protocol(),
        version=ssl_object.version(),
        cipher=ssl_object.cipher()[0],
    )


async def handshake(port: int, context: ssl.SSLContext, server_hostname: str = "localhost") -> Peer:
    """Open a new connection and report what the server presented."""
    async with connection(port, context, server_hostname) as (_, writer):
        return peer_of(writer)


async def refused(port: int, context: ssl.SSLContext) -> bool:
    """The handshake fails (asyncio's server aborts the connection, so the client may see a reset)."""
    try:
        await handshake(port, context)
    except (ssl.SSLError, ConnectionResetError):
        return True
    return False


# --- --tls-min-version ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("", None),
        ("1.0", ssl.TLSVersion.TLSv1),
        ("1.1", ssl.TLSVersion.TLSv1_1),
        ("1.2", ssl.TLSVersion.TLSv1_2),
        ("1.3", ssl.TLSVersion.TLSv1_3),
        ("VersionTLS10", ssl.TLSVersion.TLSv1),
        ("VersionTLS11", ssl.TLSVersion.TLSv1_1),
        ("VersionTLS12", ssl.TLSVersion.TLSv1_2),
        ("VersionTLS13", ssl.TLSVersion.TLSv1_3),
    ],
)
def test_min_version_accepts_exactly_the_go_spellings(text, version):
    assert tls.parse_min_version(text) == version


@pytest.mark.parametrize(
    "text", ["TLS1.2", "1.4", "1", "v1.2", " 1.2", "1.2 ", "versiontls12", "VersionTLS14", "tls13"]
)
def test_min_version_refuses_anything_else_naming_the_flag(text):
    with pytest.raises(ValueError, match="--tls-min-version") as error:
        tls.parse_min_version(text)
    assert repr(text) in str(error.value)
    assert "VersionTLS13" in str(error.value) and "1.2" in str(error.value)


def test_min_version_1_0_does_not_warn_about_deprecation(recwarn):
    tls.new_server_context(tls.parse_min_version("1.0"))
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


# --- --tls-cipher-suites ----------------------------------------------------------------


def test_cipher_suites_map_go_names_to_openssl_names_in_order():
    text = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
    assert tls.parse_cipher_suites(text) == ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"]


def test_cipher_suites_are_trimmed_and_empty_items_skipped():
    text = " TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 ,, ,\tTLS_RSA_WITH_AES_128_CBC_SHA,"
    assert tls.parse_cipher_suites(text) == ["ECDHE-RSA-AES128-GCM-SHA256", "AES128-SHA"]


def test_no_cipher_suites_means_the_defaults():
    assert tls.parse_cipher_suites("") == []
    assert tls.parse_cipher_suites(" , ") == []


def test_chacha20_has_both_go_spellings():
    openssl_name = ["ECDHE-RSA-CHACHA20-POLY1305"]
    assert tls.parse_cipher_suites("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256") == openssl_name
    assert tls.parse_cipher_suites("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305") == openssl_name
    both = "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305,TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
    assert tls.parse_cipher_suites(both) == ["ECDHE-ECDSA-CHACHA20-POLY1305"]


def test_tls_1_3_suites_are_accepted_but_not_configured():
    text = "TLS_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_AES_256_GCM_SHA384"
    assert tls.parse_cipher_suites(text) == ["ECDHE-RSA-AES128-GCM-SHA256"]
    assert tls.parse_cipher_suites("TLS_CHACHA20_POLY1305_SHA256") == []


def test_insecure_go_suites_are_known_names():
    text = "TLS_RSA_WITH_RC4_128_SHA,TLS_RSA_WITH_3DES_EDE_CBC_SHA,TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256"
    assert tls.parse_cipher_suites(text) == ["RC4-SHA", "DES-CBC3-SHA", "ECDHE-RSA-AES128-SHA256"]


@pytest.mark.parametrize(
    "name",
    [
        "TLS_FOO",
        "tls_ecdhe_rsa_with_aes_128_gcm_sha256",  # Go's lookup is case-sensitive
        "ECDHE-RSA-AES128-GCM-SHA256",  # an OpenSSL name is not a Go name
        "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",  # not implemented by Go
    ],
)
def test_unknown_cipher_suites_are_refused_naming_the_flag_and_the_name(name):
    with pytest.raises(ValueError, match="--tls-cipher-suites") as error:
        tls.parse_cipher_suites(f"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,{name}")
    assert repr(name) in str(error.value)


def test_every_go_name_is_known_to_openssl_or_refused_clearly():
    modern = [name for name in tls.GO_TO_OPENSSL_CIPHERS if "GCM" in name or "CHACHA20" in name]
    for name in tls.GO_TO_OPENSSL_CIPHERS:
        ciphers = tls.parse_cipher_suites(name)
        try:
            context = tls.new_server_context(None, ciphers)
        except ValueError as error:
            assert name not in modern
            assert "--tls-cipher-suites" in str(error) and name in str(error)
        else:
            assert {c["name"] for c in context.get_ciphers()} >= set(ciphers)


def test_a_list_openssl_cannot_use_at_all_is_an_error_naming_the_go_suites():
    ciphers = tls.parse_cipher_suites("TLS_RSA_WITH_RC4_128_SHA,TLS_ECDHE_RSA_WITH_RC4_128_SHA")
    with pytest.raises(ValueError, match=r"--tls-cipher-suites.*TLS_RSA_WITH_RC4_128_SHA"):
        tls.new_server_context(None, ciphers)
    with pytest.raises(ValueError, match="--tls-cipher-suites"):
        tls.CertificateReloader("/unused/tls.crt", "/unused/tls.key", ciphers=ciphers)


def test_suites_openssl_lacks_are_reported_when_others_remain():
    ciphers = tls.parse_cipher_suites("TLS_RSA_WITH_RC4_128_SHA,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")
    assert tls.unavailable_ciphers(ciphers) == ["RC4-SHA"]
    with structlog.testing.capture_logs() as logs:
        tls.CertificateReloader("/unused/tls.crt", "/unused/tls.key", ciphers=ciphers)
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry["ciphers"] for entry in warnings] == [["TLS_RSA_WITH_RC4_128_SHA"]]


# --- loading ----------------------------------------------------------------------------


@pytest.fixture
def cert_dir(tmp_path, ca_a, key_1):
    """A directory holding a valid pair issued by CA A."""
    cert = issue(ca_a, key_1)
    write_pair(tmp_path, cert, key_1)
    return tmp_path


def test_a_loaded_pair_reports_its_expiry_and_serial(cert_dir):
    reloader = reloader_for(cert_dir)
    assert not reloader.loaded and reloader.not_after is None
    with structlog.testing.capture_logs() as logs:
        reloader.load()
    assert reloader.loaded
    served = certs.read_certificate(cert_dir / "tls.crt")
    assert reloader.not_after == served.not_valid_after_utc
    assert [line["serial"] for line in logs if line["event"] == "serving certificate loaded"] == [
        format(served.serial_number, "x")]
    assert reloader.last_error is None


def test_starting_without_a_certificate_is_an_error(tmp_path):
    reloader = reloader_for(tmp_path)
    with pytest.raises(tls.CertificateLoadError, match=r"tls\.crt"):
        reloader.server_context()
    assert not reloader.loaded


def test_starting_with_a_mismatched_pair_is_an_error(tmp_path, ca_a, key_1, key_2):
    write_pair(tmp_path, issue(ca_a, key_1), key_2)
    with pytest.raises(tls.CertificateLoadError, match="KEY_VALUES_MISMATCH"):
        reloader_for(tmp_path).load()


def test_starting_with_an_encrypted_key_is_an_error_not_a_password_prompt(tmp_path, ca_a, key_1):
    from cryptography.hazmat.primitives import serialization

    write_pair(tmp_path, issue(ca_a, key_1))
    encrypted = key_1.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "tls.key").write_bytes(encrypted)
    with pytest.raises(tls.CertificateLoadError, match="encrypted"):
        reloader_for(tmp_path).load()


def test_nothing_changed_means_no_reload(cert_dir):
    reloader = reloader_for(cert_dir)
    reloader.load()
    with structlog.testing.capture_logs() as logs:
        assert reloader.reload_if_changed() is False
        assert reloader.reload_if_changed() is False
    assert logs == []


def test_a_bad_pair_is_logged_once_and_not_retried_until_it_changes(cert_dir, ca_a, key_2):
    reloader = reloader_for(cert_dir)
    reloader.load()
    write_pair(cert_dir, issue(ca_a, key_2))  # the certificate is new, the key is not (yet)
    with structlog.testing.capture_logs() as logs:
        assert reloader.reload_if_changed() is False
        assert reloader.reload_if_changed() is False
    assert [entry["log_level"] for entry in logs] == ["error"]
    assert "KEY_VALUES_MISMATCH" in logs[0]["reason"]
    assert "KEY_VALUES_MISMATCH" in reloader.last_error
    write_pair(cert_dir, None, key_2)  # the key catches up
    assert reloader.reload_if_changed() is True
    assert reloader.last_error is None


# --- real TLS: rotation -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_new_connections_get_a_certificate_from_a_new_ca_while_old_ones_keep_going(
    cert_dir, ca_a, ca_b, key_2, client_context
):
    reloader = reloader_for(cert_dir)
    first_serial = certs.read_certificate(cert_dir / "tls.crt").serial_number
    async with (
        serving(reloader.server_context()) as port,
        connection(port, client_context) as (old_reader, old_writer),
    ):
        assert peer_of(old_writer).serial == first_serial

        rotated = issue(ca_b, key_2)
        write_pair(cert_dir, rotated, key_2)
        assert reloader.reload_if_changed() is True

        assert (await handshake(port, client_context)).serial == rotated.serial_number
        old_writer.write(b"still here\n")
        assert await old_reader.readline() == b"still here\n"
        assert peer_of(old_writer).serial == first_serial
    assert reloader.not_after == rotated.not_valid_after_utc


@pytest.mark.asyncio
async def test_clients_that_send_no_server_name_also_get_the_new_certificate(
    cert_dir, ca_b, key_2, client_context
):
    reloader = reloader_for(cert_dir)
    listener = reloader.server_context()
    server_names = []
    select_context = listener.sni_callback

    def recording_callback(ssl_object, server_name, context):
        server_names.append(server_name)
        return select_context(ssl_object, server_name, context)

    listener.sni_callback = recording_callback
    async with serving(listener) as port:
        rotated = issue(ca_b, key_2)
        write_pair(cert_dir, rotated, key_2)
        assert reloader.reload_if_changed() is True
        # Dialling an IP address (a webhook `url: https://10.0.0.1/...`) sends no SNI.
        peer = await handshake(port, client_context, server_hostname="127.0.0.1")
    assert server_names == [None]
    assert peer.serial == rotated.serial_number


@pytest.mark.asyncio
async def test_a_renewal_with_the_same_key_and_ca_is_served(cert_dir, ca_a, key_1, client_context):
    reloader = reloader_for(cert_dir)
    async with serving(reloader.server_context()) as port:
        renewed = issue(ca_a, key_1, days=60)
        write_pair(cert_dir, renewed)
        assert reloader.reload_if_changed() is True
        assert (await handshake(port, client_context)).serial == renewed.serial_number


@pytest.mark.asyncio
async def test_a_mismatched_pair_keeps_the_old_certificate(cert_dir, ca_b, key_2, client_context):
    reloader = reloader_for(cert_dir)
    first_serial = certs.read_certificate(cert_dir / "tls.crt").serial_number
    async with serving(reloader.server_context()) as port:
        not_after = reloader.not_after
        write_pair(cert_dir, issue(ca_b, key_2))  # new certificate, old key
        assert reloader.reload_if_changed() is False
        assert (await handshake(port, client_context)).serial == first_serial
        assert reloader.loaded and reloader.not_after == not_after


@pytest.mark.asyncio
async def test_a_half_written_certificate_keeps_the_old_certificate(cert_dir, ca_b, key_1, client_context):
    reloader = reloader_for(cert_dir)
    first_serial = certs.read_certificate(cert_dir / "tls.crt").serial_number
    async with serving(reloader.server_context()) as port:
        pem = certs.cert_to_pem(issue(ca_b, key_1))
        (cert_dir / "tls.crt").write_bytes(pem[: len(pem) // 2])  # a writer caught mid-way
        assert reloader.reload_if_changed() is False
        assert "tls.crt" in reloader.last_error
        assert (await handshake(port, client_context)).serial == first_serial
        (cert_dir / "tls.crt").write_bytes(pem)  # ... and done
        assert reloader.reload_if_changed() is True
        assert (await handshake(port, client_context)).serial != first_serial


def kubernetes_secret_volume(root: Path, cert: x509.Certificate, key) -> None:
    """The layout kubelet gives a Secret volume: files in a timestamped dir behind `..data`."""
    version = root / "..2026_01_01_00_00_00.000000001"
    version.mkdir()
    write_pair(version, cert, key)
    os.symlink(version.name, root / "..data")
    os.symlink("..data/tls.crt", root / "tls.crt")
    os.symlink("..data/tls.key", root / "tls.key")


def kubelet_update(root: Path, cert: x509.Certificate, key) -> None:
    """What kubelet does on a Secret change: new dir, then an atomic swap of `..data`."""
    old = (root / "..data").resolve()
    version = root / "..2026_02_01_00_00_00.000000002"
    version.mkdir()
    write_pair(version, cert, key)
    os.symlink(version.name, root / "..data_tmp")
    os.replace(root / "..data_tmp", root / "..data")
    for path in old.iterdir():
        path.unlink()
    old.rmdir()


@pytest.mark.asyncio
async def test_a_kubernetes_secret_volume_update_is_picked_up(
    tmp_path, ca_a, ca_b, key_1, key_2, client_context
):
    first = issue(ca_a, key_1)
    kubernetes_secret_volume(tmp_path, first, key_1)
    reloader = reloader_for(tmp_path)
    async with serving(reloader.server_context()) as port:
        assert (await handshake(port, client_context)).serial == first.serial_number
        assert reloader.reload_if_changed() is False
        second = issue(ca_b, key_2)
        kubelet_update(tmp_path, second, key_2)
        assert reloader.reload_if_changed() is True
        assert (await handshake(port, client_context)).serial == second.serial_number


@pytest.mark.asyncio
async def test_watch_picks_up_rotations_until_cancelled(cert_dir, ca_b, key_2, client_context):
    reloader = reloader_for(cert_dir)
    async with serving(reloader.server_context()) as port:
        watcher = asyncio.create_task(reloader.watch(interval=0.01))
        rotated = issue(ca_b, key_2)
        write_pair(cert_dir, rotated, key_2)
        async with asyncio.timeout(2):
            while (await handshake(port, client_context)).serial != rotated.serial_number:
                await asyncio.sleep(0.01)
        assert (await handshake(port, client_context)).serial == rotated.serial_number
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


# --- real TLS: protocol settings survive the certificate swap ---------------------------


@pytest.mark.asyncio
async def test_alpn_selects_http_1_1_before_and_after_a_rotation(cert_dir, ca_b, key_2, client_context):
    reloader = reloader_for(cert_dir)
    async with serving(reloader.server_context()) as port:
        assert (await handshake(port, client_context)).alpn == "http/1.1"
        write_pair(cert_dir, issue(ca_b, key_2), key_2)
        assert reloader.reload_if_changed() is True
        assert (await handshake(port, client_context)).alpn == "http/1.1"


@pytest.mark.asyncio
async def test_min_version_1_3_refuses_a_tls_1_2_only_client(cert_dir, ca_b, key_2, client_context):
    reloader = reloader_for(cert_dir, min_version=tls.parse_min_version("1.3"))
    old_client = client_context
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    async with serving(reloader.server_context()) as port:
        assert await refused(port, old_client)
        write_pair(cert_dir, issue(ca_b, key_2), key_2)
        assert reloader.reload_if_changed() is True
        assert await refused(port, old_client)
        modern_client = ssl.create_default_context(cadata=certs.cert_to_pem(ca_b[0]).decode())
        assert (await handshake(port, modern_client)).version == "TLSv1.3"


@pytest.mark.asyncio
async def test_the_configured_cipher_suite_is_negotiated_before_and_after_a_rotation(
    cert_dir, ca_b, key_2, client_context
):
    ciphers = tls.parse_cipher_suites("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384")
    reloader = reloader_for(cert_dir, ciphers=ciphers)
    tls12_client = client_context
    tls12_client.maximum_version = ssl.TLSVersion.TLSv1_2
    async with serving(reloader.server_context()) as port:
        assert (await handshake(port, tls12_client)).cipher == "ECDHE-RSA-AES256-GCM-SHA384"
        write_pair(cert_dir, issue(ca_b, key_2), key_2)
        assert reloader.reload_if_changed() is True
        peer = await handshake(port, tls12_client)
        assert peer.cipher == "ECDHE-RSA-AES256-GCM-SHA384" and peer.version == "TLSv1.2"
        tls12_client.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")  # a suite the server does not allow
        assert await refused(port, tls12_client)


def test_the_listener_context_is_created_once(cert_dir, ca_b, key_2):
    reloader = reloader_for(cert_dir)
    listener = reloader.server_context()
    write_pair(cert_dir, issue(ca_b, key_2), key_2)
    assert reloader.reload_if_changed() is True
    assert reloader.server_context() is listener
