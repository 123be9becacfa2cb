"""The webhook's TLS: Go-compatible `--tls-min-version`/`--tls-cipher-suites`, and a serving
certificate that is reloaded from disk without restarting the listener.
It issues no certificate (`certificates` does); it only loads and serves them.

The listener gets one `ssl.SSLContext` for its whole life. Its `sni_callback` (which OpenSSL
runs on every handshake, with or without SNI) points the connection at the most recently
*successfully* loaded context, so cert-manager or Secret-volume rotations take effect for new
connections, and a half-written or mismatched pair never replaces a working one. Like the Go
webhook (controller-runtime certwatcher), a failed start-up load is fatal; later failures are
logged and the previous certificate keeps serving.
"""

from __future__ import annotations

import asyncio
import ssl
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from injector.certificates.authority import cert_from_pem
from injector.sources.file_signature import file_signature

log = structlog.get_logger(__name__)

ALPN_PROTOCOLS = ["http/1.1"]  # the API server offers h2 and http/1.1; aiohttp speaks only HTTP/1.1

# Exactly the spellings the Go webhook accepts.
TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
    "VersionTLS10": ssl.TLSVersion.TLSv1,
    "VersionTLS11": ssl.TLSVersion.TLSv1_1,
    "VersionTLS12": ssl.TLSVersion.TLSv1_2,
    "VersionTLS13": ssl.TLSVersion.TLSv1_3,
}

# Go's crypto/tls CipherSuites() + InsecureCipherSuites() for TLS 1.0-1.2 (plus the
# `_POLY1305` constant aliases), by their IANA names, to OpenSSL's names.
GO_TO_OPENSSL_CIPHERS: dict[str, str] = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_RSA_WITH_RC4_128_SHA": "RC4-SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA": "ECDHE-RSA-RC4-SHA",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA": "ECDHE-ECDSA-RC4-SHA",
}

