"""A private CA and the webhook's serving certificate, for local runs and self-managed clusters.
Issues and reads; when to renew is `renewal`'s call, and it never talks to the API server.

The CA is created once and then reused, so the `caBundle` registered with the API server
keeps working when the serving certificate is re-issued. Files are replaced atomically
(temporary file + `os.replace`), so the TLS reloader never reads a half-written file; keys
are written with mode 0600.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from injector.certificates.renewal import CLOCK_SKEW, ca_due, renewal_window, serving_cert_problem

log = structlog.get_logger(__name__)

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
SERVING_CERT_FILE = "tls.crt"
SERVING_KEY_FILE = "tls.key"

DEFAULT_CA_COMMON_NAME = "pod-identity-injector-ca"
DEFAULT_CA_DAYS = 3650
DEFAULT_SERVING_DAYS = 365
DEFAULT_KEY_SIZE = 2048
DEFAULT_RENEW_BEFORE_DAYS = 30
# Certificates start a little in the past so a peer whose clock is behind accepts them.
# X.509 upper bound for a commonName (RFC 5280 ub-common-name).
MAX_COMMON_NAME_LENGTH = 64

BUNDLE_FILES = (CA_CERT_FILE, CA_KEY_FILE, SERVING_CERT_FILE, SERVING_KEY_FILE)
KEY_FILE_MODE = 0o600
CERT_FILE_MODE = 0o644

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_DNS_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DNS_NAME = re.compile(rf"(?:\*\.)?{_DNS_LABEL}(?:\.{_DNS_LABEL})*\Z")


def service_names(service: str, namespace: str) -> list[str]:
    """The DNS names the API server may use to reach a Service in the cluster."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local"]


class CertificateFileError(ValueError):
    """A certificate or key file exists but cannot be used; the message names the file."""


# --- generation -------------------------------------------------------------------------


def generate_private_key(key_size: int = DEFAULT_KEY_SIZE) -> rsa.RSAPrivateKey:
    """An RSA key: what every Kubernetes API server and client accepts."""
    if key_size < 2048:
        raise ValueError(f"key size {key_size} is too small; use at least 2048 bits")
    return rsa.generate_private_key(public_exponent=65537, key_size=key_size)


def generate_ca(
    common_name: str = DEFAULT_CA_COMMON_NAME,
    days: int = DEFAULT_CA_DAYS,
    key_size: int = DEFAULT_KEY_SIZE,
    *,
    key: rsa.RSAPrivateKey | None = None,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A self-signed CA that can sign serving certificates (and nothing below them)."""
    _check_days(days)
    _check_common_name(common_name)
    key = key or generate_private_key(key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def generate_serving_cert(
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    days: int = DEFAULT_SERVING_DAYS,
    common_name: str | None = None,
    *,
    key: rsa.RSAPrivateKey | None = None,
    key_size: int = DEFAULT_KEY_SIZE,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A TLS server certificate for the given names, signed by the CA.

    `key` re-uses an existing key (a renewal that keeps the key); by default a new one is
    generated. The certificate never outlives its CA.
    """
    _check_days(days)
    dns = _checked_dns_names(dns_names)
    ips = _checked_ip_addresses(ip_addresses)
    if not dns and not ips:
        raise ValueError("a serving certificate needs at least one DNS name or IP address")
    if common_name is None:
        common_name = _default_common_name(dns, ips)
    else:
        _check_common_name(common_name)
    key = key or generate_private_key(key_size)
    not_before, not_after = _validity(days)
    not_after = min(not_after, ca_cert.not_valid_after_utc)
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
    sans += [x509.IPAddress(ip) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_identifier(ca_cert), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _validity(days: int) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now - CLOCK_SKEW, now + timedelta(days=days)


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"certificate validity must be at least 1 day, got {days!r}")


def _check_common_name(common_name: str) -> None:
    if not common_name or len(common_name) > MAX_COMMON_NAME_LENGTH:
        raise ValueError(
            f"common name {common_name!r} must be 1 to {MAX_COMMON_NAME_LENGTH} characters long"
        )


def _checked_dns_names(names: Iterable[str]) -> list[str]:
    """The names, de-duplicated in order; a malformed one is an error, not silently dropped."""
    if isinstance(names, str):
        raise ValueError(f"DNS names must be a list, not the string {names!r}")
    checked: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name.isascii() or not _DNS_NAME.match(name):
            raise ValueError(f"invalid DNS name {name!r} for the serving certificate")
        if name not in checked:
            checked.append(name)
    return checked


def _checked_ip_addresses(texts: Iterable[str]) -> list[IPAddress]:
    if isinstance(texts, str):
        raise ValueError(f"IP addresses must be a list, not the string {texts!r}")
    checked: list[IPAddress] = []
    for text in texts:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise ValueError(f"invalid IP address {text!r} for the serving certificate") from None
        if ip not in checked:
            checked.append(ip)
    return checked


def _default_common_name(dns: Sequence[str], ips: Sequence[IPAddress]) -> str:
    # Clients check the SANs, not the CN; the CN is only for people reading the certificate.
    for candidate in [*dns, *(str(ip) for ip in ips)]:
        if len(candidate) <= MAX_COMMON_NAME_LENGTH:
            return candidate
    return "pod-identity-injector"


def _key_usage(**usages: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
        ),
        False,
    )
    flags.update(usages)
    return x509.KeyUsage(**flags, encipher_only=False, decipher_only=False)


