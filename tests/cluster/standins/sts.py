#!/usr/bin/env python3
"""An AWS STS stand-in for the in-cluster scenarios: AssumeRoleWithWebIdentity and GetCallerIdentity,
AWS Query protocol (Version 2011-06-15), answers and errors in AWS's XML, so the real SDK in a pod
talks to it as to STS.

Test-only. It stands in for AWS, so it checks what STS and IAM check before issuing credentials:

- the web identity token is a JWT signed with a key of the issuer's JWKS, found through
  `{iss}/.well-known/openid-configuration` → `jwks_uri` (https, verified with --ca-file; cached,
  fetched again on an unknown `kid`);
- `iss` is an OIDC provider registered in the account, `aud` holds one of its client IDs, `exp` is
  in the future, `nbf`/`iat` are not in the future;
- the role exists and its trust policy allows `sts:AssumeRoleWithWebIdentity` for the provider's
  Federated principal under its conditions (StringEquals/StringLike/… with the ForAnyValue:/
  ForAllValues: set forms and …IfExists, Null) on `HOST/PATH:sub` and `HOST/PATH:aud`; an explicit
  Deny wins;
- GetCallerIdentity carries a SigV4 signature (Authorization header) made with credentials this
  stand-in (or the agent stand-in, same --secret) issued, not expired.

Every decision is one JSON line on stderr and an entry of GET /_standin/decisions.

    python tests/cluster/standins/sts.py --listen HOST:PORT [--tls-cert F --tls-key F]
        --ca-file CA --config CONFIG.json [--secret S]

CONFIG: {"account": "111122223333",
         "providers": {"https://192.0.2.10": ["sts.amazonaws.com"]},
         "roles": {"arn:aws:iam::111122223333:role/app": <trust policy document>}}
A role's value is its trust policy (a JSON object, or the JSON text IAM stores), or
{"AssumeRolePolicyDocument": <policy>, "MaxSessionDuration": 3600}. The file is read again when
it changes. SIGTERM exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import hashlib
import hmac
import json
import os
import re
import ssl
import sys
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin_common import (
    CredentialIssuer,
    DecisionLog,
    WatchedJSON,
    b64url_decode,
    host_port,
    iso8601,
    log_line,
    serve,
    stable_id,
)

NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
VERSION = "2011-06-15"
ACTION = "sts:AssumeRoleWithWebIdentity"

# AWS's own wording, as its STS answers them.
MSG_NOT_AUTHORIZED = "Not authorized to perform sts:AssumeRoleWithWebIdentity"
MSG_NO_PROVIDER = "No OpenIDConnect provider found in your account for {iss}"
MSG_AUDIENCE = "Incorrect token audience"
MSG_NO_KEY = ("Couldn't retrieve verification key from your identity provider,  please reference "
              "AssumeRoleWithWebIdentity documentation for requirements")
MSG_NOT_VALIDATED = ("The web identity token that was passed could not be validated by Amazon Web Services. "
                     "Get a new identity token from the identity provider and then retry the request.")
MSG_EXPIRED = "Token expired: current date/time {now} must be before the expiration date/time {exp}"
MSG_MISSING_CLAIM = "Missing a required claim: {claim}"
MSG_INVALID_CLIENT_TOKEN = "The security token included in the request is invalid."
MSG_EXPIRED_SESSION = "The security token included in the request is expired"
MSG_SIGNATURE = ("The request signature we calculated does not match the signature you provided. "
                 "Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")

JWKS_TIMEOUT = aiohttp.ClientTimeout(total=5)  # STS gives an IdP about 5 s
CLOCK_LEEWAY = 60  # seconds an nbf/iat may be ahead of this clock
SIGV4_SKEW = 300  # seconds a SigV4 X-Amz-Date may differ from this clock
SESSION_NAME = re.compile(r"[\w+=,.@-]+")


class StsError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def denied(reason: str) -> StsError:
    err = StsError("AccessDenied", MSG_NOT_AUTHORIZED, 403)
    err.reason = reason  # type: ignore[attr-defined]
    return err


# -- configuration ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Role:
    arn: str
    name: str
    policy: dict[str, Any]
    max_session: int


@dataclass(frozen=True)
class Config:
    account: str
    providers: dict[str, list[str]]
    roles: dict[str, Role]


def parse_config(raw: Any) -> Config:
    if not isinstance(raw, dict):
        raise ValueError("the config must be a JSON object")
    account = str(raw.get("account", ""))
    if not re.fullmatch(r"\d{12}", account):
        raise ValueError(f"account must be 12 digits, not {account!r}")
    providers = raw.get("providers", {})
    if not isinstance(providers, dict) or not all(
            isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in providers.values()):
        raise ValueError("providers must map a provider URL to a list of client IDs")
    roles: dict[str, Role] = {}
    for arn, value in (raw.get("roles") or {}).items():
        match = re.fullmatch(r"arn:aws:iam::(\d{12}):role/(?:[^/]+/)*([\w+=,.@-]+)", arn)
        if not match:
            raise ValueError(f"not a role ARN: {arn!r}")
        max_session = 3600
        if isinstance(value, dict) and "AssumeRolePolicyDocument" in value:
            max_session = int(value.get("MaxSessionDuration", 3600))
            value = value["AssumeRolePolicyDocument"]
        if isinstance(value, str):  # IAM stores the document as (URL-encoded) JSON text
            value = json.loads(urllib.parse.unquote(value))
        if not isinstance(value, dict) or "Statement" not in value:
            raise ValueError(f"role {arn}: the trust policy needs a Statement")
        roles[arn] = Role(arn, match.group(2), value, max_session)
    return Config(account, {url: list(ids) for url, ids in providers.items()}, roles)


def provider_arn(account: str, issuer: str) -> str:
    """IAM's ARN of the OIDC provider for an issuer URL: the URL without its scheme."""
    return f"arn:aws:iam::{account}:oidc-provider/{issuer.removeprefix('https://')}"


