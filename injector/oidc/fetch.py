"""Where the OIDC documents, tokens and certificates come from: the API server, the public
issuer URL, a host's TLS handshake. It judges nothing: checks are `oidc.documents`'.

Kept apart from `oidc` (pure checks) so that the checks can be tested on values and the
I/O against real servers. `verify_published` is the one call `oidc verify` and `doctor`
share: fetch what the issuer publishes, as STS does, and check a token against it.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

import aiohttp
from cryptography import x509
from kubernetes_asyncio import client

from injector.kube.client import KubeError, api_client, call_json
from injector.oidc.documents import (
    STS_AUDIENCE,
    ChainError,
    OidcError,
    VerifiedToken,
    chain_thumbprint,
    check_jwks,
    discovery_url,
    verify_token,
)

TIMEOUT = 10.0
WEB_IDENTITY_TOKEN_ENV = "AWS_WEB_IDENTITY_TOKEN_FILE"


class FetchError(OidcError):
    """A document, token or certificate chain could not be obtained; the message says where and why."""


# -- the API server ----------------------------------------------------------------------------
async def _kube(kubeconfig: str, kube_api: str) -> Any:
    if kubeconfig and not os.path.isfile(kubeconfig):
        raise FetchError(f"--kubeconfig {kubeconfig}: no such file")
    try:
        return await api_client(kubeconfig, kube_api)
    except Exception as exc:  # kubeconfig loading raises many kinds; all mean "cannot reach"
        raise FetchError(f"cannot configure the API client ({kubeconfig or 'default kubeconfig'}): {exc}") from None


async def _api_json(api: Any, call: Any, *args: Any, what: str, **kwargs: Any) -> dict[str, Any]:
    try:
        return await call_json(call, *args, **kwargs)
    except KubeError as exc:
        raise FetchError(f"{what} from the API server: {exc}") from None
    except (OSError, ValueError) as exc:
        raise FetchError(f"{what} from the API server {api.configuration.host}: {exc}") from None
    except Exception as exc:  # aiohttp client errors (connection refused, TLS) reach here
        raise FetchError(f"{what} from the API server {api.configuration.host}: {type(exc).__name__}: {exc}") from None


async def cluster_documents(kubeconfig: str = "", kube_api: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """The API server's discovery document and the JWKS it serves at /openid/v1/jwks."""
    api = await _kube(kubeconfig, kube_api)
    async with api:
        discovery = await _api_json(api, client.WellKnownApi(api).get_service_account_issuer_open_id_configuration,
                                    what="/.well-known/openid-configuration")
        jwks = await _api_json(api, client.OpenidApi(api).get_service_account_issuer_open_id_keyset,
                               what="/openid/v1/jwks")
    return discovery, jwks


def web_identity_projection(pod: dict[str, Any]) -> dict[str, Any]:
    """The projected `serviceAccountToken` source behind the pod's AWS_WEB_IDENTITY_TOKEN_FILE."""
    spec = pod.get("spec") or {}
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    name = f"{pod['metadata'].get('namespace', '')}/{pod['metadata'].get('name', '')}"
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        path = next((e.get("value", "") for e in container.get("env") or [] if e.get("name") == WEB_IDENTITY_TOKEN_ENV),
                    "")
        if not path:
            continue
        for mount in container.get("volumeMounts") or []:
            base = mount.get("mountPath", "").rstrip("/")
            if not path.startswith(base + "/"):
                continue
            relative = posixpath.relpath(path, base)
            for source in ((volumes.get(mount.get("name")) or {}).get("projected") or {}).get("sources") or []:
                token = source.get("serviceAccountToken")
                if token and token.get("path") == relative:
                    return token
        raise FetchError(f"pod {name}: {WEB_IDENTITY_TOKEN_ENV}={path} is not a projected serviceAccountToken "
                         f"of container {container.get('name')!r}")
    raise FetchError(f"pod {name} has no {WEB_IDENTITY_TOKEN_ENV} in any container: it was not mutated for IRSA "
                     "(is its ServiceAccount annotated, and was the webhook called when it was created?)")


async def pod_token(namespace: str, name: str, kubeconfig: str = "", kube_api: str = "") -> str:
    """A token as the kubelet would mint it for the pod's web-identity projection
    (same audience and lifetime, bound to the pod) through TokenRequest."""
    api = await _kube(kubeconfig, kube_api)
    async with api:
        core = client.CoreV1Api(api)
        pod = await _api_json(api, core.read_namespaced_pod, name, namespace, what=f"pod {namespace}/{name}")
        projection = web_identity_projection(pod)
        spec: dict[str, Any] = {"expirationSeconds": int(projection.get("expirationSeconds") or 3600),
                                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": name,
                                                   "uid": pod["metadata"]["uid"]}}
        if projection.get("audience"):
            spec["audiences"] = [projection["audience"]]
        account = pod["spec"].get("serviceAccountName") or "default"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        answer = await _api_json(api, core.create_namespaced_service_account_token, account, namespace, body,
                                 what=f"a token for serviceaccount {namespace}/{account}")
    return str(answer["status"]["token"])


# -- the public issuer URL --------------------------------------------------------------------
def client_context(ca_file: str = "") -> ssl.SSLContext:
    """The system's trust store (STS trusts public CAs), or `ca_file` for a private one."""
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise FetchError(f"--ca-file {ca_file}: {exc}") from None


