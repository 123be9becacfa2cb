"""Self-managed certificates: what the reconciler decides to store, and how it writes the
Secret whether the chart made it empty or nobody made it (against a stand-in for the Secret
endpoints here; against a real API server in tests/e2e)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from injector.certificates import authority as certs
from injector.certificates.bundle_marker import bundle_in_place, set_bundle_in_place
from injector.certificates.controller import (
    Bundle,
    CertificateSpec,
    SelfManagedCertificates,
    renewed_bundle,
    write_pair,
)
from injector.core.settings import ServeSettings

NAMES = tuple(certs.service_names("injector", "infra"))


def spec(validity_days: int = 90, renew_before_days: int = 30, dns: tuple[str, ...] = (),
         ips: tuple[str, ...] = ()) -> CertificateSpec:
    return CertificateSpec(NAMES + dns, ips, validity_days, timedelta(days=renew_before_days))


def sans(bundle: Bundle) -> tuple[set, set]:
    cert = certs.cert_from_pem(bundle.cert_pem)
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName)), {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}


def test_a_missing_secret_gets_a_new_ca_and_serving_certificate(tmp_path):
    bundle, reason = renewed_bundle(None, spec(dns=("webhook.local",), ips=("127.0.0.1",)))
    assert reason == "missing"
    dns, ips = sans(bundle)
    assert dns == {*NAMES, "webhook.local"} and ips == {"127.0.0.1"}
    ca = certs.cert_from_pem(bundle.ca_pem)
    certs.cert_from_pem(bundle.cert_pem).verify_directly_issued_by(ca)


def test_a_valid_secret_is_kept_as_is():
    bundle, _ = renewed_bundle(None, spec())
    assert renewed_bundle(bundle, spec()) == (bundle, None)


def test_a_certificate_inside_the_renewal_window_is_reissued_by_the_same_ca():
    bundle, _ = renewed_bundle(None, spec())
    sixty_one_days_on = datetime.now(UTC) + timedelta(days=61)
    renewed, reason = renewed_bundle(bundle, spec(), now=sixty_one_days_on)
    assert reason == "expiring"
    assert renewed.ca_pem == bundle.ca_pem and renewed.ca_key_pem == bundle.ca_key_pem
    assert renewed.cert_pem != bundle.cert_pem


def test_a_renewal_window_as_long_as_the_lifetime_does_not_reissue_on_every_pass():
    # The window is capped at a third of the lifetime, as for `certs` (certificates/renewal.py).
    bundle, _ = renewed_bundle(None, spec(renew_before_days=91))
    assert renewed_bundle(bundle, spec(renew_before_days=91)) == (bundle, None)
    later = datetime.now(UTC) + timedelta(days=61)
    assert renewed_bundle(bundle, spec(renew_before_days=91), now=later)[1] == "expiring"


def test_other_service_names_mean_a_new_certificate():
    bundle, _ = renewed_bundle(None, spec())
    renewed, reason = renewed_bundle(bundle, spec(ips=("10.0.0.1",)))
    assert reason == "names changed" and sans(renewed)[1] == {"10.0.0.1"}


def test_a_ca_near_its_end_is_rotated_and_the_old_one_stays_trusted():
    old_ca, old_key = certs.generate_ca(days=200)
    cert, key = certs.generate_serving_cert(old_ca, old_key, list(NAMES), [], days=30)
    bundle = Bundle(certs.cert_to_pem(old_ca), certs.key_to_pem(old_key), certs.cert_to_pem(cert),
                    certs.key_to_pem(key))
    renewed, reason = renewed_bundle(bundle, spec())
    assert reason == "CA expiring"
    cas = x509.load_pem_x509_certificates(renewed.ca_pem)
    assert len(cas) == 2 and cas[1] == old_ca
    certs.cert_from_pem(renewed.cert_pem).verify_directly_issued_by(cas[0])


@pytest.mark.parametrize("damage", ["ca.key", "tls.crt"])
def test_a_damaged_secret_is_repaired(damage):
    bundle, _ = renewed_bundle(None, spec())
    other_key = certs.key_to_pem(certs.generate_private_key())
    broken = Bundle(bundle.ca_pem, other_key if damage == "ca.key" else bundle.ca_key_pem,
                    b"garbage" if damage == "tls.crt" else bundle.cert_pem, bundle.key_pem)
    renewed, reason = renewed_bundle(broken, spec())
    assert reason is not None
    ca = x509.load_pem_x509_certificates(renewed.ca_pem)[0]
    certs.cert_from_pem(renewed.cert_pem).verify_directly_issued_by(ca)


def test_secret_data_round_trips():
    bundle, _ = renewed_bundle(None, spec())
    assert Bundle.from_secret({"data": bundle.to_secret_data()}) == bundle
    assert Bundle.from_secret({"data": {"tls.crt": "eA=="}}) is None


def test_files_are_written_once_and_the_marker_reports_the_bundle(tmp_path):
    bundle, _ = renewed_bundle(None, spec())
    write_pair(tmp_path, bundle)
    first = (tmp_path / "tls.crt").stat().st_ino
    write_pair(tmp_path, bundle)
    assert (tmp_path / "tls.crt").stat().st_ino == first  # unchanged content is not rewritten
    assert (tmp_path / "tls.key").stat().st_mode & 0o777 == 0o600
    assert not bundle_in_place(tmp_path)
    set_bundle_in_place(tmp_path, True)
    assert bundle_in_place(tmp_path)
    set_bundle_in_place(tmp_path, False)
    assert not bundle_in_place(tmp_path)


def test_the_serving_certificate_lives_as_long_as_asked():
    bundle, _ = renewed_bundle(None, spec(validity_days=10))
    not_after = certs.cert_from_pem(bundle.cert_pem).not_valid_after_utc
    assert abs(not_after - (datetime.now(UTC) + timedelta(days=10))) < timedelta(minutes=10)


def test_after_a_ca_change_the_previous_cas_stay_registered_for_the_overlap():
    """Replicas that still serve the old certificate must stay trusted until they switch."""
    import base64

    from injector.certificates.controller import registered_bundle

    old, _ = renewed_bundle(None, spec())
    new, _ = renewed_bundle(None, spec())
    registered = base64.b64encode(old.ca_pem).decode()
    now = datetime.now(UTC)
    overlap = timedelta(minutes=3)
    during = registered_bundle(new.ca_pem, registered, now - timedelta(seconds=10), now, overlap)
    assert x509.load_pem_x509_certificates(during) == [
        *x509.load_pem_x509_certificates(new.ca_pem), *x509.load_pem_x509_certificates(old.ca_pem)]
    assert registered_bundle(new.ca_pem, registered, now - timedelta(minutes=5), now, overlap) == new.ca_pem
    assert registered_bundle(new.ca_pem, registered, None, now, overlap) == new.ca_pem
    assert registered_bundle(new.ca_pem, "not base64 pem", now, now, overlap) == new.ca_pem
    # the same CA registered again is not duplicated
    assert registered_bundle(new.ca_pem, base64.b64encode(new.ca_pem).decode(), now, now, overlap) == new.ca_pem


# -- the Secret: pre-created (the chart's) or missing --------------------------------------------
class Answer:
    """What the generated client returns with _preload_content=False."""

    def __init__(self, status: int, body: dict) -> None:
        self.status, self.body = status, body

    async def read(self) -> bytes:
        return json.dumps(self.body).encode()

    def release(self) -> None:
        pass


class FakeSecrets:
    """The Secret endpoints of one namespace, as far as the controller uses them; `may_create`
    False answers create with 403, as the chart's RBAC does."""

    def __init__(self, secret: dict | None = None, *, may_create: bool = True) -> None:
        self.secret, self.may_create = secret, may_create
        self.calls: list[str] = []

    async def read_namespaced_secret(self, name, namespace, **_):
        self.calls.append("get")
        return Answer(200, self.secret) if self.secret else Answer(404, {"message": "not found"})

    async def create_namespaced_secret(self, namespace, body, **_):
        self.calls.append("create")
        if not self.may_create:
            return Answer(403, {"message": "secrets is forbidden: cannot create resource"})
        self.secret = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}
        return Answer(201, self.secret)

    async def replace_namespaced_secret(self, name, namespace, body, **_):
        self.calls.append("replace")
        assert self.secret is not None
        if body["type"] != self.secret.get("type", "Opaque"):
            return Answer(422, {"message": "Secret type is immutable"})
        self.secret = body
        return Answer(200, body)