# -- trust policy evaluation ------------------------------------------------------------------
def _listify(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _wildcard(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


_STRING_OPERATORS = {
    "StringEquals": lambda v, p: v == p,
    "StringEqualsIgnoreCase": lambda v, p: v.lower() == p.lower(),
    "StringLike": lambda v, p: _wildcard(p).fullmatch(v) is not None,
}
_NEGATED = {"StringNotEquals": "StringEquals", "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
            "StringNotLike": "StringLike"}


def condition_holds(operator: str, key: str, wanted: Any, context: dict[str, list[str]]) -> bool:
    """One condition operator on one key, with IAM's semantics:

    - a plain operator on a key with several values (a token's `aud` list) holds when any value
      matches (a negated one: when none does); on an absent key a positive operator fails and a
      negated one holds, unless …IfExists, which holds on an absent key;
    - ForAllValues: every value of the key matches (an absent key holds);
      ForAnyValue: at least one value matches (an absent key fails);
    - Null: "true" holds when the key is absent.
    """
    set_form = None
    if operator.startswith(("ForAnyValue:", "ForAllValues:")):
        set_form, operator = operator.split(":", 1)
    if_exists = operator.endswith("IfExists")
    operator = operator.removesuffix("IfExists")
    values = context.get(key.lower())
    wanted_values = [str(w) for w in _listify(wanted)]
    if operator == "Null":
        return (values is None) == (wanted_values[0].lower() == "true")
    negated = operator in _NEGATED
    compare = _STRING_OPERATORS.get(_NEGATED.get(operator, operator))
    if compare is None:
        raise ValueError(f"condition operator {operator} is not supported by this stand-in")

    def matches(value: str) -> bool:
        return any(compare(value, w) for w in wanted_values)

    if values is None:
        if if_exists or set_form == "ForAllValues":
            return True
        return negated and set_form is None
    if set_form == "ForAllValues":
        return all(matches(v) != negated for v in values)
    if set_form == "ForAnyValue":
        return any(matches(v) != negated for v in values)
    hit = any(matches(v) for v in values)
    return not hit if negated else hit


def _statement_applies(stmt: dict[str, Any], federated: str, context: dict[str, list[str]]) -> str | None:
    """None when the statement covers this request; otherwise why not."""
    if "Action" in stmt:
        if not any(_wildcard(a, ignore_case=True).fullmatch(ACTION) for a in _listify(stmt["Action"])):
            return f"Action {stmt['Action']!r} does not cover {ACTION}"
    elif "NotAction" in stmt:
        if any(_wildcard(a, ignore_case=True).fullmatch(ACTION) for a in _listify(stmt["NotAction"])):
            return f"NotAction {stmt['NotAction']!r} excludes {ACTION}"
    else:
        return "no Action"
    principal = stmt.get("Principal")
    if principal != "*":
        if not isinstance(principal, dict):
            return "no Principal (NotPrincipal is not supported by this stand-in)"
        candidates = _listify(principal.get("Federated", [])) + [a for a in _listify(principal.get("AWS", []))
                                                                  if a == "*"]
        if federated not in candidates and "*" not in candidates:
            return f"Principal {principal!r} is not {federated}"
    for operator, block in (stmt.get("Condition") or {}).items():
        for key, wanted in block.items():
            if not condition_holds(operator, key, wanted, context):
                got = context.get(key.lower())
                return f"condition {operator} {key} {wanted!r} does not hold for {got!r}"
    return None


def evaluate_trust(policy: dict[str, Any], federated: str, context: dict[str, list[str]]) -> tuple[bool, str]:
    """(allowed, reason): an explicit Deny wins over any Allow; nothing matching denies."""
    allowed_by, misses = None, []
    for index, stmt in enumerate(_listify(policy.get("Statement", []))):
        label = stmt.get("Sid") or f"#{index}"
        try:
            why_not = _statement_applies(stmt, federated, context)
        except ValueError as exc:
            why_not = str(exc)
        if why_not is not None:
            misses.append(f"statement {label}: {why_not}")
        elif stmt.get("Effect") == "Deny":
            return False, f"explicit Deny in statement {label}"
        elif stmt.get("Effect") == "Allow" and allowed_by is None:
            allowed_by = label
    if allowed_by is not None:
        return True, f"allowed by statement {allowed_by}"
    return False, "no statement allows: " + ("; ".join(misses) or "the policy has no statement")


# -- web identity tokens ----------------------------------------------------------------------
_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
SUPPORTED_ALGS = {f"{family}{bits}" for family in ("RS", "PS", "ES") for bits in _HASHES}


def public_key_from_jwk(jwk: dict[str, Any]):
    def number(name: str) -> int:
        return int.from_bytes(b64url_decode(jwk[name]), "big")

    if jwk.get("kty") == "RSA":
        return rsa.RSAPublicNumbers(number("e"), number("n")).public_key()
    if jwk.get("kty") == "EC":
        curve = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}[jwk["crv"]]()
        return ec.EllipticCurvePublicNumbers(number("x"), number("y"), curve).public_key()
    raise ValueError(f"unsupported key type {jwk.get('kty')!r}")


def signature_valid(alg: str, key, signing_input: bytes, signature: bytes) -> bool:
    digest = _HASHES[alg[2:]]()
    try:
        if alg.startswith("RS"):
            key.verify(signature, signing_input, padding.PKCS1v15(), digest)
        elif alg.startswith("PS"):
            key.verify(signature, signing_input,
                       padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.DIGEST_LENGTH), digest)
        else:
            half = len(signature) // 2
            der = encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                       int.from_bytes(signature[half:], "big"))
            key.verify(der, signing_input, ec.ECDSA(digest))
    except (InvalidSignature, TypeError, ValueError):
        return False
    return True


