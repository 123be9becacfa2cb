"""The cluster's OIDC identity provider as IAM and STS see it: documents, tokens, thumbprint.
Pure: documents and tokens are given; fetching them is `oidc.fetch`'s.

For IRSA outside EKS the API server's issuer must be a public https URL that serves a
discovery document and a JWKS; IAM holds an OIDC provider for that URL (audience
`sts.amazonaws.com`, a certificate thumbprint), and STS checks each web-identity token
against what the URL publishes. This module is the pure part of that chain, with no I/O:
building the documents to publish (`Publication`), checking a token the way STS does
(`verify_token`), and the thumbprint IAM expects from a served chain (`chain_thumbprint`).
The network side is `oidc_fetch`; `oidc verify` and `doctor` share `verify_token`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import itertools
import json
import re
import shlex
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509 import verification

DISCOVERY_PATH = ".well-known/openid-configuration"
# The API server always serves its keys here, whatever --service-account-jwks-uri says.
DEFAULT_JWKS_PATH = "keys.json"
STS_AUDIENCE = "sts.amazonaws.com"
# What the API server signs with: RSA keys as RS256, P-256 keys as ES256.
ALGORITHMS = {"RS256": "RSA", "ES256": "EC"}
# A token's nbf/iat may be this far in the future (clocks differ); exp is taken as is.
CLOCK_SKEW = 60


class OidcError(ValueError):
    """Input that cannot make or check OIDC documents; the message says what and why."""


# -- issuer URLs -----------------------------------------------------------------------------
def check_issuer(url: str) -> str:
    """The issuer as STS compares it: https, a host, no query, fragment or trailing slash.

    Discovery appends `/.well-known/openid-configuration` to the issuer verbatim, and STS
    compares `iss` with the provider URL as a string, so no normalisation is done here.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise OidcError(f"issuer {url!r} must be an https:// URL with a host (IAM accepts nothing else)")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise OidcError(f"issuer {url!r} must not have a query or fragment")
    if url.endswith("/"):
        raise OidcError(f"issuer {url!r} must not end with '/': tokens would carry it and discovery would "
                        f"be looked up at {url}/.well-known/…; use {url.rstrip('/')!r}")
    return url


def discovery_url(issuer: str) -> str:
    return f"{issuer}/{DISCOVERY_PATH}"


def provider_host_path(issuer: str) -> str:
    """The provider's name in IAM condition keys (`HOST/PATH:sub`, `HOST/PATH:aud`)."""
    return issuer.split("://", 1)[1]


def relative_jwks_path(issuer: str, jwks_uri: str) -> str:
    """The JWKS path under the issuer that the cluster already names, else `keys.json`."""
    prefix = f"{issuer}/"
    if jwks_uri.startswith(prefix) and "?" not in jwks_uri and "#" not in jwks_uri:
        rest = jwks_uri[len(prefix):]
        if rest and ".." not in rest.split("/") and rest != DISCOVERY_PATH:
            return rest
    return DEFAULT_JWKS_PATH