CONFIG = {"metadata": {"name": "injector", "uid": "uid-of-the-configuration"}, "webhooks": [{}]}
CHART_SECRET = {  # as the chart renders it: no data, Opaque, Helm's labels and annotations
    "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
    "metadata": {"name": "injector-tls", "namespace": "infra", "resourceVersion": "7",
                 "labels": {"app.kubernetes.io/managed-by": "Helm"},
                 "annotations": {"meta.helm.sh/release-name": "rel", "meta.helm.sh/release-namespace": "infra"}}}


def controller(secrets: FakeSecrets) -> SelfManagedCertificates:
    managed = SelfManagedCertificates(None, ServeSettings(namespace="infra", tls_secret="injector-tls",
                                                          service_name="injector"))
    managed.core = secrets
    return managed


async def test_a_pre_created_empty_secret_is_filled_in_place_without_create():
    secrets = FakeSecrets(json.loads(json.dumps(CHART_SECRET)), may_create=False)
    bundle, changed_at = await controller(secrets)._ensure_secret(CONFIG)
    assert secrets.calls == ["get", "replace"]
    stored = secrets.secret
    assert Bundle.from_secret(stored) == bundle and changed_at is not None
    # Helm's object stays Helm's: its type, labels, annotations; no owner added.
    assert stored["type"] == "Opaque"
    assert stored["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "Helm"}
    assert stored["metadata"]["annotations"]["meta.helm.sh/release-name"] == "rel"
    assert stored["metadata"]["resourceVersion"] == "7"  # a concurrent writer conflicts
    assert "ownerReferences" not in stored["metadata"]


async def test_a_filled_secret_is_read_and_kept():
    secrets = FakeSecrets(json.loads(json.dumps(CHART_SECRET)), may_create=False)
    first, _ = await controller(secrets)._ensure_secret(CONFIG)
    secrets.calls.clear()
    again, _ = await controller(secrets)._ensure_secret(CONFIG)
    assert again == first and secrets.calls == ["get"]


async def test_a_missing_secret_is_created_owned_by_the_webhook_configuration():
    secrets = FakeSecrets()
    bundle, _ = await controller(secrets)._ensure_secret(CONFIG)
    assert secrets.calls == ["get", "create"]
    stored = secrets.secret
    assert stored["type"] == "kubernetes.io/tls" and Bundle.from_secret(stored) == bundle
    assert stored["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "pod-identity-injector"
    assert stored["metadata"]["ownerReferences"] == [{
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "name": "injector", "uid": "uid-of-the-configuration"}]


async def test_a_missing_secret_without_create_permission_says_how_to_restore_it():
    with pytest.raises(RuntimeError, match=r"may not create it .*helm upgrade restores it"):
        await controller(FakeSecrets(may_create=False))._ensure_secret(CONFIG)