class KeyUnavailable(Exception):
    pass


class JwksCache:
    """An issuer's signing keys, found the way STS finds them (discovery document → jwks_uri), over
    https verified with the given CA. Cached; fetched again when a token names an unknown kid."""

    def __init__(self, ca_file: str | None) -> None:
        self._ssl = ssl.create_default_context(cafile=ca_file)
        self._keys: dict[str, dict[str, dict[str, Any]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0

    async def _fetch(self, issuer: str) -> dict[str, dict[str, Any]]:
        self.fetches += 1
        if not issuer.startswith("https://"):
            raise KeyUnavailable(f"issuer {issuer} is not https")
        try:
            async with aiohttp.ClientSession(timeout=JWKS_TIMEOUT) as session:
                discovery_url = issuer.rstrip("/") + "/.well-known/openid-configuration"
                async with session.get(discovery_url, ssl=self._ssl) as resp:
                    if resp.status != 200:
                        raise KeyUnavailable(f"{discovery_url} answered {resp.status}")
                    jwks_uri = (await resp.json(content_type=None))["jwks_uri"]
                async with session.get(jwks_uri, ssl=self._ssl) as resp:
                    if resp.status != 200:
                        raise KeyUnavailable(f"{jwks_uri} answered {resp.status}")
                    jwks = await resp.json(content_type=None)
            return {k["kid"]: k for k in jwks["keys"] if isinstance(k, dict) and "kid" in k}
        except KeyUnavailable:
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            raise KeyUnavailable(f"fetching the keys of {issuer}: {type(exc).__name__}: {exc}") from exc

    async def key(self, issuer: str, kid: str) -> dict[str, Any]:
        lock = self._locks.setdefault(issuer, asyncio.Lock())
        async with lock:
            keys = self._keys.get(issuer)
            if keys is None or kid not in keys:
                keys = self._keys[issuer] = await self._fetch(issuer)
        if kid not in keys:
            raise KeyUnavailable(f"kid {kid!r} is not in the JWKS of {issuer} (known: {sorted(keys)})")
        return keys[kid]


def _decode_segment(segment: str) -> dict[str, Any]:
    value = json.loads(b64url_decode(segment))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


@dataclass
class VerifiedToken:
    claims: dict[str, Any]
    provider_url: str
    audience: str


async def verify_web_identity_token(token: str, config: Config, jwks: JwksCache, now: float,
                                    seen: dict[str, Any]) -> VerifiedToken:
    """The checks STS makes, in its order; `seen` collects the claims for the decision log."""
    parts = token.split(".")
    try:
        if len(parts) != 3:
            raise ValueError(f"{len(parts)} parts, a JWS has 3")
        header, claims = _decode_segment(parts[0]), _decode_segment(parts[1])
        signature = b64url_decode(parts[2])
    except (ValueError, UnicodeDecodeError) as exc:
        err = StsError("InvalidIdentityToken", MSG_NOT_VALIDATED)
        err.reason = f"not a well-formed JWT: {exc}"  # type: ignore[attr-defined]
        raise err from None
    seen.update(iss=claims.get("iss"), sub=claims.get("sub"), aud=claims.get("aud"))

    def invalid(message: str, reason: str, code: str = "InvalidIdentityToken") -> StsError:
        err = StsError(code, message)
        err.reason = reason  # type: ignore[attr-defined]
        return err

    if "iss" not in claims:
        raise invalid(MSG_MISSING_CLAIM.format(claim="iss"), "no iss claim")
    issuer = claims["iss"]
    if not isinstance(issuer, str) or issuer not in config.providers:
        raise invalid(MSG_NO_PROVIDER.format(iss=issuer), f"iss {issuer!r} is not a registered OIDC provider")
    for claim in ("sub", "aud", "exp"):
        if claim not in claims:
            raise invalid(MSG_MISSING_CLAIM.format(claim=claim), f"no {claim} claim")

    alg, kid = header.get("alg"), header.get("kid")
    if alg not in SUPPORTED_ALGS:
        raise invalid(MSG_NOT_VALIDATED, f"alg {alg!r} is not an asymmetric JWS algorithm STS accepts")
    if not isinstance(kid, str):
        raise invalid(MSG_NO_KEY, "the token header names no kid")
    try:
        jwk = await jwks.key(issuer, kid)
        key = public_key_from_jwk(jwk)
    except (KeyUnavailable, ValueError, KeyError) as exc:
        raise invalid(MSG_NO_KEY, str(exc)) from None
    if jwk.get("alg", alg) != alg:
        raise invalid(MSG_NOT_VALIDATED, f"token alg {alg} differs from the key's alg {jwk['alg']}")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    if not signature_valid(alg, key, signing_input, signature):
        raise invalid(MSG_NOT_VALIDATED, f"signature does not verify with kid {kid}")

    try:
        exp = int(claims["exp"])
        nbf, iat = (int(claims[c]) if c in claims else None for c in ("nbf", "iat"))
    except (TypeError, ValueError):
        raise invalid(MSG_NOT_VALIDATED, "exp/nbf/iat are not NumericDate") from None
    if now >= exp:
        raise invalid(MSG_EXPIRED.format(now=int(now), exp=exp), f"exp {exp} is past (now {int(now)})",
                      code="ExpiredTokenException")
    for name, value in (("nbf", nbf), ("iat", iat)):
        if value is not None and value > now + CLOCK_LEEWAY:
            raise invalid(MSG_NOT_VALIDATED, f"{name} {value} is in the future (now {int(now)})")

    audiences = [a for a in _listify(claims["aud"]) if isinstance(a, str)]
    client_ids = config.providers[issuer]
    matched = next((a for a in audiences if a in client_ids), None)
    if matched is None:
        raise invalid(MSG_AUDIENCE, f"aud {claims['aud']!r} holds none of the client IDs {client_ids!r}")
    return VerifiedToken(claims, issuer, matched)


# -- SigV4 ------------------------------------------------------------------------------------
def _uri_encode(text: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(text, safe=safe)


def canonical_request(method: str, raw_path: str, raw_query: str, headers, signed: list[str],
                      payload_hash: str) -> str:
    pairs = urllib.parse.parse_qsl(raw_query, keep_blank_values=True)
    query = "&".join(f"{k}={v}" for k, v in sorted((_uri_encode(k), _uri_encode(v)) for k, v in pairs))
    lines = []
    for name in signed:
        values = headers.getall(name, [])
        lines.append(f"{name}:{','.join(' '.join(v.split()) for v in values)}\n")
    # Services other than S3 sign the path encoded once more than it travels.
    return "\n".join([method, _uri_encode(raw_path or "/", safe="/~"), query, "".join(lines),
                      ";".join(signed), payload_hash])


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _amz_to_epoch(amz_date: str) -> float:
    return calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))


def verify_sigv4(request: web.Request, body: bytes, issuer: CredentialIssuer, now: float):
    """The caller's credentials when the request is signed with stand-in credentials; StsError otherwise."""
    auth = request.headers.get("Authorization")
    if not auth:
        raise StsError("MissingAuthenticationToken", "Request is missing Authentication Token", 403)
    algorithm, _, rest = auth.partition(" ")
    fields = dict(p.strip().split("=", 1) for p in rest.split(",") if "=" in p)
    if algorithm != "AWS4-HMAC-SHA256" or not {"Credential", "SignedHeaders", "Signature"} <= fields.keys():
        raise StsError("IncompleteSignature",
                       "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters "
                       f"with algorithm AWS4-HMAC-SHA256. Authorization={auth[:40]}", 403)
    scope = fields["Credential"].split("/")
    if len(scope) != 5:
        raise StsError("IncompleteSignature", f"Credential {fields['Credential']!r} is not AKID/DATE/REGION/SERVICE/"
                       "aws4_request", 403)
    akid, date, region, service, terminator = scope
    token = request.headers.get("X-Amz-Security-Token")
    creds = issuer.verify(token) if token else None
    if creds is None or creds.access_key_id != akid:
        raise StsError("InvalidClientTokenId", MSG_INVALID_CLIENT_TOKEN, 403)
    if now >= creds.expiration:
        raise StsError("ExpiredToken", MSG_EXPIRED_SESSION, 400)
    if service != "sts":
        raise StsError("SignatureDoesNotMatch", "Credential should be scoped to correct service: 'sts'. ", 403)
    if terminator != "aws4_request":
        raise StsError("SignatureDoesNotMatch",
                       f"Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'.", 403)
    amz_date = request.headers.get("X-Amz-Date", "")
    try:
        signed_at = _amz_to_epoch(amz_date)
    except ValueError:
        raise StsError("IncompleteSignature",
                       "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
                       403) from None
    if amz_date[:8] != date:
        raise StsError("SignatureDoesNotMatch", "Date in Credential scope does not match YYYYMMDD from ISO-8601 "
                       f"version of date from HTTP: '{date}' != '{amz_date[:8]}', from '{amz_date}'.", 403)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    if signed_at < now - SIGV4_SKEW:
        limit = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now - SIGV4_SKEW))
        raise StsError("SignatureDoesNotMatch",
                       f"Signature expired: {amz_date} is now earlier than {limit} ({stamp} - 5 min.)", 403)
    if signed_at > now + SIGV4_SKEW:
        limit = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now + SIGV4_SKEW))
        raise StsError("SignatureDoesNotMatch",
                       f"Signature not yet current: {amz_date} is still later than {limit} ({stamp} + 5 min.)", 403)
    signed = fields["SignedHeaders"].split(";")
    if "host" not in signed:
        raise StsError("SignatureDoesNotMatch", "'Host' must be a 'SignedHeader' in the AWS Authorization.", 403)
    creq = canonical_request(request.method, request.raw_path.split("?", 1)[0], request.query_string,
                             request.headers, signed, hashlib.sha256(body).hexdigest())
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, "/".join(scope[1:]),
                                hashlib.sha256(creq.encode()).hexdigest()])
    expected = hmac.new(signing_key(creds.secret_access_key, date, region, service), string_to_sign.encode(),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, fields["Signature"]):
        raise StsError("SignatureDoesNotMatch", MSG_SIGNATURE, 403)
    return creds


