"""When a certificate must be replaced: the one renewal policy of `certs` and of the
self-managed controller. Pure (no files, no API server)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

CLOCK_SKEW = timedelta(minutes=5)


def renewal_window(lifetime: timedelta, renew_before: timedelta) -> timedelta:
    """How long before its end a serving certificate is replaced: `renew_before`, capped at a
    third of its lifetime, so that a short-lived certificate is not re-issued on every pass."""
    return min(renew_before, lifetime / 3)


def ca_due(ca_cert: x509.Certificate, now: datetime, renew_before: timedelta) -> bool:
    """The CA ends within `renew_before`: a new CA is made (and the caBundle must follow)."""
    return ca_cert.not_valid_after_utc - now <= renew_before


def serving_cert_problem(
    cert: x509.Certificate,
    public_key: PublicKeyTypes,
    ca_cert: x509.Certificate,
    wanted_dns: Sequence[str],
    wanted_ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
    now: datetime,
    renew_window: timedelta,
) -> str | None:
    """Why a serving certificate must be replaced (wrong key, other CA, expiring, other
    names), or None if it is fine."""
    if cert.public_key() != public_key:
        return "key does not match certificate"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "not issued by the CA"
    if cert.not_valid_after_utc - now <= renew_window:
        return "expiring"
    if cert.not_valid_before_utc > now + CLOCK_SKEW:
        return "not yet valid"
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "names changed"
    if set(sans.get_values_for_type(x509.DNSName)) != set(wanted_dns) or set(
        sans.get_values_for_type(x509.IPAddress)
    ) != set(wanted_ips):
        return "names changed"
    return None
