"""Would the API server call our webhook for this pod, and could it? Pure checks on the
MutatingWebhookConfiguration: which of its webhooks is ours, its label selectors against the
pod and its namespace, and whether its caBundle verifies a serving certificate.

Kept apart from `doctor` (the findings) and `live` (the reads) so the selector and
certificate rules are tested on plain values.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from typing import Any

from cryptography import x509

SKIP_LABEL = "eks.amazonaws.com/skip-pod-identity-webhook"


def selector_matches(selector: Any, labels: Mapping[str, str]) -> tuple[bool, str]:
    """A LabelSelector against labels (an absent or empty selector matches everything);
    when it does not match, the first requirement that fails, in words."""
    if not isinstance(selector, dict):
        return True, ""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False, f"matchLabels {key}={value} (the object has {_shown(labels, key)})"
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key", ""), expression.get("operator", "")
        values = list(expression.get("values") or [])
        present = key in labels
        holds = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }.get(operator, False)
        if not holds:
            listed = f" {values}" if values else ""
            return False, f"{key} {operator}{listed} (the object has {_shown(labels, key)})"
    return True, ""


def _shown(labels: Mapping[str, str], key: str) -> str:
    return f"{key}={labels[key]}" if key in labels else f"no label {key}"


def intercepts_pod_creation(webhook: Mapping[str, Any]) -> bool:
    """Do the webhook's rules send it v1 Pod CREATEs?"""
    for rule in webhook.get("rules") or []:
        operations = rule.get("operations") or []
        groups, resources = rule.get("apiGroups") or [], rule.get("resources") or []
        if (("CREATE" in operations or "*" in operations) and ("" in groups or "*" in groups)
                and ("pods" in resources or "*" in resources or "*/*" in resources)):
            return True
    return False


def describe_client(webhook: Mapping[str, Any]) -> str:
    config = webhook.get("clientConfig") or {}
    if config.get("url"):
        return str(config["url"])
    service = config.get("service") or {}
    return f"service {service.get('namespace', '?')}/{service.get('name', '?')}:{service.get('port', 443)}"


def ca_bundle_problem(ca_bundle_b64: str, certificate_pem: bytes, dns_names: tuple[str, ...] = (),
                      now: dt.datetime | None = None) -> str:
    """Why the API server would refuse this serving certificate with this caBundle ("" when it
    would accept it): not signed by a CA of the bundle, expired, or without the name dialled."""
    if not ca_bundle_b64:
        return "the webhook's clientConfig has no caBundle (the API server then trusts only its own roots)"
    try:
        cas = x509.load_pem_x509_certificates(base64.b64decode(ca_bundle_b64))
    except ValueError as exc:
        return f"the caBundle is not base64 PEM certificates: {exc}"
    try:
        leaf = x509.load_pem_x509_certificates(certificate_pem)[0]
    except (ValueError, IndexError) as exc:
        return f"the serving certificate is not PEM: {exc}"
    now = now or dt.datetime.now(dt.UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        return f"the serving certificate is valid {leaf.not_valid_before_utc:%Y-%m-%d} to " \
               f"{leaf.not_valid_after_utc:%Y-%m-%d}, not now"
    intermediates = x509.load_pem_x509_certificates(certificate_pem)[1:]
    chained = any(_issued_by(leaf, ca) for ca in cas) or any(
        _issued_by(leaf, middle) and any(_issued_by(middle, ca) for ca in cas) for middle in intermediates)
    if not chained:
        return (f"the serving certificate (issuer {leaf.issuer.rfc4514_string()}) is not signed by any CA of the "
                f"caBundle ({', '.join(ca.subject.rfc4514_string() for ca in cas)})")
    if dns_names:
        try:
            names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            sans = set(names.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            sans = set()
        if not sans & set(dns_names):
            return f"the serving certificate names {sorted(sans)}, not {dns_names[0]}"
    return ""


def _issued_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(ca)
    except Exception:  # InvalidSignature, or a key type that cannot have signed it
        return False
    return True
