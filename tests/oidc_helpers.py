"""Test helpers for the oidc modules: tokens signed as the API server signs them, certificate
chains, and an https static site on 127.0.0.1 standing in for S3 or a CDN."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import ipaddress
import json
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from injector.oidc.documents import key_id

ISSUER = "https://oidc.example.com/cluster-a"
NOW = 1_750_000_000.0


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_token(key: Any, claims: dict[str, Any], *, kid: str | None = None, alg: str = "") -> str:
    """A compact JWS as the API server makes one (RS256 for RSA keys, ES256 for P-256);
    `kid=""` leaves the key id out."""
    alg = alg or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
    header = {"alg": alg, "kid": key_id(key.public_key()) if kid is None else kid}
    if kid == "":
        del header["kid"]
    signed = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}".encode()
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signed.decode()}.{b64url(signature)}"


def claims_for(issuer: str = ISSUER, now: float = NOW, **overrides: Any) -> dict[str, Any]:
    claims = {"iss": issuer, "aud": ["sts.amazonaws.com"], "sub": "system:serviceaccount:team:app",
              "iat": int(now), "nbf": int(now), "exp": int(now) + 3600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(subject: str, key: Any, issuer: x509.Certificate | None, issuer_key: Any, *, ca: bool,
                 days: float = 2, sans: tuple[x509.GeneralName, ...] = ()) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject))
               .issuer_name(issuer.subject if issuer else _name(subject))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False)
               .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False,
                                            key_encipherment=not ca, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=ca, crl_sign=ca, encipher_only=False,
                                            decipher_only=False), critical=True))
    if not ca:
        builder = (builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Chain:
    """A root, an intermediate it signed and a 127.0.0.1/localhost leaf the intermediate signed."""

    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    leaf_key: Any

    @staticmethod
    def sha1(cert: x509.Certificate) -> str:
        return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    def pem(self, *certs: x509.Certificate) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    def leaf_key_pem(self) -> bytes:
        return self.leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())


def make_chain(leaf_days: float = 2) -> Chain:
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
    root = _certificate("test root", keys[0], None, keys[0], ca=True)
    intermediate = _certificate("test intermediate", keys[1], root, keys[0], ca=True)
    sans = (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    leaf = _certificate("localhost", keys[2], intermediate, keys[1], ca=False, days=leaf_days, sans=sans)
    return Chain(root, intermediate, leaf, keys[2])


def self_signed_leaf() -> tuple[x509.Certificate, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    return _certificate("localhost", key, None, key, ca=False,
                        sans=(x509.IPAddress(ipaddress.ip_address("127.0.0.1")),)), key


def pem_public(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def pem_private(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class StaticSite:
    """`directory` over https on 127.0.0.1 (an ephemeral port), serving `cert_pem` (the leaf
    first, then whatever chain the test wants served) — a stand-in for S3 or a CDN."""

    def __init__(self, directory: Path, cert_pem: bytes, key_pem: bytes, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "site.crt").write_bytes(cert_pem)
        (workdir / "site.key").write_bytes(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(workdir / "site.crt", workdir / "site.key")
        handler = functools.partial(_Quiet, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_chain(tmp: Path, chain: Chain, *certs) -> StaticSite:
    (tmp / "site").mkdir(exist_ok=True)
    return StaticSite(tmp / "site", chain.pem(*certs), chain.leaf_key_pem(), tmp / "tls")