# -- the service ------------------------------------------------------------------------------
def _xml(action: str, result: str, request_id: str) -> str:
    return (f'<{action}Response xmlns="{NAMESPACE}">\n  <{action}Result>\n{result}  </{action}Result>\n'
            f"  <ResponseMetadata>\n    <RequestId>{request_id}</RequestId>\n  </ResponseMetadata>\n"
            f"</{action}Response>\n")


def _elements(indent: str, **values: str) -> str:
    return "".join(f"{indent}<{k}>{escape(str(v))}</{k}>\n" for k, v in values.items())


def error_response(err: StsError, request_id: str) -> web.Response:
    body = (f'<ErrorResponse xmlns="{NAMESPACE}">\n  <Error>\n    <Type>Sender</Type>\n'
            f"    <Code>{escape(err.code)}</Code>\n    <Message>{escape(err.message)}</Message>\n  </Error>\n"
            f"  <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n")
    return web.Response(status=err.status, text=body, content_type="text/xml",
                        headers={"x-amzn-RequestId": request_id})


def validation_error(field: str, value: Any, constraint: str) -> StsError:
    shown = "null" if value is None else f"'{value}'"
    return StsError("ValidationError",
                    f"1 validation error detected: Value {shown} at '{field}' failed to satisfy constraint: "
                    f"{constraint}")