# -- keys ------------------------------------------------------------------------------------
def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not a string")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _uint(value: int, length: int | None = None) -> str:
    return _b64url(value.to_bytes(length or max(1, (value.bit_length() + 7) // 8), "big"))


def key_id(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    """The `kid` the API server gives a key: base64url(SHA-256(DER SubjectPublicKeyInfo))."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _b64url(hashlib.sha256(der).digest())


def public_jwk(public_key: Any) -> dict[str, str]:
    """A signing key as the API server lists it in its JWKS."""
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return {"use": "sig", "kty": "RSA", "kid": key_id(public_key), "alg": "RS256",
                "n": _uint(numbers.n), "e": _uint(numbers.e)}
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, ec.SECP256R1):
        numbers = public_key.public_numbers()
        return {"use": "sig", "kty": "EC", "kid": key_id(public_key), "alg": "ES256", "crv": "P-256",
                "x": _uint(numbers.x, 32), "y": _uint(numbers.y, 32)}
    raise OidcError(f"unsupported signing key {type(public_key).__name__}: the API server signs with RSA "
                    "(RS256) or P-256 (ES256) keys")


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.S)


def load_public_keys(pem: bytes, source: str) -> list[Any]:
    """Every public key in a PEM file: public keys, or the public half of private keys
    (kubeadm's sa.pub, k3s's service.key). Nothing private is ever returned."""
    keys: list[Any] = []
    for match in _PEM_BLOCK.finditer(pem):
        label, text = match.group(1).decode(), match.group(0)
        try:
            if label.endswith("PRIVATE KEY"):
                keys.append(serialization.load_pem_private_key(text, password=None).public_key())
            elif label.endswith("PUBLIC KEY"):
                keys.append(serialization.load_pem_public_key(text))
            elif label == "CERTIFICATE":
                keys.append(x509.load_pem_x509_certificate(text).public_key())
        except (ValueError, TypeError) as exc:
            raise OidcError(f"{source}: cannot read the {label} block: {exc}") from None
    if not keys:
        raise OidcError(f"{source}: no PEM public key, private key or certificate in it")
    for key in keys:
        public_jwk(key)  # unsupported kinds fail here, naming the type
    return keys


def jwks_from_keys(keys: Iterable[Any]) -> dict[str, list[dict[str, str]]]:
    """A JWKS of these keys, each once, in the order given."""
    seen: dict[str, dict[str, str]] = {}
    for key in keys:
        jwk = public_jwk(key)
        seen.setdefault(jwk["kid"], jwk)
    return {"keys": list(seen.values())}


def jwk_public_key(jwk: Mapping[str, Any]) -> Any:
    """The public key of one JWKS entry (RSA or P-256); OidcError names what is wrong."""
    kid = jwk.get("kid", "")
    try:
        if jwk.get("kty") == "RSA":
            n, e = (int.from_bytes(_b64url_decode(jwk[k]), "big") for k in ("n", "e"))
            return rsa.RSAPublicNumbers(e, n).public_key()
        if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
            x, y = (int.from_bytes(_b64url_decode(jwk[k]), "big") for k in ("x", "y"))
            return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except (KeyError, ValueError, TypeError, binascii.Error) as exc:
        raise OidcError(f"JWKS key {kid!r} is malformed: {exc}") from None
    raise OidcError(f"JWKS key {kid!r} has kty {jwk.get('kty')!r} crv {jwk.get('crv')!r}; only RSA and EC P-256 "
                    "are used by the API server")


def check_jwks(jwks: Any, source: str) -> dict[str, Any]:
    """A JWKS whose every key can be read (so nothing broken gets published)."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise OidcError(f"{source}: not a JWKS with keys ({str(jwks)[:120]})")
    for jwk in jwks["keys"]:
        if not isinstance(jwk, dict):
            raise OidcError(f"{source}: a key is not an object")
        jwk_public_key(jwk)
    return jwks


# -- the documents to publish ----------------------------------------------------------------
@dataclass(frozen=True)
class Publication:
    """The discovery document and JWKS for `issuer`, and where each goes under the upload root."""

    issuer: str
    jwks: dict[str, Any]
    jwks_path: str = DEFAULT_JWKS_PATH
    extra: dict[str, Any] = field(default_factory=dict)  # other discovery fields the cluster published

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/{self.jwks_path}"

    @property
    def discovery(self) -> dict[str, Any]:
        algorithms = sorted({k.get("alg") or ("RS256" if k.get("kty") == "RSA" else "ES256")
                             for k in self.jwks["keys"]})
        return {"response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                **self.extra, "id_token_signing_alg_values_supported": algorithms,
                "issuer": self.issuer, "jwks_uri": self.jwks_uri}

    def files(self) -> dict[str, bytes]:
        """Relative path → content; uploaded as is under the issuer's URL."""
        def dump(document: Any) -> bytes:
            return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"

        return {DISCOVERY_PATH: dump(self.discovery), self.jwks_path: dump(self.jwks)}


def publication_from_cluster(issuer: str, cluster_discovery: Mapping[str, Any], cluster_jwks: Any,
                             source: str = "the API server") -> Publication:
    """What to publish for `issuer` from the API server's own documents.

    Raises IssuerMismatch when the API server signs tokens with another issuer: STS would
    compare that `iss` with the provider URL and reject every token.
    """
    configured = cluster_discovery.get("issuer")
    if configured != issuer:
        raise IssuerMismatch(str(configured), issuer)
    extra = {k: v for k, v in cluster_discovery.items() if k not in ("issuer", "jwks_uri")}
    extra.pop("id_token_signing_alg_values_supported", None)
    jwks_path = relative_jwks_path(issuer, str(cluster_discovery.get("jwks_uri", "")))
    return Publication(issuer, check_jwks(cluster_jwks, f"{source} JWKS"), jwks_path, extra)


class IssuerMismatch(OidcError):
    """The API server's issuer is not the URL being published; the message says how to fix it."""

    def __init__(self, configured: str, wanted: str) -> None:
        self.configured, self.wanted = configured, wanted
        super().__init__(
            f"the API server's issuer is {configured!r}, not --issuer {wanted!r}: its tokens carry "
            f"iss={configured!r} and STS compares that with the provider URL; "
            f"{apiserver_flags(wanted)}, then publish again")


def apiserver_flags(issuer: str, jwks_path: str = DEFAULT_JWKS_PATH) -> str:
    """The kube-apiserver flags that make its tokens and documents match `issuer`."""
    return (f"restart kube-apiserver with --service-account-issuer={issuer} (listed first; keep the old "
            f"issuer as a second --service-account-issuer while old tokens live) and "
            f"--service-account-jwks-uri={issuer}/{jwks_path}")


def create_provider_command(issuer: str, thumbprint: str, audiences: Sequence[str] = (STS_AUDIENCE,)) -> str:
    """The AWS CLI call that registers the issuer with IAM."""
    return shlex.join(["aws", "iam", "create-open-id-connect-provider", "--url", issuer,
                       "--client-id-list", *audiences, "--thumbprint-list", thumbprint])


# -- tokens, as STS checks them ----------------------------------------------------------------
class TokenRejected(Exception):
    """What STS would answer `InvalidIdentityToken` for; `check` names the failed check
    (malformed, discovery, issuer, key, signature, audience, expired, not-yet-valid)."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


@dataclass(frozen=True)
class VerifiedToken:
    """A token that passed every check, and what a role's trust policy would see of it."""

    header: dict[str, Any]
    claims: dict[str, Any]

    @property
    def subject(self) -> str:
        return str(self.claims.get("sub", ""))

    @property
    def audiences(self) -> list[str]:
        aud = self.claims.get("aud")
        return [aud] if isinstance(aud, str) else list(aud or [])

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.claims["exp"], UTC)


def decode_token(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Header, claims, signed input and signature of a compact JWS; TokenRejected if malformed."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise TokenRejected("malformed", f"not a JWT: {len(parts)} dot-separated parts instead of 3")
    try:
        header, claims = (json.loads(_b64url_decode(p)) for p in parts[:2])
        signature = _b64url_decode(parts[2])
    except (ValueError, binascii.Error) as exc:
        raise TokenRejected("malformed", f"not a JWT: {exc}") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenRejected("malformed", "not a JWT: header or claims are not JSON objects")
    return header, claims, f"{parts[0]}.{parts[1]}".encode(), signature


def _verify_signature(jwk: Mapping[str, Any], alg: str, signed: bytes, signature: bytes) -> None:
    key = jwk_public_key(jwk)
    if alg == "RS256":
        if not isinstance(key, rsa.RSAPublicKey):
            raise InvalidSignature
        key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    else:
        if not isinstance(key, ec.EllipticCurvePublicKey) or len(signature) != 64:
            raise InvalidSignature
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA256()))


def _timestamp(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected("malformed", f"claim {name} is {value!r}, not a number")
    return float(value)


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def verify_token(token: str, *, issuer: str, discovery: Mapping[str, Any], jwks: Mapping[str, Any],
                 audience: str = STS_AUDIENCE, now: float | None = None) -> VerifiedToken:
    """Check `token` against what `issuer` publishes, in the order STS does: the provider's
    documents, `iss`, the signing key and signature, `aud`, then the lifetime. The first
    failure raises TokenRejected naming both sides of the mismatch."""
    now = time.time() if now is None else now
    if discovery.get("issuer") != issuer:
        raise TokenRejected("discovery", f"the discovery document at {discovery_url(issuer)} says issuer "
                                         f"{discovery.get('issuer')!r}, not {issuer!r}")
    header, claims, signed, signature = decode_token(token)
    if claims.get("iss") != issuer:
        raise TokenRejected("issuer", f"token iss is {claims.get('iss')!r}, not {issuer!r}: the API server's "
                                      f"--service-account-issuer must be {issuer}")
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise TokenRejected("malformed", f"token alg is {alg!r}; STS and the API server use {', '.join(ALGORITHMS)}")
    published = [k for k in jwks.get("keys", []) if isinstance(k, dict)]
    kid = header.get("kid")
    candidates = [k for k in published if k.get("kid") == kid] if kid else [
        k for k in published if k.get("kty") == ALGORITHMS[alg]]
    if not candidates:
        kids = ", ".join(repr(k.get("kid")) for k in published) or "none"
        raise TokenRejected("key", f"token key id {kid!r} is not in the published JWKS at {discovery.get('jwks_uri')} "
                                   f"(it has {kids}): the signing key changed after the documents were published; "
                                   "run `oidc publish` again and upload the new JWKS")
    for jwk in candidates:
        try:
            _verify_signature(jwk, alg, signed, signature)
            break
        except (InvalidSignature, OidcError):
            continue
    else:
        raise TokenRejected("signature", f"token signature ({alg}, key id {kid!r}) does not verify with the "
                                         f"published key of that id at {discovery.get('jwks_uri')}: the "
                                         "published JWKS is stale or the token was altered")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if audience not in audiences:
        raise TokenRejected("audience", f"token audience {audiences!r} does not include {audience!r} (the IAM "
                                        f"provider's client id); request the token with audience {audience}")
    exp, nbf, iat = (_timestamp(claims, name) for name in ("exp", "nbf", "iat"))
    if exp is None:
        raise TokenRejected("malformed", "token has no exp claim")
    if now >= exp:
        raise TokenRejected("expired", f"token expired at {_when(exp)} ({now - exp:.0f}s ago)")
    for name, value in (("nbf", nbf), ("iat", iat)):
        if value is not None and value > now + CLOCK_SKEW:
            raise TokenRejected("not-yet-valid", f"token {name} is {_when(value)}, {value - now:.0f}s in the future "
                                                 "(clock skew between the API server and here?)")
    if not claims.get("sub"):
        raise TokenRejected("malformed", "token has no sub claim (a role's trust policy matches on it)")
    return VerifiedToken(header, claims)


# -- the provider's thumbprint -----------------------------------------------------------------
class ChainError(OidcError):
    """A served certificate chain IAM cannot take a thumbprint from (or STS would not accept)."""


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def chain_thumbprint(chain: Sequence[x509.Certificate], host: str, now: datetime | None = None) -> str:
    """SHA-1 (hex) of the last CA certificate in the chain a host serves, leaf first.

    IAM pins that certificate; the chain must lead from the leaf to it, each certificate
    signed by the next, and the leaf must be valid now for `host`, or the thumbprint pins
    something STS will never see working.
    """
    if not chain:
        raise ChainError(f"{host} served no certificate")
    leaf, top = chain[0], chain[-1]
    if len(chain) == 1:
        if leaf.issuer == leaf.subject:
            raise ChainError(f"{host} serves a self-signed certificate ({_name(leaf)}); IAM needs the thumbprint of "
                             "a CA that issued the host's certificate: serve a CA-issued certificate and its chain")
        raise ChainError(f"{host} serves only its own certificate ({_name(leaf)}), not the CA chain that issued it "
                         f"(issuer {leaf.issuer.rfc4514_string()}); configure the server to send the intermediate "
                         "certificates too")
    for i, (cert, issuer) in enumerate(itertools.pairwise(chain)):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise ChainError(f"{host} serves an incomplete or out-of-order chain: certificate {i} ({_name(cert)}, "
                             f"issued by {cert.issuer.rfc4514_string()}) is not signed by certificate {i + 1} "
                             f"({_name(issuer)})") from None
        if not _is_ca(issuer):
            raise ChainError(f"{host}: certificate {i + 1} of the chain ({_name(issuer)}) signs another but is "
                             "not a CA")
    builder = verification.PolicyBuilder().store(verification.Store([top]))
    if now is not None:
        builder = builder.time(now)
    try:
        subject: verification.Subject = verification.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = verification.DNSName(host)
    try:
        builder.build_server_verifier(subject).verify(leaf, list(chain[1:-1]))
    except verification.VerificationError as exc:
        raise ChainError(f"{host}: its certificate chain would not be accepted: {exc}") from None
    return hashlib.sha1(top.public_bytes(serialization.Encoding.DER)).hexdigest()
