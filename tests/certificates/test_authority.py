"""Certificate generation, atomic files and `ensure_certs` (docs/reference.md#certs-command)."""

from __future__ import annotations

import ipaddress
import itertools
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from injector.certificates import authority as certs


@pytest.fixture(scope="module")
def ca():
    return certs.generate_ca()


@pytest.fixture(scope="module")
def serving_key():
    return certs.generate_private_key()


@pytest.fixture(scope="module")
def other_ca(serving_key):
    return certs.generate_ca("someone-else", key=certs.generate_private_key())


def extension(cert: x509.Certificate, kind):
    return cert.extensions.get_extension_for_class(kind)


def issue(ca, key, dns=("localhost",), ips=("127.0.0.1",), days=365, **kwargs):
    return certs.generate_serving_cert(ca[0], ca[1], list(dns), list(ips), days, key=key, **kwargs)[0]


# --- generate_ca ------------------------------------------------------------------------


def test_a_service_is_named_every_way_the_api_server_may_reach_it():
    assert certs.service_names("injector", "infra") == [
        "injector", "injector.infra", "injector.infra.svc", "injector.infra.svc.cluster.local"]


def test_ca_is_self_signed_and_may_only_sign_certificates(ca):
    cert, key = ca
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pod-identity-injector-ca"
    cert.verify_directly_issued_by(cert)
    constraints = extension(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = extension(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature and not usage.value.key_encipherment
    ski = extension(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def test_ca_lasts_ten_years_by_default(ca):
    lifetime = ca[0].not_valid_after_utc - ca[0].not_valid_before_utc
    assert lifetime == timedelta(days=3650, minutes=5)


def test_ca_key_is_rsa_2048_by_default(ca):
    assert ca[1].key_size == 2048


# --- generate_serving_cert --------------------------------------------------------------


def test_serving_cert_lists_the_dns_names_and_ip_addresses(ca, serving_key):
    cert = issue(ca, serving_key, dns=["webhook", "webhook.eks.svc"], ips=["127.0.0.1", "::1"])
    sans = extension(cert, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["webhook", "webhook.eks.svc"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_serving_cert_is_for_tls_servers_and_nothing_else(ca, serving_key):
    cert = issue(ca, serving_key)
    assert extension(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    usage = extension(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature and usage.value.key_encipherment
    assert not usage.value.key_cert_sign
    assert not extension(cert, x509.BasicConstraints).value.ca


def test_serving_cert_is_signed_by_the_ca_and_points_at_its_key(ca, serving_key):
    cert = issue(ca, serving_key)
    assert cert.issuer == ca[0].subject
    cert.verify_directly_issued_by(ca[0])
    aki = extension(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == extension(ca[0], x509.SubjectKeyIdentifier).value.digest


def test_serving_cert_starts_five_minutes_early_for_clock_skew(ca, serving_key):
    before = datetime.now(UTC).replace(microsecond=0)
    cert = issue(ca, serving_key, days=30)
    after = datetime.now(UTC)
    skew = timedelta(minutes=5)
    assert before - skew - timedelta(seconds=1) <= cert.not_valid_before_utc <= after - skew
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=30, minutes=5)


def test_serving_cert_never_outlives_its_ca(ca, serving_key):
    short_ca = certs.generate_ca(days=10, key=ca[1])
    cert = issue(short_ca, serving_key, days=365)
    assert cert.not_valid_after_utc == short_ca[0].not_valid_after_utc


def test_serving_cert_gets_a_new_key_unless_one_is_given(ca, serving_key):
    cert, key = certs.generate_serving_cert(ca[0], ca[1], ["localhost"], [])
    assert key is not serving_key
    assert cert.public_key() == key.public_key()
    assert issue(ca, serving_key).public_key() == serving_key.public_key()


def test_each_serving_cert_has_a_new_serial(ca, serving_key):
    assert issue(ca, serving_key).serial_number != issue(ca, serving_key).serial_number


def test_common_name_is_the_first_dns_name_or_ip_unless_given(ca, serving_key):
    def common_name(cert):
        return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value

    assert common_name(issue(ca, serving_key, dns=["a.example", "b.example"])) == "a.example"
    assert common_name(issue(ca, serving_key, dns=[], ips=["10.0.0.1"])) == "10.0.0.1"
    assert common_name(issue(ca, serving_key, common_name="webhook")) == "webhook"
    long_name = "x" * 60 + ".example.com"
    assert common_name(issue(ca, serving_key, dns=[long_name], ips=[])) == "pod-identity-injector"


def test_duplicate_names_are_listed_once(ca, serving_key):
    cert = issue(ca, serving_key, dns=["a", "a"], ips=["10.0.0.1", "10.0.0.1"])
    sans = extension(cert, x509.SubjectAlternativeName).value
    assert len(list(sans)) == 2


@pytest.mark.parametrize(
    ("dns", "ips", "days", "message"),
    [
        (["localhost"], ["not-an-ip"], 365, "invalid IP address 'not-an-ip'"),
        (["localhost"], ["300.1.1.1"], 365, "invalid IP address '300.1.1.1'"),
        ([], [], 365, "at least one DNS name or IP address"),
        (["localhost"], [], 0, "at least 1 day"),
        (["localhost"], [], -5, "at least 1 day"),
        (["bad name"], [], 365, "invalid DNS name 'bad name'"),
        ([""], [], 365, "invalid DNS name ''"),
        (["-leading.example"], [], 365, "invalid DNS name"),
        ("localhost", [], 365, "must be a list"),
        (["localhost"], "127.0.0.1", 365, "must be a list"),
    ],
)
def test_bad_serving_cert_requests_are_refused_with_a_clear_message(ca, serving_key, dns, ips, days, message):
    with pytest.raises(ValueError, match=message):
        certs.generate_serving_cert(ca[0], ca[1], dns, ips, days, key=serving_key)


def test_an_overlong_common_name_is_refused(ca, serving_key):
    with pytest.raises(ValueError, match="1 to 64 characters"):
        issue(ca, serving_key, common_name="x" * 65)


def test_a_ca_needs_a_positive_lifetime_and_a_real_key_size():
    with pytest.raises(ValueError, match="at least 1 day"):
        certs.generate_ca(days=0)
    with pytest.raises(ValueError, match="at least 2048 bits"):
        certs.generate_ca(key_size=1024)


# --- PEM and files ----------------------------------------------------------------------


def test_pem_round_trips(ca):
    cert, key = ca
    assert certs.cert_from_pem(certs.cert_to_pem(cert)) == cert
    assert certs.key_from_pem(certs.key_to_pem(key)).private_numbers() == key.private_numbers()
    assert certs.key_to_pem(key).startswith(b"-----BEGIN PRIVATE KEY-----")


def test_write_bundle_creates_the_directory_and_the_four_files(tmp_path, ca, serving_key):
    directory = tmp_path / "a" / "b"
    cert = issue(ca, serving_key)
    paths = certs.write_bundle(directory, ca[0], ca[1], cert, serving_key)
    assert paths == {name: directory / name for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")}
    assert sorted(os.listdir(directory)) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    assert certs.read_certificate(paths["tls.crt"]) == cert
    assert certs.read_certificate(paths["ca.crt"]) == ca[0]
    assert certs.read_private_key(paths["tls.key"]).public_key() == serving_key.public_key()


def test_keys_are_private_and_certificates_readable(tmp_path, ca, serving_key):
    paths = certs.write_bundle(tmp_path, ca[0], ca[1], issue(ca, serving_key), serving_key)
    modes = {name: stat.S_IMODE(path.stat().st_mode) for name, path in paths.items()}
    assert modes == {"ca.crt": 0o644, "ca.key": 0o600, "tls.crt": 0o644, "tls.key": 0o600}


def test_files_are_replaced_not_rewritten_in_place(tmp_path, ca, serving_key):
    paths = certs.write_bundle(tmp_path, ca[0], ca[1], issue(ca, serving_key), serving_key)
    inode = paths["tls.crt"].stat().st_ino
    certs.write_bundle(tmp_path, ca[0], ca[1], issue(ca, serving_key), serving_key)
    assert paths["tls.crt"].stat().st_ino != inode
    assert sorted(os.listdir(tmp_path)) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "tls.key"
    target.write_bytes(b"old")

    def failing_replace(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(certs.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        certs.write_atomic(target, b"new", 0o600)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["tls.key"]


def test_a_chain_file_reads_as_its_first_certificate_the_leaf(tmp_path, ca, serving_key):
    cert = issue(ca, serving_key, days=42)
    path = tmp_path / "tls.crt"
    path.write_bytes(certs.cert_to_pem(cert) + certs.cert_to_pem(ca[0]))  # leaf first, then chain
    assert certs.read_certificate(path).not_valid_after_utc == cert.not_valid_after_utc
    assert certs.read_certificate(path).not_valid_after_utc.tzinfo is not None


def test_reading_a_file_that_is_not_a_certificate_names_the_file(tmp_path):
    path = tmp_path / "tls.crt"
    path.write_text("garbage")
    with pytest.raises(certs.CertificateFileError, match=str(path)):
        certs.read_certificate(path)


# --- ensure_certs -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def key_pool():
    return [certs.generate_private_key() for _ in range(3)]


@pytest.fixture
def reused_keys(monkeypatch, key_pool):
    """ensure_certs makes new keys; hand it pre-generated ones, as RSA key generation is slow."""
    keys = itertools.cycle(key_pool)
    monkeypatch.setattr(certs, "generate_private_key", lambda key_size=2048: next(keys))


uses_key_pool = pytest.mark.usefixtures("reused_keys")


def ensure(directory: Path, dns=("webhook.eks.svc",), ips=("127.0.0.1",), **kwargs):
    return certs.ensure_certs(directory, list(dns), list(ips), **kwargs)


def contents(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in certs.BUNDLE_FILES}


@uses_key_pool
def test_ensure_creates_a_ca_and_serving_cert_in_an_empty_directory(tmp_path):
    directory = tmp_path / "certs"
    result = ensure(directory)
    assert result.ca_created and result.issued and result.reason == "missing"
    assert result.reason == "missing"
    assert set(result.paths) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    cert = certs.read_certificate(result.paths["tls.crt"])
    cert.verify_directly_issued_by(certs.read_certificate(result.paths["ca.crt"]))
    assert result.not_after == cert.not_valid_after_utc


@uses_key_pool
def test_ensure_keeps_valid_certificates_untouched(tmp_path):
    ensure(tmp_path)
    before = contents(tmp_path)
    result = ensure(tmp_path)
    assert not result.issued and not result.ca_created and result.reason == "valid"
    assert contents(tmp_path) == before
    assert result.not_after == certs.read_certificate(tmp_path / "tls.crt").not_valid_after_utc


@uses_key_pool
def test_ensure_keeps_the_existing_ca_when_reissuing_for_new_names(tmp_path, ca, serving_key):
    certs.write_bundle(tmp_path, ca[0], ca[1], issue(ca, serving_key, dns=["old.example"]), serving_key)
    result = ensure(tmp_path, dns=["new.example"], ips=[])
    assert result.issued and result.reason != "missing" and not result.ca_created
    assert result.reason == "names changed"
    assert certs.read_certificate(tmp_path / "ca.crt") == ca[0]
    cert = certs.read_certificate(tmp_path / "tls.crt")
    cert.verify_directly_issued_by(ca[0])
    sans = extension(cert, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["new.example"]


@uses_key_pool
def test_ensure_compares_names_regardless_of_order(tmp_path, ca, serving_key):
    cert = issue(ca, serving_key, dns=["b", "a"], ips=["::1", "127.0.0.1"])
    certs.write_bundle(tmp_path, ca[0], ca[1], cert, serving_key)
    assert not ensure(tmp_path, dns=["a", "b"], ips=["127.0.0.1", "::1"]).issued


@uses_key_pool
def test_ensure_renews_a_certificate_expiring_within_the_window(tmp_path, ca, serving_key):
    expiring = issue(ca, serving_key, dns=["webhook.eks.svc"], days=10)
    certs.write_bundle(tmp_path, ca[0], ca[1], expiring, serving_key)
    result = ensure(tmp_path, renew_before_days=30)
    assert result.issued and result.reason == "expiring"
    assert result.not_after > datetime.now(UTC) + timedelta(days=300)
    assert certs.read_certificate(tmp_path / "ca.crt") == ca[0]


@uses_key_pool
def test_ensure_does_not_renew_outside_the_window(tmp_path, ca, serving_key):
    cert = issue(ca, serving_key, dns=["webhook.eks.svc"], days=40)
    certs.write_bundle(tmp_path, ca[0], ca[1], cert, serving_key)
    assert not ensure(tmp_path, renew_before_days=30).issued


@uses_key_pool
def test_short_lived_certificates_are_not_reissued_on_every_run(tmp_path):
    ensure(tmp_path, days=7, renew_before_days=30)
    assert not ensure(tmp_path, days=7, renew_before_days=30).issued


@uses_key_pool
def test_force_reissues_but_keeps_the_ca(tmp_path):
    first = ensure(tmp_path)
    ca_before = (tmp_path / "ca.crt").read_bytes()
    serial_before = certs.read_certificate(tmp_path / "tls.crt").serial_number
    result = ensure(tmp_path, force=True)
    assert result.issued and result.reason == "forced" and not result.ca_created
    assert (tmp_path / "ca.crt").read_bytes() == ca_before
    assert certs.read_certificate(tmp_path / "tls.crt").serial_number != serial_before
    assert first.paths == result.paths


@uses_key_pool
def test_ensure_reissues_when_the_serving_key_is_missing_or_wrong(tmp_path, ca, serving_key):
    certs.write_bundle(tmp_path, ca[0], ca[1], issue(ca, serving_key, dns=["webhook.eks.svc"]), serving_key)
    (tmp_path / "tls.key").unlink()
    assert ensure(tmp_path).reason == "missing"
    (tmp_path / "tls.key").write_bytes(certs.key_to_pem(ca[1]))
    assert ensure(tmp_path).reason == "key does not match certificate"


@uses_key_pool
def test_ensure_reissues_a_serving_cert_from_another_ca(tmp_path, ca, other_ca, serving_key):
    foreign = issue(other_ca, serving_key, dns=["webhook.eks.svc"])
    certs.write_bundle(tmp_path, ca[0], ca[1], foreign, serving_key)
    result = ensure(tmp_path)
    assert result.reason == "not issued by the CA" and not result.ca_created
    certs.read_certificate(tmp_path / "tls.crt").verify_directly_issued_by(ca[0])


@uses_key_pool
def test_ensure_reissues_an_unreadable_serving_cert(tmp_path, ca, serving_key):
    certs.write_bundle(tmp_path, ca[0], ca[1], issue(ca, serving_key, dns=["webhook.eks.svc"]), serving_key)
    (tmp_path / "tls.crt").write_text("half a certif")
    assert ensure(tmp_path).reason.startswith("unreadable")


@uses_key_pool
def test_ensure_replaces_a_ca_that_is_about_to_expire(tmp_path, ca, serving_key):
    dying_ca = certs.generate_ca(days=5, key=ca[1])
    certs.write_bundle(tmp_path, dying_ca[0], dying_ca[1], issue(dying_ca, serving_key), serving_key)
    result = ensure(tmp_path)
    assert result.ca_created and result.issued
    assert certs.read_certificate(result.paths["ca.crt"]).not_valid_after_utc > datetime.now(UTC) + timedelta(days=3000)


@uses_key_pool
def test_ensure_refuses_to_overwrite_a_half_present_ca(tmp_path, ca):
    (tmp_path / "ca.crt").write_bytes(certs.cert_to_pem(ca[0]))
    with pytest.raises(certs.CertificateFileError, match=r"ca\.key does not"):
        ensure(tmp_path)


@uses_key_pool
def test_ensure_refuses_a_ca_key_that_does_not_match(tmp_path, ca, other_ca):
    (tmp_path / "ca.crt").write_bytes(certs.cert_to_pem(ca[0]))
    (tmp_path / "ca.key").write_bytes(certs.key_to_pem(other_ca[1]))
    with pytest.raises(certs.CertificateFileError, match="not the private key"):
        ensure(tmp_path)


@uses_key_pool
def test_ensure_refuses_a_corrupt_ca(tmp_path, ca):
    (tmp_path / "ca.crt").write_bytes(certs.cert_to_pem(ca[0]))
    (tmp_path / "ca.key").write_text("not a key")
    with pytest.raises(certs.CertificateFileError, match=r"ca\.key"):
        ensure(tmp_path)


@uses_key_pool
def test_ensure_refuses_a_serving_cert_in_place_of_the_ca(tmp_path, ca, serving_key):
    (tmp_path / "ca.crt").write_bytes(certs.cert_to_pem(issue(ca, serving_key)))
    (tmp_path / "ca.key").write_bytes(certs.key_to_pem(serving_key))
    with pytest.raises(certs.CertificateFileError, match="not a CA certificate"):
        ensure(tmp_path)


@uses_key_pool
def test_ensure_validates_its_inputs(tmp_path):
    with pytest.raises(ValueError, match="at least one DNS name or IP"):
        ensure(tmp_path, dns=[], ips=[])
    with pytest.raises(ValueError, match="invalid IP address"):
        ensure(tmp_path, ips=["localhost"])
    with pytest.raises(ValueError, match="at least 1 day"):
        ensure(tmp_path, days=0)
    assert not any(tmp_path.iterdir())