def _authority_key_identifier(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


# --- PEM ----------------------------------------------------------------------------------


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_to_pem(key: rsa.RSAPrivateKey) -> bytes:
    """Unencrypted PKCS#8, which Go, OpenSSL and Python's ssl module all read."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_from_pem(data: bytes) -> x509.Certificate:
    """The first certificate in PEM data (the leaf, when the file holds a chain)."""
    return x509.load_pem_x509_certificate(data)


def key_from_pem(data: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"expected an RSA private key, got {type(key).__name__}")
    return key


def read_certificate(path: str | Path) -> x509.Certificate:
    try:
        return cert_from_pem(Path(path).read_bytes())
    except ValueError as exc:
        raise CertificateFileError(f"{path}: not a PEM certificate ({exc})") from None


def read_private_key(path: str | Path) -> rsa.RSAPrivateKey:
    try:
        return key_from_pem(Path(path).read_bytes())
    except (ValueError, TypeError) as exc:
        raise CertificateFileError(f"{path}: not an unencrypted PEM RSA private key ({exc})") from None


def read_public_key_of_private_key(path: str | Path) -> PublicKeyTypes:
    """The public half of a private key file, to compare with a certificate.

    Skips OpenSSL's (slow) private-key consistency check: the key is not used to sign here.
    """
    try:
        key = serialization.load_pem_private_key(
            Path(path).read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError) as exc:
        raise CertificateFileError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    return key.public_key()


# --- files --------------------------------------------------------------------------------


def write_atomic(path: str | Path, data: bytes, mode: int) -> Path:
    """Replace `path` in one step: readers see the old content or the new, never a mix."""
    path = Path(path)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def write_bundle(
    directory: str | Path,
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    cert: x509.Certificate,
    key: rsa.RSAPrivateKey,
) -> dict[str, Path]:
    """Write ca.crt, ca.key, tls.crt and tls.key into `directory` (created if needed).

    The CA goes first, so anything reacting to the new serving certificate already finds
    its issuer; the serving key goes before its certificate.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    contents = (
        (CA_CERT_FILE, cert_to_pem(ca_cert), CERT_FILE_MODE),
        (CA_KEY_FILE, key_to_pem(ca_key), KEY_FILE_MODE),
        (SERVING_KEY_FILE, key_to_pem(key), KEY_FILE_MODE),
        (SERVING_CERT_FILE, cert_to_pem(cert), CERT_FILE_MODE),
    )
    return {name: write_atomic(directory / name, data, mode) for name, data, mode in contents}


# --- ensure -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnsureResult:
    """What `ensure_certs` found and did; `reason` says why the serving cert was (re)issued."""

    paths: dict[str, Path]
    ca_created: bool
    issued: bool
    reason: str
    not_after: datetime


def ensure_certs(
    directory: str | Path,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    days: int = DEFAULT_SERVING_DAYS,
    force: bool = False,
    renew_before_days: int = DEFAULT_RENEW_BEFORE_DAYS,
) -> EnsureResult:
    """Make `directory` hold a CA and a valid serving certificate for exactly these names.

    An existing CA is kept (trust set up once survives) unless it expires within
    `renew_before_days`; unreadable or inconsistent CA files are an error rather than being
    overwritten. The serving certificate is (re)issued when missing, unreadable, not issued by
    the CA, not matching its key, expiring within the renewal window, for other names, or
    when `force` is set. The renewal policy is `renewal`'s.
    """
    _check_days(days)
    if renew_before_days < 0:
        raise ValueError(f"renew_before_days must not be negative, got {renew_before_days}")
    wanted_dns = _checked_dns_names(dns_names)
    wanted_ips = _checked_ip_addresses(ip_addresses)
    if not wanted_dns and not wanted_ips:
        raise ValueError("a serving certificate needs at least one DNS name or IP address")
    directory = Path(directory)
    paths = {name: directory / name for name in BUNDLE_FILES}
    now = datetime.now(UTC)

    ca_cert = _existing_ca_cert(paths[CA_CERT_FILE], paths[CA_KEY_FILE])
    ca_key: rsa.RSAPrivateKey | None = None
    if ca_cert is not None and ca_due(ca_cert, now, timedelta(days=renew_before_days)):
        log.warning("CA certificate expires soon; creating a new CA (the caBundle must be updated)",
                    path=str(paths[CA_CERT_FILE]), not_after=ca_cert.not_valid_after_utc.isoformat())
        ca_cert = None
    ca_created = ca_cert is None
    if ca_cert is None:
        ca_cert, ca_key = generate_ca()

    renew_window = renewal_window(timedelta(days=days), timedelta(days=renew_before_days))
    reason = _serving_cert_problem(paths, ca_cert, wanted_dns, wanted_ips, now, renew_window)
    if reason is None and force:
        reason = "forced"
    if reason is None:
        serving_not_after = read_certificate(paths[SERVING_CERT_FILE]).not_valid_after_utc
        return EnsureResult(paths, False, False, "valid", serving_not_after)

    if ca_key is None:
        ca_key = read_private_key(paths[CA_KEY_FILE])  # fully validated, since it signs
    cert, key = generate_serving_cert(ca_cert, ca_key, wanted_dns, [str(ip) for ip in wanted_ips], days)
    if ca_created:
        write_bundle(directory, ca_cert, ca_key, cert, key)
    else:  # the CA files stay byte-for-byte as they were
        write_atomic(paths[SERVING_KEY_FILE], key_to_pem(key), KEY_FILE_MODE)
        write_atomic(paths[SERVING_CERT_FILE], cert_to_pem(cert), CERT_FILE_MODE)
    log.info("serving certificate issued", directory=str(directory), reason=reason, ca_created=ca_created,
             dns_names=wanted_dns, ip_addresses=[str(ip) for ip in wanted_ips],
             not_after=cert.not_valid_after_utc.isoformat())
    return EnsureResult(paths, ca_created, True, reason, cert.not_valid_after_utc)


def _existing_ca_cert(cert_path: Path, key_path: Path) -> x509.Certificate | None:
    """The CA certificate in the directory, once checked against its key file; None if absent."""
    has_cert, has_key = cert_path.exists(), key_path.exists()
    if not has_cert and not has_key:
        return None
    if not (has_cert and has_key):
        present, missing = (cert_path, key_path) if has_cert else (key_path, cert_path)
        raise CertificateFileError(f"{present} exists but {missing} does not; restore it or remove both")
    cert = read_certificate(cert_path)
    if cert.public_key() != read_public_key_of_private_key(key_path):
        raise CertificateFileError(f"{key_path} is not the private key of {cert_path}")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CertificateFileError(f"{cert_path} is not a CA certificate")
    return cert


def _serving_cert_problem(
    paths: dict[str, Path],
    ca_cert: x509.Certificate,
    wanted_dns: list[str],
    wanted_ips: list[IPAddress],
    now: datetime,
    renew_window: timedelta,
) -> str | None:
    """Why the serving certificate on disk must be replaced, or None if it is fine."""
    cert_path, key_path = paths[SERVING_CERT_FILE], paths[SERVING_KEY_FILE]
    if not cert_path.exists() or not key_path.exists():
        return "missing"
    try:
        cert, public_key = read_certificate(cert_path), read_public_key_of_private_key(key_path)
    except CertificateFileError as exc:
        return f"unreadable: {exc}"
    return serving_cert_problem(cert, public_key, ca_cert, wanted_dns, wanted_ips, now, renew_window)
