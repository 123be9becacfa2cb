"""Self-managed serving certificates (`--cert-mode=self-managed`).
It decides nothing about renewal itself (`renewal` does) and serves no TLS (`server.tls` does).

The webhook keeps its own CA and serving certificate in one Secret and keeps the `caBundle`
of its MutatingWebhookConfiguration in step, so installing it needs no cert-manager and no
manual step. State lives only in the API server: every replica runs the same reconcile
loop, and concurrent writers are made safe by resourceVersion conflicts (the loser re-reads
and adopts the winner's certificate), not by leader election.

The Secret may exist before the first pass, empty (the Helm chart creates it so that the
webhook needs no `create` on Secrets): it is filled in place, keeping its owner, labels and
type. A missing one is created, owned by the webhook configuration (so it goes with it).

One pass (`reconcile`): read the Secret; issue what is missing, invalid, expiring or for
other names (keeping the CA unless it nears its own expiry); write the pair to local files
for the TLS reloader; make sure every webhook of the configuration carries the CA bundle,
repairing it if something wiped it. A marker file next to the pair says "bundle in place",
so every serving process can report readiness from it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes_asyncio import client

from injector.certificates import authority as certs
from injector.certificates.bundle_marker import set_bundle_in_place
from injector.certificates.renewal import ca_due, renewal_window, serving_cert_problem
from injector.core.settings import ServeSettings
from injector.kube.client import KubeError, call_json, get_object

log = structlog.get_logger(__name__)

CA_RENEW_BEFORE = timedelta(days=365)
MAX_CONFLICT_RETRIES = 5
# When the CA changes, the previously registered CAs stay in the caBundle this many check
# intervals, so replicas still serving the old certificate keep being trusted until they switch.
CA_OVERLAP_CHECKS = 3
CA_CHANGED_ANNOTATION = "pod-identity-injector/ca-changed-at"
# The API server picks up a changed webhook configuration through an informer: give it this
# long before serving a certificate that only the new caBundle trusts.
PROPAGATION_DELAY = 2.0


@dataclass(frozen=True, slots=True)
class Bundle:
    """What the Secret holds: the CA bundle (newest CA first), the CA key, the serving pair."""

    ca_pem: bytes
    ca_key_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def to_secret_data(self) -> dict[str, str]:
        b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
        return {"ca.crt": b64(self.ca_pem), "ca.key": b64(self.ca_key_pem),
                "tls.crt": b64(self.cert_pem), "tls.key": b64(self.key_pem)}

    @classmethod
    def from_secret(cls, secret: dict[str, Any]) -> Bundle | None:
        data = secret.get("data") or {}
        try:
            parts = [base64.b64decode(data[k]) for k in ("ca.crt", "ca.key", "tls.crt", "tls.key")]
        except (KeyError, ValueError, TypeError):
            return None
        return cls(*parts)


@dataclass(frozen=True, slots=True)
class CertificateSpec:
    """What the serving certificate must be: its names and lifetime."""

    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    validity_days: int
    renew_before: timedelta


def renewed_bundle(current: Bundle | None, spec: CertificateSpec,
                   now: datetime | None = None) -> tuple[Bundle, str | None]:
    """The bundle to store, and why it differs from `current` (None: keep `current`).

    The CA is kept unless it is unusable or within a year of its end; a rotated CA stays in
    the bundle while it is valid so that certificates it signed are still trusted.
    """
    now = now or datetime.now(UTC)
    ca_cert, ca_key, old_cas, reason = None, None, b"", None
    if current is None:
        reason = "missing"
    else:
        try:
            cas = x509.load_pem_x509_certificates(current.ca_pem)
            ca_cert, ca_key = cas[0], certs.key_from_pem(current.ca_key_pem)
            if ca_cert.public_key() != ca_key.public_key():
                raise ValueError("CA key does not match the CA certificate")
            if ca_due(ca_cert, now, CA_RENEW_BEFORE):
                old_cas = b"".join(certs.cert_to_pem(c) for c in cas if c.not_valid_after_utc > now)
                ca_cert, ca_key, reason = None, None, "CA expiring"
        except ValueError as exc:
            ca_cert, ca_key, reason = None, None, f"CA unusable: {exc}"
    if reason is None:
        assert current is not None and ca_cert is not None
        reason = _serving_problem(current, ca_cert, spec, now)
        if reason is None:
            return current, None
    if ca_cert is None:
        ca_cert, ca_key = certs.generate_ca()
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    cert, key = certs.generate_serving_cert(ca_cert, ca_key, list(spec.dns_names), list(spec.ip_addresses),
                                            days=spec.validity_days)
    ca_pem = certs.cert_to_pem(ca_cert) + old_cas
    return Bundle(ca_pem, certs.key_to_pem(ca_key), certs.cert_to_pem(cert), certs.key_to_pem(key)), reason


def _serving_problem(bundle: Bundle, ca_cert: x509.Certificate, spec: CertificateSpec, now: datetime) -> str | None:
    try:
        cert = certs.cert_from_pem(bundle.cert_pem)
        public_key = certs.key_from_pem(bundle.key_pem).public_key()
    except ValueError as exc:
        return f"unreadable: {exc}"
    ips = [ipaddress.ip_address(ip) for ip in spec.ip_addresses]
    window = renewal_window(timedelta(days=spec.validity_days), spec.renew_before)
    return serving_cert_problem(cert, public_key, ca_cert, spec.dns_names, ips, now, window)


def registered_bundle(secret_ca_pem: bytes, registered_b64: str | None, ca_changed_at: datetime | None,
                      now: datetime, overlap: timedelta) -> bytes:
    """The caBundle to register: the Secret's CAs, plus, shortly after a CA change, every
    still-valid CA registered before (a replica may still serve a certificate they signed)."""
    if ca_changed_at is None or now - ca_changed_at >= overlap or not registered_b64:
        return secret_ca_pem
    try:
        previous = x509.load_pem_x509_certificates(base64.b64decode(registered_b64))
    except ValueError:
        return secret_ca_pem
    current = x509.load_pem_x509_certificates(secret_ca_pem)
    kept = [ca for ca in previous if ca not in current and ca.not_valid_after_utc > now]
    return secret_ca_pem + b"".join(certs.cert_to_pem(ca) for ca in kept)


def write_pair(directory: Path, bundle: Bundle) -> None:
    """Write the serving pair for the TLS reloader, only where the content changed."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data, mode in ((certs.SERVING_KEY_FILE, bundle.key_pem, certs.KEY_FILE_MODE),
                             (certs.SERVING_CERT_FILE, bundle.cert_pem, certs.CERT_FILE_MODE)):
        path = directory / name
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes() == data:
                continue
        certs.write_atomic(path, data, mode)