async def _get_json(session: Any, url: str, context: ssl.SSLContext) -> Any:
    try:
        async with session.get(url, ssl=context, allow_redirects=False) as response:
            body = await response.read()
            if response.status != 200:
                raise FetchError(f"{url}: HTTP {response.status} (STS needs 200 with the document)")
    except aiohttp.ClientConnectorCertificateError as exc:
        raise FetchError(f"{url}: TLS certificate not trusted: {exc.certificate_error} (a private CA needs "
                         "--ca-file here, and is not what STS trusts)") from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise FetchError(f"{url}: not JSON ({body[:80]!r})") from None


async def published_documents(issuer: str, ca_file: str = "",
                              timeout: float = TIMEOUT) -> tuple[dict[str, Any], dict[str, Any]]:
    """The discovery document at the issuer URL and the JWKS its `jwks_uri` names, fetched
    as STS fetches them (https, no redirects followed)."""
    context = client_context(ca_file)
    url = discovery_url(issuer)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        discovery = await _get_json(session, url, context)
        if not isinstance(discovery, dict):
            raise FetchError(f"{url}: not a JSON object")
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str) or urllib.parse.urlsplit(jwks_uri).scheme != "https":
            raise FetchError(f"{url}: jwks_uri {jwks_uri!r} is not an https URL")
        jwks = await _get_json(session, jwks_uri, context)
    try:
        return discovery, check_jwks(jwks, jwks_uri)
    except OidcError as exc:
        raise FetchError(str(exc)) from None


async def verify_published(token: str, issuer: str, audience: str = STS_AUDIENCE, ca_file: str = "",
                           now: float | None = None) -> VerifiedToken:
    """Check `token` against what `issuer` publishes now (FetchError, or oidc.TokenRejected)."""
    discovery, jwks = await published_documents(issuer, ca_file)
    return verify_token(token, issuer=issuer, discovery=discovery, jwks=jwks, audience=audience, now=now)


# -- the provider's TLS chain -----------------------------------------------------------------
class UntrustedChain(ChainError):
    """The host's chain does not verify against the trust store asked for: a private CA (give
    it with --ca-file), or someone between us and the host serving their own certificate."""


@dataclass(frozen=True, slots=True)
class Thumbprint:
    """The thumbprint and what vouched for the chain it was taken from: `trusted_by` names the
    trust store the chain and host name verified against, or is "" when nothing was checked."""

    value: str
    trusted_by: str


def host_and_port(url: str) -> tuple[str, int]:
    """`https://HOST[:PORT][/PATH]` (or a bare HOST[:PORT]) → host and port."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme != "https" or not parts.hostname:
        raise OidcError(f"{url!r} is not an https:// URL with a host")
    try:
        return parts.hostname, parts.port or 443
    except ValueError as exc:
        raise OidcError(f"{url!r}: {exc}") from None


def trust_store_name(ca_file: str = "") -> str:
    """How a message names the trust store `client_context(ca_file)` uses."""
    if ca_file:
        return f"--ca-file {ca_file}"
    paths = ssl.get_default_verify_paths()
    return f"the system trust store ({paths.cafile or paths.capath or paths.openssl_cafile})"


def served_chain(host: str, port: int = 443, timeout: float = TIMEOUT,
                 trust: ssl.SSLContext | None = None) -> list[x509.Certificate]:
    """The certificates the host sends in its TLS handshake, leaf first, exactly as sent
    (nothing completed from a local trust store: IAM sees only what is served).

    With `trust` (a verifying context, as `client_context` makes) the handshake itself checks
    the chain and the host name against that store, so the chain returned is the one that
    verified, on the same connection; a chain that does not verify raises UntrustedChain.
    Without it nothing is checked here (chain_thumbprint still judges the chain's shape).
    """
    context = trust
    if context is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the caller asked for no trust check, and says so
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            ders = _peer_chain(tls)
    except ssl.SSLCertVerificationError as exc:
        raise UntrustedChain(f"{host}:{port}: the certificate chain it serves is not trusted: "
                             f"{exc.verify_message or exc}") from None
    except (OSError, ssl.SSLError) as exc:
        raise FetchError(f"{host}:{port}: TLS handshake failed: {exc}") from None
    return [x509.load_der_x509_certificate(der) for der in ders]


def _peer_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """DER of every certificate the peer sent; public API from Python 3.13, private before."""
    if hasattr(tls, "get_unverified_chain"):
        return list(tls.get_unverified_chain() or [])
    # Python < 3.13 has no SSLObject.get_unverified_chain; only then is the C module asked.
    import _ssl  # noqa: PLC0415, PLC2701

    return [c.public_bytes(_ssl.ENCODING_DER) for c in tls._sslobj.get_unverified_chain() or []]  # type: ignore


def thumbprint(url: str, timeout: float = TIMEOUT, *, ca_file: str = "", verify: bool = True) -> Thumbprint:
    """The thumbprint IAM expects for an OIDC provider at `url` (see oidc.chain_thumbprint).

    By default the served chain must verify, with the host name, against the system trust
    store (or `ca_file`): otherwise whoever sits between this machine and the host could get
    their own CA pinned in IAM. `verify=False` skips that check, and the result says so
    (`trusted_by` is ""); the caller must say it loudly.
    """
    host, port = host_and_port(url)
    trust = client_context(ca_file) if verify else None
    value = chain_thumbprint(served_chain(host, port, timeout, trust), host)
    return Thumbprint(value, trust_store_name(ca_file) if verify else "")