# Accepted but not configurable (Go ignores them in Config.CipherSuites too).
TLS13_CIPHER_SUITES = frozenset(
    {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
)

# At start-up, how often to re-read files that keep changing under us before giving up.
_LOAD_ATTEMPTS = 3

PairSignature = tuple[tuple[int, int, int], tuple[int, int, int]]


class CertificateLoadError(Exception):
    """The serving certificate/key pair could not be loaded; the message names the files."""


class _FilesChanging(CertificateLoadError):
    """The files changed while they were being read; try again on the next poll."""


def parse_min_version(text: str) -> ssl.TLSVersion | None:
    """`--tls-min-version`; None (empty) keeps Python's default, TLS 1.2.

    1.0 and 1.1 are accepted for compatibility, but OpenSSL 3's default security level may
    still refuse those protocols; the API server always speaks TLS 1.2 or 1.3.
    """
    if text == "":
        return None
    try:
        return TLS_VERSIONS[text]
    except KeyError:
        accepted = ", ".join(TLS_VERSIONS)
        raise ValueError(f"--tls-min-version {text!r} is not one of: {accepted}") from None


def parse_cipher_suites(text: str) -> list[str]:
    """`--tls-cipher-suites` as OpenSSL cipher names, in order, without duplicates.

    An empty result (no flag, or only TLS 1.3 names) means OpenSSL's defaults. Note: in Go a
    list holding only TLS 1.3 names leaves TLS 1.2 without suites; here TLS 1.2 keeps its
    defaults.
    """
    ciphers: list[str] = []
    for item in text.split(","):
        name = item.strip()
        if not name or name in TLS13_CIPHER_SUITES:
            continue
        openssl_name = GO_TO_OPENSSL_CIPHERS.get(name)
        if openssl_name is None:
            raise ValueError(
                f"--tls-cipher-suites: unknown cipher suite {name!r}; use Go/IANA names such as "
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            )
        if openssl_name not in ciphers:
            ciphers.append(openssl_name)
    return ciphers


def new_server_context(
    min_version: ssl.TLSVersion | None = None, ciphers: Sequence[str] = ()
) -> ssl.SSLContext:
    """A server context with our protocol settings and no certificate yet.

    Raises ValueError when OpenSSL can use none of `ciphers` (RC4 and 3DES, for instance,
    are not built into OpenSSL 3's default provider).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if min_version is not None:
        with warnings.catch_warnings():
            # Python deprecates TLS 1.0/1.1; the flag still accepts them, as in Go.
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = min_version
    if ciphers:
        try:
            context.set_ciphers(":".join(ciphers))
        except ssl.SSLError:
            raise ValueError(
                "--tls-cipher-suites: this OpenSSL supports none of the requested TLS 1.2 cipher "
                f"suites ({', '.join(_go_names(ciphers))})"
            ) from None
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    return context


def unavailable_ciphers(ciphers: Sequence[str]) -> list[str]:
    """The requested OpenSSL cipher names this OpenSSL build silently leaves out."""
    if not ciphers:
        return []
    enabled = {cipher["name"] for cipher in new_server_context(None, ciphers).get_ciphers()}
    return [name for name in ciphers if name not in enabled]


def _go_names(openssl_names: Sequence[str]) -> list[str]:
    go_names: dict[str, str] = {}
    for go_name, openssl_name in GO_TO_OPENSSL_CIPHERS.items():
        go_names.setdefault(openssl_name, go_name)
    return [go_names.get(name, name) for name in openssl_names]


@dataclass(frozen=True, slots=True)
class LoadedCertificate:
    """One successfully loaded pair: the context serving it and what we report about it."""

    context: ssl.SSLContext
    not_after: datetime
    serial_number: int
    signature: PairSignature


class CertificateReloader:
    """Serves the newest valid certificate/key pair found at two paths."""

    def __init__(
        self,
        cert_path: str | Path,
        key_path: str | Path,
        min_version: ssl.TLSVersion | None = None,
        ciphers: Sequence[str] = (),
    ) -> None:
        self.cert_path = str(cert_path)
        self.key_path = str(key_path)
        self.min_version = min_version
        self.ciphers = tuple(ciphers)
        self.last_error: str | None = None
        self._current: LoadedCertificate | None = None
        self._listener_context: ssl.SSLContext | None = None
        # The file state last tried, loaded or not: a bad pair is not retried until it changes.
        self._attempted: PairSignature | None = None
        missing = unavailable_ciphers(self.ciphers)  # raises ValueError when none is usable
        if missing:
            log.warning("cipher suites unavailable in this OpenSSL are ignored", ciphers=_go_names(missing))

    @property
    def loaded(self) -> bool:
        return self._current is not None

    @property
    def not_after(self) -> datetime | None:
        """Expiry of the certificate being served, for readiness and the expiry gauge."""
        return self._current.not_after if self._current else None

    def load(self) -> None:
        """Load the pair now, raising `CertificateLoadError` if it is unusable (start-up)."""
        self._attempted = None
        for attempt in range(1, _LOAD_ATTEMPTS + 1):
            try:
                loaded = self._load_pair()
            except _FilesChanging:
                if attempt == _LOAD_ATTEMPTS:
                    raise
                continue  # caught mid-rotation: read again
            self._adopt(loaded)
            return

    def reload(self) -> bool:
        """Try to load the pair now; on failure keep the current one and log why."""
        try:
            loaded = self._load_pair()
        except _FilesChanging as exc:
            self._attempted = None
            log.info("certificate files changing; retrying on the next check", reason=str(exc))
            return False
        except CertificateLoadError as exc:
            self._attempted = exc.signature if isinstance(exc, _SignedLoadError) else None
            self._report_failure(str(exc))
            return False
        self._adopt(loaded)
        return True

    def reload_if_changed(self) -> bool:
        """Reload when either file (or a symlink on its path) changed; True if a new pair is served."""
        try:
            signature = self._signature()
        except OSError as exc:
            self._report_failure(f"cannot stat certificate files: {exc}")
            return False
        if signature == self._attempted:
            return False
        if self._current is not None and signature == self._current.signature:
            self._attempted = signature
            return False
        self._attempted = signature
        return self.reload()

    async def watch(self, interval: float = 1.0) -> None:
        """Poll for changes until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.reload_if_changed()
            except Exception:  # never let the watcher die: the old certificate keeps serving
                log.exception("certificate reload check failed", cert=self.cert_path, key=self.key_path)

    def server_context(self) -> ssl.SSLContext:
        """The one context to give the listener; loads the pair first if needed (and raises)."""
        if self._listener_context is None:
            if self._current is None:
                self.load()
            assert self._current is not None
            listener = self._current.context
            listener.sni_callback = self._select_context
            self._listener_context = listener
        return self._listener_context

    def _select_context(self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                        context: ssl.SSLContext) -> None:
        # Runs inside every handshake: only swap the certificate, never raise.
        current = self._current
        if current is not None and current.context is not context:
            ssl_object.context = current.context

    def _signature(self) -> PairSignature:
        return file_signature(self.cert_path), file_signature(self.key_path)

    def _load_pair(self) -> LoadedCertificate:
        files = f"{self.cert_path} / {self.key_path}"
        try:
            before = self._signature()
            cert_pem = Path(self.cert_path).read_bytes()
        except OSError as exc:
            raise CertificateLoadError(f"cannot read certificate files {files}: {exc}") from None
        try:
            leaf = cert_from_pem(cert_pem)
        except ValueError as exc:
            raise _SignedLoadError(f"{self.cert_path} holds no PEM certificate: {exc}", before) from None
        context = new_server_context(self.min_version, self.ciphers)
        try:
            context.load_cert_chain(self.cert_path, self.key_path, password=_refuse_password)
        except (ssl.SSLError, OSError, _EncryptedKey) as exc:
            raise _SignedLoadError(f"cannot load certificate/key {files}: {_reason(exc)}", before) from None
        try:
            changed = self._signature() != before or Path(self.cert_path).read_bytes() != cert_pem
        except OSError:
            changed = True
        if changed:
            raise _FilesChanging(f"{files} changed while being loaded")
        return LoadedCertificate(context, leaf.not_valid_after_utc, leaf.serial_number, before)

    def _adopt(self, loaded: LoadedCertificate) -> None:
        self._current = loaded
        self._attempted = loaded.signature
        self.last_error = None
        details = {
            "cert": self.cert_path,
            "serial": format(loaded.serial_number, "x"),
            "not_after": loaded.not_after.isoformat(),
        }
        if loaded.not_after <= datetime.now(UTC):
            # Served anyway: the files are the source of truth, as with the Go webhook.
            log.warning("serving certificate loaded but already expired", **details)
        else:
            log.info("serving certificate loaded", **details)

    def _report_failure(self, message: str) -> None:
        # Logged once per distinct problem, not on every poll.
        if message != self.last_error:
            log.error(
                "serving certificate not reloaded; keeping the current one",
                reason=message,
                serving_not_after=self.not_after.isoformat() if self.not_after else None,
            )
        self.last_error = message


class _SignedLoadError(CertificateLoadError):
    """A load failure for a known file state, so the same bad files are not retried."""

    def __init__(self, message: str, signature: PairSignature) -> None:
        super().__init__(message)
        self.signature = signature


class _EncryptedKey(Exception):
    pass


def _refuse_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise _EncryptedKey("the private key is encrypted; an unencrypted key is required")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.library or 'SSL'}: {exc.reason}"
    return str(exc)
