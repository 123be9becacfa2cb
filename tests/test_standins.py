"""The AWS stand-ins of the cluster tier (tests/cluster/standins), driven by the real botocore.

The stand-ins run as the cluster tier runs them, as processes with their command line, on
127.0.0.1. This test plays everything around them: an OIDC issuer (discovery document and JWKS over
TLS, with RSA and EC keys made here) standing for the API server's, and, for the agent only, a
TokenReview endpoint (the cluster tier uses the real API server's).

Each refusal is one row: the token or role that breaks one rule, and the error AWS answers for it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.server
import ipaddress
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

STANDINS = Path(__file__).resolve().parent / "cluster" / "standins"
sys.path.insert(0, str(STANDINS))

import sts as sts_standin  # noqa: E402
from standin_common import CredentialIssuer  # noqa: E402

ACCOUNT = "111122223333"
SECRET = "test-secret-shared-by-both-standins"
NO_RETRIES = BotoConfig(retries={"max_attempts": 1, "mode": "standard"})


# -- PKI, tokens ----------------------------------------------------------------------------
def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path


def make_pki(directory: Path) -> Pki:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("standins-test-ca")).issuer_name(_name("standins-test-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, usage, san: list[x509.GeneralName] | None) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return (cert.public_bytes(serialization.Encoding.PEM),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))

    files = {"ca.crt": ca.public_bytes(serialization.Encoding.PEM)}
    files["server.crt"], files["server.key"] = leaf(
        "127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    files["admin.crt"], files["admin.key"] = leaf("admin", ExtendedKeyUsageOID.CLIENT_AUTH, None)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    d = directory
    return Pki(d, d / "ca.crt", d / "server.crt", d / "server.key", d / "admin.crt", d / "admin.key")


@dataclass
class SigningKey:
    kid: str
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    alg: str

    def jwk(self) -> dict:
        public = self.key.public_key().public_numbers()

        def number(n: int, size: int | None = None) -> str:
            return b64url(n.to_bytes(size or (n.bit_length() + 7) // 8, "big"))

        if isinstance(self.key, rsa.RSAPrivateKey):
            return {"kty": "RSA", "use": "sig", "alg": self.alg, "kid": self.kid, "n": number(public.n),
                    "e": number(public.e)}
        return {"kty": "EC", "use": "sig", "alg": self.alg, "kid": self.kid, "crv": "P-256",
                "x": number(public.x, 32), "y": number(public.y, 32)}


def sign_jwt(claims: dict, key: SigningKey, *, kid: str | None = None, alg: str | None = None) -> str:
    header = {"alg": alg or key.alg, "kid": kid or key.kid}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}".encode()
    if isinstance(key.key, rsa.RSAPrivateKey):
        signature = key.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(key.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing_input.decode()}.{b64url(signature)}"


def unsigned_jwt(claims: dict) -> str:
    """alg "none": a JWS with no signature."""
    return f"{b64url(json.dumps({'alg': 'none', 'kid': 'key-1'}).encode())}.{b64url(json.dumps(claims).encode())}."


# -- servers played by this test ---------------------------------------------------------------
class _TlsServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler, pki: Pki, *, client_ca: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        if client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(pki.ca)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class OidcIssuer:
    """Two issuers on one server: `url` (registered with the STS stand-in) and `url/other` (not)."""

    def __init__(self, pki: Pki) -> None:
        self.keys: dict[str, list[dict]] = {"": [], "/other": []}
        self.jwks_fetches = 0
        issuer = self

        class Handler(_Quiet):
            def do_GET(self) -> None:
                for prefix, keys in issuer.keys.items():
                    if self.path == f"{prefix}/.well-known/openid-configuration":
                        base = issuer.server.url + prefix
                        return self.answer(200, {"issuer": base, "jwks_uri": f"{base}/openid/v1/jwks",
                                                 "id_token_signing_alg_values_supported": ["RS256", "ES256"]})
                    if self.path == f"{prefix}/openid/v1/jwks":
                        issuer.jwks_fetches += 1
                        return self.answer(200, {"keys": keys})
                return self.answer(404, {})

        self.server = _TlsServer(Handler, pki)
        self.url = self.server.url
        self.host_path = self.url.removeprefix("https://")


class FakeTokenReviews:
    """POST /apis/authentication.k8s.io/v1/tokenreviews answering from `statuses` (token → status);
    requires a client certificate of the test CA, like the API server for the admin."""

    def __init__(self, pki: Pki) -> None:
        self.statuses: dict[str, dict] = {}
        self.requests: list[dict] = []
        fake = self

        class Handler(_Quiet):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                peer = dict(x[0] for x in self.connection.getpeercert()["subject"])
                fake.requests.append({"path": self.path, "review": review, "client": peer.get("commonName")})
                if self.path != "/apis/authentication.k8s.io/v1/tokenreviews":
                    return self.answer(404, {})
                status = fake.statuses.get(review["spec"]["token"],
                                           {"authenticated": False, "error": "[invalid bearer token]"})
                return self.answer(201, {**review, "status": status})

        self.server = _TlsServer(Handler, pki, client_ca=True)
        self.url = self.server.url


# -- the stand-ins as processes ----------------------------------------------------------------
@dataclass
class Standin:
    process: subprocess.Popen
    log: Path
    url: str = ""
    ssl: ssl.SSLContext | None = None
    entries: list[dict] = field(default_factory=list)

    @classmethod
    def start(cls, script: str, args: list[str], log: Path, ca: Path | None = None) -> Standin:
        handle = log.open("w")
        process = subprocess.Popen([sys.executable, str(STANDINS / script), *args], stdout=subprocess.DEVNULL,
                                   stderr=handle)
        handle.close()
        standin = cls(process, log, ssl=ssl.create_default_context(cafile=str(ca)) if ca else None)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for line in log.read_text().splitlines():
                if '"listening"' in line:
                    standin.url = json.loads(line)["url"]
                    return standin
            if process.poll() is not None:
                raise AssertionError(f"{script} exited {process.returncode}: {log.read_text()}")
            time.sleep(0.02)
        process.kill()
        raise AssertionError(f"{script} did not listen in time: {log.read_text()}")

    def decisions(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/_standin/decisions", context=self.ssl, timeout=5) as resp:
            return json.loads(resp.read())

    def last_decision(self) -> dict:
        return self.decisions()[-1]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=10)


def trust(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


@dataclass
class World:
    issuer: OidcIssuer
    key: SigningKey  # published in the registered issuer's JWKS
    ec_key: SigningKey  # published too (ES256)
    stranger: SigningKey  # published nowhere
    other_issuer_key: SigningKey  # published by the unregistered issuer
    pki: Pki
    config_path: Path
    config: dict
    sts: Standin

    def role(self, name: str) -> str:
        return f"arn:aws:iam::{ACCOUNT}:role/{name}"

    @property
    def provider(self) -> str:
        return f"arn:aws:iam::{ACCOUNT}:oidc-provider/{self.issuer.host_path}"

    def claims(self, **overrides) -> dict:
        now = int(time.time())
        claims = {"iss": self.issuer.url, "sub": "system:serviceaccount:demo:app", "aud": ["sts.amazonaws.com"],
                  "exp": now + 3600, "iat": now, "nbf": now,
                  "kubernetes.io": {"namespace": "demo", "serviceaccount": {"name": "app"}}}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, key: SigningKey | None = None, **overrides) -> str:
        return sign_jwt(self.claims(**overrides), key or self.key)

    def client(self):
        return boto3.client("sts", endpoint_url=self.sts.url, region_name="us-east-1", verify=str(self.pki.ca),
                            aws_access_key_id="unused", aws_secret_access_key="unused", config=NO_RETRIES)

    def assume(self, role: str, token: str, session: str = "test-session", **kwargs) -> dict:
        return self.client().assume_role_with_web_identity(RoleArn=self.role(role), RoleSessionName=session,
                                                           WebIdentityToken=token, **kwargs)

    def write_config(self) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.config))
        os.replace(tmp, self.config_path)


def _statement(provider: str, condition: dict | None = None, effect: str = "Allow",
               action: str | list[str] = "sts:AssumeRoleWithWebIdentity") -> dict:
    stmt = {"Effect": effect, "Principal": {"Federated": provider}, "Action": action}
    if condition:
        stmt["Condition"] = condition
    return stmt


@contextlib.contextmanager
def running_world(directory: Path) -> Iterator[World]:
    """The STS stand-in and what plays around it (PKI, issuer, keys, roles), in `directory`."""
    pki = make_pki(directory)
    issuer = OidcIssuer(pki)
    key = SigningKey("key-1", rsa.generate_private_key(65537, 2048), "RS256")
    ec_key = SigningKey("key-ec", ec.generate_private_key(ec.SECP256R1()), "ES256")
    stranger = SigningKey("key-1", rsa.generate_private_key(65537, 2048), "RS256")
    other = SigningKey("other-1", ec.generate_private_key(ec.SECP256R1()), "ES256")
    issuer.keys[""] = [key.jwk(), ec_key.jwk()]
    issuer.keys["/other"] = [other.jwk()]

    provider = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{issuer.host_path}"
    hp = issuer.host_path
    app = {"StringEquals": {f"{hp}:sub": "system:serviceaccount:demo:app", f"{hp}:aud": "sts.amazonaws.com"}}
    roles = {
        "app": trust(_statement(provider, app)),
        # IAM hands the document back as URL-encoded JSON text; the stand-in takes that form too.
        "stored-as-text": json.dumps(trust(_statement(provider, app))),
        "like": trust(_statement(provider, {"StringLike": {f"{hp}:sub": "system:serviceaccount:demo:*",
                                                           f"{hp}:aud": "sts.amazon?ws.com"}},
                                 action=["sts:AssumeRole*"])),
        "any-aud": trust(_statement(provider, {"ForAnyValue:StringEquals": {f"{hp}:aud": ["sts.amazonaws.com"]}})),
        "all-aud": trust(_statement(provider, {"ForAllValues:StringEquals": {f"{hp}:aud": ["sts.amazonaws.com"]}})),
        "not-blocked": trust(_statement(provider, {"StringNotEquals": {
            f"{hp}:sub": "system:serviceaccount:demo:blocked"}})),
        "deny-app": trust(_statement(provider, {"StringLike": {f"{hp}:sub": "*"}}),
                          _statement(provider, {"StringEquals": {f"{hp}:sub": "system:serviceaccount:demo:app"}},
                                     effect="Deny")),
        "other-provider": trust(_statement(f"arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.example.com/id/X", app)),
        "s3-only": trust(_statement(provider, app, action="s3:*")),
        "long": {"AssumeRolePolicyDocument": trust(_statement(provider, app)), "MaxSessionDuration": 7200},
    }
    config = {"account": ACCOUNT, "providers": {issuer.url: ["sts.amazonaws.com"]},
              "roles": {f"arn:aws:iam::{ACCOUNT}:role/{name}": doc for name, doc in roles.items()}}
    config_path = directory / "sts-config.json"
    config_path.write_text(json.dumps(config))
    sts = Standin.start("sts.py", ["--listen", "127.0.0.1:0", "--tls-cert", str(pki.server_cert), "--tls-key",
                                   str(pki.server_key), "--ca-file", str(pki.ca), "--config", str(config_path),
                                   "--secret", SECRET], directory / "sts.log", ca=pki.ca)
    yield World(issuer, key, ec_key, stranger, other, pki, config_path, config, sts)
    rc = sts.stop()
    issuer.server.shutdown()
    assert rc == 0, f"SIGTERM must end the STS stand-in with 0, got {rc}: {sts.log.read_text()[-2000:]}"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    with running_world(tmp_path_factory.mktemp("standins")) as running:
        yield running


@pytest.fixture
def clean_aws_env(monkeypatch, tmp_path) -> pytest.MonkeyPatch:
    """No credentials, profile or metadata service of this machine leak into the SDK's chain."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