class StsStandin:
    def __init__(self, config: WatchedJSON, jwks: JwksCache, issuer: CredentialIssuer) -> None:
        self.config, self.jwks, self.issuer = config, jwks, issuer
        self.decisions = DecisionLog()

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([*self.decisions.routes(), web.post("/", self.handle), web.get("/", self.handle)])
        return app

    async def handle(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        body = await request.read()
        params = dict(urllib.parse.parse_qsl(request.query_string, keep_blank_values=True))
        if request.method == "POST":
            params.update(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        action = params.get("Action", "")
        try:
            if params.get("Version") != VERSION:
                raise StsError("InvalidAction", f"Could not find operation {action} for version "
                               f"{params.get('Version', 'NO_VERSION_SPECIFIED')}")
            if action == "AssumeRoleWithWebIdentity":
                return await self.assume_role_with_web_identity(params, request_id)
            if action == "GetCallerIdentity":
                return self.get_caller_identity(request, body, request_id)
            raise StsError("InvalidAction", f"Could not find operation {action} for version {VERSION}")
        except StsError as err:
            if action not in ("AssumeRoleWithWebIdentity", "GetCallerIdentity"):
                self.decisions.record(action=action, verdict="deny", code=err.code, reason=err.message)
            return error_response(err, request_id)

    async def assume_role_with_web_identity(self, params: dict[str, str], request_id: str) -> web.Response:
        config: Config = self.config.current()
        role_arn, session = params.get("RoleArn"), params.get("RoleSessionName")
        seen: dict[str, Any] = {}
        entry = {"action": "AssumeRoleWithWebIdentity", "role": role_arn, "session": session}
        try:
            if role_arn is None or len(role_arn) < 20:
                raise validation_error("roleArn", role_arn, "Member must have length greater than or equal to 20")
            if session is None or not 2 <= len(session) <= 64:
                raise validation_error("roleSessionName", session,
                                       "Member must have length greater than or equal to 2 and less than or "
                                       "equal to 64")
            if not SESSION_NAME.fullmatch(session):
                raise validation_error("roleSessionName", session,
                                       r"Member must satisfy regular expression pattern: [\w+=,.@-]*")
            token = params.get("WebIdentityToken", "")
            if len(token) < 4:
                raise validation_error("webIdentityToken", token or None,
                                       "Member must have length greater than or equal to 4")
            duration = params.get("DurationSeconds", "3600")
            if not duration.isdigit() or not 900 <= int(duration) <= 43200:
                raise validation_error("durationSeconds", duration,
                                       "Member must have value greater than or equal to 900 and less than or "
                                       "equal to 43200")
            verified = await verify_web_identity_token(token, config, self.jwks, time.time(), seen)
            role = config.roles.get(role_arn)
            if role is None:
                raise denied(f"role {role_arn} does not exist")
            host_path = verified.provider_url.removeprefix("https://")
            federated = provider_arn(config.account, verified.provider_url)
            context = {f"{host_path}:sub".lower(): [str(verified.claims["sub"])],
                       f"{host_path}:aud".lower(): [str(a) for a in _listify(verified.claims["aud"])]}
            allowed, reason = evaluate_trust(role.policy, federated, context)
            if not allowed:
                raise denied(reason)
            if int(duration) > role.max_session:
                raise StsError("ValidationError",
                               "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.")
        except StsError as err:
            self.decisions.record(**entry, **seen, verdict="deny", code=err.code,
                                  reason=getattr(err, "reason", err.message))
            return error_response(err, request_id)

        account = role_arn.split(":")[4]
        user_id = f"{stable_id('AROA', role_arn)}:{session}"
        creds = self.issuer.mint(arn=f"arn:aws:sts::{account}:assumed-role/{role.name}/{session}",
                                 user_id=user_id, account=account, lifetime=int(duration))
        self.decisions.record(**entry, **seen, verdict="allow", reason=reason, access_key_id=creds.access_key_id)
        result = (_elements("    ", SubjectFromWebIdentityToken=verified.claims["sub"], Audience=verified.audience)
                  + "    <AssumedRoleUser>\n"
                  + _elements("      ", AssumedRoleId=user_id, Arn=creds.arn)
                  + "    </AssumedRoleUser>\n    <Credentials>\n"
                  + _elements("      ", AccessKeyId=creds.access_key_id, SecretAccessKey=creds.secret_access_key,
                              SessionToken=creds.session_token, Expiration=iso8601(creds.expiration))
                  + "    </Credentials>\n"
                  + _elements("    ", Provider=federated))
        return web.Response(text=_xml("AssumeRoleWithWebIdentity", result, request_id), content_type="text/xml",
                            headers={"x-amzn-RequestId": request_id})

    def get_caller_identity(self, request: web.Request, body: bytes, request_id: str) -> web.Response:
        try:
            creds = verify_sigv4(request, body, self.issuer, time.time())
        except StsError as err:
            self.decisions.record(action="GetCallerIdentity", verdict="deny", code=err.code, reason=err.message,
                                  access_key_id=_access_key_of(request))
            return error_response(err, request_id)
        self.decisions.record(action="GetCallerIdentity", verdict="allow", arn=creds.arn,
                              access_key_id=creds.access_key_id, reason="valid SigV4 signature")
        result = _elements("    ", Arn=creds.arn, UserId=creds.user_id, Account=creds.account)
        return web.Response(text=_xml("GetCallerIdentity", result, request_id), content_type="text/xml",
                            headers={"x-amzn-RequestId": request_id})


def _access_key_of(request: web.Request) -> str | None:
    match = re.search(r"Credential=([^/,\s]+)", request.headers.get("Authorization", ""))
    return match.group(1) if match else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=host_port, required=True, help="HOST:PORT (port 0: any free port)")
    parser.add_argument("--tls-cert", help="serve https with this certificate chain (PEM)")
    parser.add_argument("--tls-key", help="and this key (PEM)")
    parser.add_argument("--ca-file", help="CA bundle to verify the issuers' discovery documents and JWKS with")
    parser.add_argument("--config", type=Path, required=True, help="account, providers and roles (JSON)")
    parser.add_argument("--secret", help="credentials secret shared with the agent stand-in (or STANDIN_SECRET)")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    try:
        config = WatchedJSON(args.config, parse_config)
    except (OSError, ValueError) as exc:
        parser.error(f"--config {args.config}: {exc}")
    secret = args.secret or os.environ.get("STANDIN_SECRET")
    if not secret:
        secret = uuid.uuid4().hex
        log_line({"event": "warning", "message": "no --secret: credentials from the agent stand-in will not verify"})
    standin = StsStandin(config, JwksCache(args.ca_file), CredentialIssuer(secret))
    return serve(standin.app(), args.listen, "sts", args.tls_cert, args.tls_key)


if __name__ == "__main__":
    sys.exit(main())