class SelfManagedCertificates:
    """Reconciles the Secret, the local files and the webhook configuration's caBundle."""

    def __init__(self, api: Any, settings: ServeSettings, *, checked: Callable[[], Any] = lambda: None) -> None:
        """Reads --namespace, --tls-secret, --service-name, --webhook-configuration,
        --cert-dir, --cert-validity, --cert-renew-before, --cert-san, --cert-check-interval.
        `checked()` is told of every check that completed (the server passes its metric's, so a
        check stuck behind a frozen API server shows and alerts)."""
        self.checked = checked
        self.core = client.CoreV1Api(api)
        self.admission = client.AdmissionregistrationV1Api(api)
        self.namespace, self.secret = settings.namespace, settings.tls_secret
        self.webhook_configuration = settings.webhook_configuration
        self.directory = Path(settings.cert_dir)
        dns_names, ip_addresses = certs.service_names(settings.service_name, settings.namespace), []
        for san in settings.cert_extra_sans:
            try:
                ip_addresses.append(str(ipaddress.ip_address(san)))
            except ValueError:
                dns_names.append(san)
        self.spec = CertificateSpec(tuple(dns_names), tuple(ip_addresses),
                                    max(1, round(settings.cert_validity / 86400)),
                                    timedelta(seconds=settings.cert_renew_before))
        self.check_interval = settings.cert_check_interval
        self.bundle_in_place = False

    def reconnect(self, api: Any) -> None:
        """Carry on with another client (the first one closed with its event loop)."""
        self.core = client.CoreV1Api(api)
        self.admission = client.AdmissionregistrationV1Api(api)

    # -- the loop ------------------------------------------------------------------------
    async def reconcile(self) -> None:
        config = await get_object(self.admission.read_mutating_webhook_configuration, self.webhook_configuration)
        if config is None:
            self._set_marker(False)
            raise RuntimeError(f"MutatingWebhookConfiguration {self.webhook_configuration} does not exist")
        bundle, ca_changed_at = await self._ensure_secret(config)
        registered = (((config.get("webhooks") or [{}])[0]).get("clientConfig") or {}).get("caBundle")
        overlap = timedelta(seconds=max(30.0, CA_OVERLAP_CHECKS * self.check_interval))
        wanted = registered_bundle(bundle.ca_pem, registered, ca_changed_at, datetime.now(UTC), overlap)
        patched = await self._ensure_ca_bundle(config, wanted)
        if patched and _differs(self.directory / certs.SERVING_CERT_FILE, bundle.cert_pem):
            await asyncio.sleep(PROPAGATION_DELAY)  # the API server trusts the new CA before we serve it
        write_pair(self.directory, bundle)
        self._set_marker(True)

    async def wait_until_ready(self) -> None:
        """Reconcile until a certificate is on disk and the bundle is registered."""
        delay = 0.5
        while True:
            try:
                await self.reconcile()
                self.checked()
                return
            except Exception as exc:
                log.warning("self-managed certificate not ready yet; retrying", error=str(exc) or type(exc).__name__,
                            retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15)

    async def run(self) -> None:
        """Re-check every `check_interval`: renewals, other replicas' writes, a wiped caBundle."""
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await self.reconcile()
                self.checked()
            except Exception as exc:
                log.error("self-managed certificate check failed", error=str(exc) or type(exc).__name__)

    # -- the Secret ----------------------------------------------------------------------
    async def _ensure_secret(self, config: dict[str, Any]) -> tuple[Bundle, datetime | None]:
        """The stored bundle (issuing what is needed) and when its CA last changed."""
        for _ in range(MAX_CONFLICT_RETRIES):
            secret = await get_object(self.core.read_namespaced_secret, self.secret, self.namespace)
            current = Bundle.from_secret(secret) if secret else None
            wanted, reason = renewed_bundle(current, self.spec)
            if reason is None:
                assert current is not None and secret is not None
                return current, _ca_changed_at(secret)
            changed_at = datetime.now(UTC) if current is None or wanted.ca_pem != current.ca_pem else None
            metadata = dict((secret or {}).get("metadata") or {})
            metadata.pop("managedFields", None)
            annotations = dict(metadata.get("annotations") or {})
            if changed_at is not None:
                annotations[CA_CHANGED_ANNOTATION] = changed_at.isoformat()
            metadata.update(name=self.secret, namespace=self.namespace, annotations=annotations,
                            labels=dict(metadata.get("labels") or {}))
            if secret is None:
                # Made here, so owned here: deleted with the webhook configuration (helm uninstall
                # of a chart that did not create it, or any install by hand), no orphaned CA.
                metadata["labels"]["app.kubernetes.io/managed-by"] = "pod-identity-injector"
                metadata["ownerReferences"] = [_owner(config)]
            # A Secret someone else created (the chart makes it empty, so that the webhook needs
            # no `create` on Secrets) keeps its owner, its labels and its type (immutable): only
            # the data and the CA-change annotation are ours.
            body = {"apiVersion": "v1", "kind": "Secret", "type": (secret or {}).get("type") or "kubernetes.io/tls",
                    "metadata": metadata, "data": wanted.to_secret_data()}
            try:
                if secret is None:
                    await call_json(self.core.create_namespaced_secret, self.namespace, body)
                else:  # metadata carries the resourceVersion read above: a concurrent write conflicts
                    await call_json(self.core.replace_namespaced_secret, self.secret, self.namespace, body)
            except KubeError as exc:
                if exc.status in (409,):  # another replica wrote first (or created it): adopt theirs
                    log.info("certificate secret changed concurrently; re-reading", secret=self.secret)
                    continue
                if secret is None and exc.status == 403:
                    raise RuntimeError(
                        f"secret {self.namespace}/{self.secret} does not exist and this webhook may not create it "
                        f"({exc}); the Helm chart creates it empty (helm upgrade restores it), otherwise create "
                        f"it empty: kubectl -n {self.namespace} create secret generic {self.secret}") from None
                raise
            log.info("serving certificate issued", secret=f"{self.namespace}/{self.secret}", reason=reason,
                     new_ca=changed_at is not None)
            return wanted, changed_at or _ca_changed_at(secret or {})
        raise RuntimeError(f"secret {self.namespace}/{self.secret} kept changing; giving up this pass")

    # -- local files ---------------------------------------------------------------------
    # -- the webhook configuration -------------------------------------------------------
    async def _ensure_ca_bundle(self, config: dict[str, Any], ca_pem: bytes) -> bool:
        """Make every webhook of the configuration carry `ca_pem`; True if it had to patch."""
        wanted = base64.b64encode(ca_pem).decode("ascii")
        webhooks = config.get("webhooks") or []
        patch: list[dict[str, Any]] = []
        for index, webhook in enumerate(webhooks):
            if (webhook.get("clientConfig") or {}).get("caBundle") != wanted:
                patch.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": wanted})
        if patch:
            self._set_marker(False)
            version = (config.get("metadata") or {}).get("resourceVersion")
            patch.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": version})
            await call_json(self.admission.patch_mutating_webhook_configuration, self.webhook_configuration, patch,
                            _content_type="application/json-patch+json")
            log.info("caBundle written to the webhook configuration", configuration=self.webhook_configuration,
                     webhooks=len(patch) - 1)
        return bool(patch)

    def _set_marker(self, in_place: bool) -> None:
        self.bundle_in_place = in_place
        set_bundle_in_place(self.directory, in_place)


def _ca_changed_at(secret: dict[str, Any]) -> datetime | None:
    raw = ((secret.get("metadata") or {}).get("annotations") or {}).get(CA_CHANGED_ANNOTATION)
    try:
        return datetime.fromisoformat(raw) if raw else None
    except ValueError:
        return None


def _differs(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() != data
    except OSError:
        return True


def _owner(config: dict[str, Any]) -> dict[str, Any]:
    metadata = config.get("metadata") or {}
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "name": metadata.get("name"), "uid": metadata.get("uid")}