# == STS: AssumeRoleWithWebIdentity ===========================================================
def test_assume_role_with_web_identity_answers_what_sts_answers(world: World) -> None:
    before = time.time()
    answer = world.assume("app", world.token(), session="my-session", DurationSeconds=900)

    creds = answer["Credentials"]
    assert re.fullmatch(r"ASIA[A-Z2-7]{16}", creds["AccessKeyId"])
    assert creds["SecretAccessKey"] and creds["SessionToken"]
    assert before + 890 < creds["Expiration"].timestamp() < time.time() + 910
    assert answer["SubjectFromWebIdentityToken"] == "system:serviceaccount:demo:app"
    assert answer["AssumedRoleUser"]["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/app/my-session"
    assert re.fullmatch(r"AROA[A-Z2-7]{17}:my-session", answer["AssumedRoleUser"]["AssumedRoleId"])
    assert answer["Provider"] == world.provider
    assert answer["Audience"] == "sts.amazonaws.com"
    decision = world.sts.last_decision()
    assert decision | {"verdict": "allow", "role": world.role("app"), "sub": "system:serviceaccount:demo:app",
                       "aud": ["sts.amazonaws.com"]} == decision


def test_the_sdk_default_chain_assumes_the_role_and_get_caller_identity_names_it(world: World, clean_aws_env,
                                                                                 tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(world.token())
    clean_aws_env.setenv("AWS_ROLE_ARN", world.role("app"))
    clean_aws_env.setenv("AWS_ROLE_SESSION_NAME", "chain")
    clean_aws_env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    clean_aws_env.setenv("AWS_ENDPOINT_URL_STS", world.sts.url)
    clean_aws_env.setenv("AWS_CA_BUNDLE", str(world.pki.ca))

    session = boto3.Session(region_name="us-east-1")
    assert session.get_credentials().method == "assume-role-with-web-identity"
    identity = session.client("sts").get_caller_identity()

    assert identity["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/app/chain"
    assert identity["Account"] == ACCOUNT
    assert identity["UserId"].endswith(":chain") and identity["UserId"].startswith("AROA")
    assert [d["action"] for d in world.sts.decisions()[-2:]] == ["AssumeRoleWithWebIdentity", "GetCallerIdentity"]


NOT_AUTHORIZED = ("AccessDenied", 403, re.escape("Not authorized to perform sts:AssumeRoleWithWebIdentity"))
NOT_VALIDATED = ("InvalidIdentityToken", 400, re.escape(sts_standin.MSG_NOT_VALIDATED))


def _row(id_, role, token, expected, reason=None):
    return pytest.param(role, token, expected, reason, id=id_)


# token: a function of the world giving the WebIdentityToken; expected: (code, HTTP status, message regex)
# or None when the role must be assumed; reason: what the decision log says was checked.
REFUSALS = [
    _row("wrong signature", "app", lambda w: w.token(w.stranger), NOT_VALIDATED, "signature does not verify"),
    _row("unknown kid", "app", lambda w: sign_jwt(w.claims(), w.stranger, kid="key-nobody-published"),
         ("InvalidIdentityToken", 400, re.escape(sts_standin.MSG_NO_KEY)), "not in the JWKS"),
    _row("alg none", "app", lambda w: unsigned_jwt(w.claims()), NOT_VALIDATED, "alg 'none'"),
    _row("not a JWT", "app", lambda w: "not.a-jwt", NOT_VALIDATED, "not a well-formed JWT"),
    _row("iss of an unregistered issuer (no provider)", "app",
         lambda w: w.token(w.other_issuer_key, iss=w.issuer.url + "/other"),
         ("InvalidIdentityToken", 400, re.escape("No OpenIDConnect provider found in your account for ")
          + r"https://127\.0\.0\.1:\d+/other$"), "not a registered OIDC provider"),
    _row("iss differing by a trailing slash", "app", lambda w: w.token(iss=w.issuer.url + "/"),
         ("InvalidIdentityToken", 400, r"No OpenIDConnect provider found in your account for https://.*/$"),
         "not a registered OIDC provider"),
    _row("wrong aud", "app", lambda w: w.token(aud=["vault"]),
         ("InvalidIdentityToken", 400, "^Incorrect token audience$"), "holds none of the client IDs"),
    _row("no aud", "app", lambda w: w.token(aud=None),
         ("InvalidIdentityToken", 400, "^Missing a required claim: aud$"), "no aud claim"),
    _row("expired", "app", lambda w: w.token(exp=int(time.time()) - 10, iat=int(time.time()) - 700),
         ("ExpiredTokenException", 400,
          r"^Token expired: current date/time \d+ must be before the expiration date/time \d+$"), "is past"),
    _row("nbf in the future", "app", lambda w: w.token(nbf=int(time.time()) + 600), NOT_VALIDATED,
         "nbf .* is in the future"),
    _row("trust policy sub mismatch", "app", lambda w: w.token(sub="system:serviceaccount:demo:intruder"),
         NOT_AUTHORIZED, "condition StringEquals .*:sub"),
    _row("StringLike wildcard allows", "like", lambda w: w.token(sub="system:serviceaccount:demo:anything"),
         None, "allowed by statement"),
    _row("StringLike wildcard refuses another namespace", "like",
         lambda w: w.token(sub="system:serviceaccount:prod:app"), NOT_AUTHORIZED, "condition StringLike"),
    _row("ForAnyValue aud allows when one audience matches", "any-aud",
         lambda w: w.token(aud=["vault", "sts.amazonaws.com"]), None, "allowed by statement"),
    _row("ForAllValues aud refuses when one audience does not match", "all-aud",
         lambda w: w.token(aud=["vault", "sts.amazonaws.com"]), NOT_AUTHORIZED, "condition ForAllValues"),
    _row("StringNotEquals allows others", "not-blocked", lambda w: w.token(), None, "allowed by statement"),
    _row("StringNotEquals refuses the named subject", "not-blocked",
         lambda w: w.token(sub="system:serviceaccount:demo:blocked"), NOT_AUTHORIZED, "StringNotEquals"),
    _row("explicit Deny wins over an Allow", "deny-app", lambda w: w.token(), NOT_AUTHORIZED, "explicit Deny"),
    _row("trust names another provider", "other-provider", lambda w: w.token(), NOT_AUTHORIZED,
         "Principal .* is not arn:aws:iam::111122223333:oidc-provider/127.0.0.1"),
    _row("trust grants another action", "s3-only", lambda w: w.token(), NOT_AUTHORIZED, "does not cover"),
    _row("unknown role", "nobody", lambda w: w.token(), NOT_AUTHORIZED, "does not exist"),
    _row("trust policy stored as JSON text", "stored-as-text", lambda w: w.token(), None, "allowed"),
    _row("ES256 key from the JWKS", "app", lambda w: w.token(w.ec_key), None, "allowed"),
]


@pytest.mark.parametrize(("role", "token", "expected", "reason"), REFUSALS)
def test_each_check_of_sts_and_iam(world: World, role: str, token, expected, reason: str) -> None:
    web_identity_token = token(world)
    if expected is None:
        answer = world.assume(role, web_identity_token)
        assert answer["AssumedRoleUser"]["Arn"].startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/")
        verdict = "allow"
    else:
        code, status, message = expected
        with pytest.raises(ClientError) as caught:
            world.assume(role, web_identity_token)
        error = caught.value.response["Error"]
        assert (error["Code"], error.get("Type")) == (code, "Sender")
        assert re.search(message, error["Message"]), error["Message"]
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
        verdict = "deny"
    decision = world.sts.last_decision()
    assert decision["verdict"] == verdict and decision["action"] == "AssumeRoleWithWebIdentity"
    assert re.search(reason, decision["reason"]), decision


def test_duration_is_bounded_by_the_roles_max_session_duration(world: World) -> None:
    with pytest.raises(ClientError) as caught:
        world.assume("app", world.token(), DurationSeconds=7200)
    assert caught.value.response["Error"] == {
        "Type": "Sender", "Code": "ValidationError",
        "Message": "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."}
    assert world.assume("long", world.token(), DurationSeconds=7200)["Credentials"]["AccessKeyId"]


def test_a_key_added_to_the_jwks_is_fetched_on_its_first_unknown_kid(world: World) -> None:
    world.assume("app", world.token())  # the JWKS is cached now
    fetches = world.issuer.jwks_fetches
    world.assume("app", world.token())
    assert world.issuer.jwks_fetches == fetches, "a known kid is served from the cache"

    rotated = SigningKey("key-2", rsa.generate_private_key(65537, 2048), "RS256")
    world.issuer.keys[""] = [*world.issuer.keys[""], rotated.jwk()]
    assert world.assume("app", world.token(rotated))["Credentials"]["AccessKeyId"]
    assert world.issuer.jwks_fetches == fetches + 1


def test_a_role_added_to_the_config_file_is_seen_without_a_restart(world: World) -> None:
    with pytest.raises(ClientError):
        world.assume("added-later", world.token())
    world.config["roles"][world.role("added-later")] = trust(_statement(world.provider))
    world.write_config()
    assert world.assume("added-later", world.token())["AssumedRoleUser"]["Arn"].endswith("/added-later/test-session")


# == STS: GetCallerIdentity ===================================================================
def _caller_identity(world: World, key: str, secret: str, token: str | None):
    return boto3.client("sts", endpoint_url=world.sts.url, region_name="eu-west-3", verify=str(world.pki.ca),
                        aws_access_key_id=key, aws_secret_access_key=secret, aws_session_token=token,
                        config=NO_RETRIES).get_caller_identity()


def _refusal(call) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as caught:
        call()
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


def test_get_caller_identity_verifies_the_sigv4_signature_in_any_region(world: World) -> None:
    creds = world.assume("app", world.token(), session="sigv4")["Credentials"]
    identity = _caller_identity(world, creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])
    assert identity["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/app/sigv4"
    assert world.sts.last_decision()["verdict"] == "allow"

    wrong_secret = creds["SecretAccessKey"][:-4] + "AAAA"
    assert _refusal(lambda: _caller_identity(world, creds["AccessKeyId"], wrong_secret, creds["SessionToken"])) == (
        "SignatureDoesNotMatch", 403, sts_standin.MSG_SIGNATURE)
    assert world.sts.last_decision() | {"verdict": "deny", "code": "SignatureDoesNotMatch"} == \
        world.sts.last_decision()


def test_get_caller_identity_refuses_credentials_it_did_not_issue(world: World) -> None:
    invalid = ("InvalidClientTokenId", 403, "The security token included in the request is invalid.")
    creds = world.assume("app", world.token())["Credentials"]
    # a long-term key, a forged session token, and a real session token under another access key
    assert _refusal(lambda: _caller_identity(world, "AKIAIOSFODNN7EXAMPLE", "x" * 40, None)) == invalid
    assert _refusal(lambda: _caller_identity(world, creds["AccessKeyId"], creds["SecretAccessKey"],
                                             creds["SessionToken"][:-6] + "AAAAAA")) == invalid
    assert _refusal(lambda: _caller_identity(world, "ASIAAAAAAAAAAAAAAAAA", creds["SecretAccessKey"],
                                             creds["SessionToken"])) == invalid
    other = CredentialIssuer("another-secret").mint(arn="arn:aws:sts::111122223333:assumed-role/app/x",
                                                     user_id="AROAX:x", account=ACCOUNT, lifetime=600)
    assert _refusal(lambda: _caller_identity(world, other.access_key_id, other.secret_access_key,
                                             other.session_token)) == invalid


def test_get_caller_identity_refuses_expired_credentials(world: World) -> None:
    expired = CredentialIssuer(SECRET).mint(arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/app/old",
                                            user_id="AROAOLD:old", account=ACCOUNT, lifetime=-1)
    assert _refusal(lambda: _caller_identity(world, expired.access_key_id, expired.secret_access_key,
                                             expired.session_token)) == (
        "ExpiredToken", 400, "The security token included in the request is expired")


# == trust-policy conditions, as IAM evaluates them ============================================
CONTEXT = {"h:sub": ["system:serviceaccount:demo:app"], "h:aud": ["a", "b"]}


@pytest.mark.parametrize(("operator", "key", "wanted", "holds"), [
    ("StringEquals", "h:sub", "system:serviceaccount:demo:app", True),
    ("StringEquals", "H:SUB", "system:serviceaccount:demo:app", True),  # keys are case-insensitive
    ("StringEquals", "h:sub", "SYSTEM:serviceaccount:demo:app", False),  # values are not
    ("StringEqualsIgnoreCase", "h:sub", "SYSTEM:serviceaccount:demo:app", True),
    ("StringLike", "h:sub", "system:serviceaccount:demo:a?p", True),
    ("StringLike", "h:sub", "system:serviceaccount:*:app", True),
    ("StringLike", "h:sub", "system:serviceaccount:demo:a?", False),
    ("StringLike", "h:sub", "system:serviceaccount:demo:[a]pp", False),  # no character classes
    ("StringNotLike", "h:sub", "*:prod:*", True),
    ("StringEquals", "h:aud", "b", True),  # a plain operator: any value of a multi-valued key
    ("StringNotEquals", "h:aud", "b", False),  # negated: no value may match
    ("ForAnyValue:StringEquals", "h:aud", ["b", "c"], True),
    ("ForAllValues:StringEquals", "h:aud", ["b", "c"], False),
    ("ForAllValues:StringEquals", "h:aud", ["a", "b", "c"], True),
    ("ForAllValues:StringEquals", "h:absent", ["a"], True),  # IAM's trap: an absent key holds
    ("ForAnyValue:StringEquals", "h:absent", ["a"], False),
    ("ForAnyValue:StringNotEquals", "h:aud", ["a"], True),
    ("StringEquals", "h:absent", "a", False),
    ("StringNotEquals", "h:absent", "a", True),
    ("StringEqualsIfExists", "h:absent", "a", True),
    ("StringEqualsIfExists", "h:sub", "other", False),
    ("Null", "h:absent", "true", True),
    ("Null", "h:sub", "true", False),
])
def test_condition_operators(operator: str, key: str, wanted, holds: bool) -> None:
    assert sts_standin.condition_holds(operator, key, wanted, CONTEXT) is holds


# == the Pod Identity Agent stand-in ===========================================================
@dataclass
class AgentWorld:
    agent: Standin
    reviews: FakeTokenReviews
    associations: Path
    world: World

    def get(self, token: str | None, host: str | None = None) -> tuple[int, str, str]:
        headers = {"Authorization": token} if token is not None else {}
        if host:
            headers["Host"] = host
        request = urllib.request.Request(f"{self.agent.url}/v1/credentials", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status, resp.headers.get_content_type(), resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get_content_type(), err.read().decode()

    def pod_token(self, sa: str = "app", namespace: str = "demo", **status) -> str:
        """A projected token of a pod, and what the API server's TokenReview says of it."""
        token = self.world.token(aud=["pods.eks.amazonaws.com"], sub=f"system:serviceaccount:{namespace}:{sa}",
                                 jti=os.urandom(6).hex())
        self.reviews.statuses[token] = {
            "authenticated": True, "audiences": ["pods.eks.amazonaws.com"],
            "user": {"username": f"system:serviceaccount:{namespace}:{sa}", "uid": "u-1",
                     "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                     "extra": {"authentication.kubernetes.io/pod-name": [f"{sa}-pod"]}}} | status
        return token


@contextlib.contextmanager
def running_agent(world: World, directory: Path) -> Iterator[AgentWorld]:
    """The agent stand-in beside `world`'s STS, with a TokenReview endpoint played here."""
    reviews = FakeTokenReviews(world.pki)
    kubeconfig = directory / "admin.kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "local",
        "clusters": [{"name": "local", "cluster": {"server": reviews.url, "certificate-authority": str(world.pki.ca)}}],
        "users": [{"name": "admin", "user": {"client-certificate": str(world.pki.admin_cert),
                                             "client-key": str(world.pki.admin_key)}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}]}))
    associations = directory / "associations.json"
    associations.write_text(json.dumps([{"namespace": "demo", "serviceAccount": "app",
                                         "roleArn": f"arn:aws:iam::{ACCOUNT}:role/pod-role"}]))
    standin = Standin.start("pod_identity_agent.py", [
        "--listen", "127.0.0.1:0", "--kubeconfig", str(kubeconfig), "--associations", str(associations),
        "--secret", SECRET, "--cluster-name", "local"], directory / "agent.log")
    yield AgentWorld(standin, reviews, associations, world)
    rc = standin.stop()
    reviews.server.shutdown()
    assert rc == 0, f"SIGTERM must end the agent stand-in with 0, got {rc}: {standin.log.read_text()[-2000:]}"


@pytest.fixture(scope="module")
def agent(world: World, tmp_path_factory) -> Iterator[AgentWorld]:
    with running_agent(world, tmp_path_factory.mktemp("agent")) as running:
        yield running


def test_the_sdk_gets_agent_credentials_that_the_sts_standin_accepts(agent: AgentWorld, clean_aws_env,
                                                                     tmp_path: Path) -> None:
    token = agent.pod_token()
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text(token)
    clean_aws_env.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{agent.agent.url}/v1/credentials")
    clean_aws_env.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token_file))

    session = boto3.Session(region_name="us-east-1")
    creds = session.get_credentials()
    assert creds.method == "container-role"
    identity = session.client("sts", endpoint_url=agent.world.sts.url, verify=str(agent.world.pki.ca),
                              config=NO_RETRIES).get_caller_identity()

    assert re.fullmatch(rf"arn:aws:sts::{ACCOUNT}:assumed-role/pod-role/eks-local-app-pod-[0-9a-f-]+",
                        identity["Arn"])
    assert identity["Account"] == ACCOUNT
    review = agent.reviews.requests[-1]
    assert review["client"] == "admin", "the TokenReview is made with the admin's client certificate"
    assert review["review"]["spec"] == {"token": token, "audiences": ["pods.eks.amazonaws.com"]}
    decision = agent.agent.last_decision()
    assert decision | {"verdict": "allow", "namespace": "demo", "serviceAccount": "app", "pod": "app-pod",
                       "role": f"arn:aws:iam::{ACCOUNT}:role/pod-role"} == decision


def test_agent_answers_the_agents_json(agent: AgentWorld) -> None:
    status, content_type, body = agent.get(agent.pod_token())
    assert (status, content_type) == (200, "application/json")
    answer = json.loads(body)
    assert set(answer) == {"AccessKeyId", "SecretAccessKey", "Token", "AccountId", "Expiration"}
    assert re.fullmatch(r"ASIA[A-Z2-7]{16}", answer["AccessKeyId"]) and answer["AccountId"] == ACCOUNT
    expires = dt.datetime.fromisoformat(answer["Expiration"].replace("Z", "+00:00")).timestamp()
    assert 6 * 3600 - 60 < expires - time.time() <= 6 * 3600


REQUEST_ID = r"\[[0-9a-f-]{36}\]"
AGENT_REFUSALS = [
    pytest.param(lambda a: "", None, 400, r"^Service account token cannot be empty\n$", id="no token"),
    pytest.param(lambda a: "not-a-jwt", None, 400,
                 r"^Service account token cannot be parsed: token is malformed: token contains an invalid number "
                 r"of segments\n$", id="not a JWT"),
    pytest.param(lambda a: a.world.token(aud=["pods.eks.amazonaws.com"], exp=int(time.time()) - 5), None, 400,
                 r"^Service account token failed basic claim validations: token has invalid claims: token is "
                 r"expired\n$", id="expired"),
    pytest.param(lambda a: a.world.token(aud=["pods.eks.amazonaws.com"]), None, 400,
                 rf"^{REQUEST_ID}: \(InvalidTokenException\): .*invalid bearer token.*, fault: client\n$",
                 id="TokenReview: not authenticated"),
    pytest.param(lambda a: a.pod_token(audiences=["sts.amazonaws.com"]), None, 400,
                 rf"^{REQUEST_ID}: \(InvalidTokenException\): Token audiences .* do not include "
                 r"pods\.eks\.amazonaws\.com, fault: client\n$", id="TokenReview: wrong audience"),
    pytest.param(lambda a: a.pod_token(user={"username": "admin"}), None, 400,
                 rf"^{REQUEST_ID}: \(InvalidTokenException\): 'admin' is not a service account, fault: client\n$",
                 id="TokenReview: not a service account"),
    pytest.param(lambda a: a.pod_token(sa="unassociated"), None, 404,
                 rf"^{REQUEST_ID}: \(ResourceNotFoundException\): No Pod Identity association found for service "
                 r"account unassociated in namespace demo of cluster local, fault: client\n$",
                 id="no association"),
    pytest.param(lambda a: a.pod_token(), "10.1.2.3", 403,
                 r"^Access Denied\. Called agent through invalid address, please use either \[127\.0\.0\.1 "
                 r"169\.254\.170\.23 fd00:ec2::23\] address not 10\.1\.2\.3\n$", id="called on another address"),
]


@pytest.mark.parametrize(("token", "host", "status", "body"), AGENT_REFUSALS)
def test_each_check_of_the_agent(agent: AgentWorld, token, host: str | None, status: int, body: str) -> None:
    got_status, content_type, got_body = agent.get(token(agent), host=host)
    assert (got_status, content_type) == (status, "text/plain")
    assert re.fullmatch(body, got_body), got_body
    decision = agent.agent.last_decision()
    assert (decision["verdict"], decision["status"]) == ("deny", status)


def test_an_association_added_to_the_file_is_seen_without_a_restart(agent: AgentWorld) -> None:
    token = agent.pod_token(sa="late")
    assert agent.get(token)[0] == 404
    entries = json.loads(agent.associations.read_text())
    entries.append({"namespace": "demo", "serviceAccount": "late", "roleArn": f"arn:aws:iam::{ACCOUNT}:role/late"})
    tmp = agent.associations.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries))
    os.replace(tmp, agent.associations)
    assert agent.get(token)[0] == 200
    assert agent.agent.last_decision()["role"] == f"arn:aws:iam::{ACCOUNT}:role/late"
