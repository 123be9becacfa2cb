"""injector.oidc.fetch against real servers on 127.0.0.1: the chain a TLS host really sends
(root, intermediate and leaf made here), the documents a static https site publishes, and
the pod projection a token is requested for.

`StaticSite` (a directory served over TLS in a thread) is shared with test_oidc_cli and e2e.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from injector.oidc import fetch as oidc_fetch
from injector.oidc.documents import ChainError, OidcError, Publication, TokenRejected, jwks_from_keys
from injector.oidc.fetch import (
    FetchError,
    Thumbprint,
    UntrustedChain,
    published_documents,
    served_chain,
    thumbprint,
    verify_published,
)

from oidc_helpers import Chain, StaticSite, claims_for, make_chain, self_signed_leaf, serve_chain, sign_token


@pytest.fixture(scope="module")
def chain() -> Chain:
    return make_chain()


@pytest.fixture
def site(tmp_path: Path, chain: Chain) -> Iterator[StaticSite]:
    server = serve_chain(tmp_path, chain, chain.leaf, chain.intermediate)
    yield server
    server.close()


# -- the served chain and its thumbprint --------------------------------------------------------
@pytest.fixture
def root_file(tmp_path: Path, chain: Chain) -> str:
    """The test root as a --ca-file: the private CA this chain is trusted by."""
    path = tmp_path / "root.pem"
    path.write_bytes(chain.pem(chain.root))
    return str(path)


def test_the_chain_read_is_exactly_what_the_host_sends(site: StaticSite, chain: Chain):
    assert served_chain("127.0.0.1", site.port) == [chain.leaf, chain.intermediate]


def test_the_thumbprint_pins_the_intermediate_when_the_root_is_not_served(site: StaticSite, chain: Chain,
                                                                          root_file: str):
    result = thumbprint(f"{site.url}/cluster-a", ca_file=root_file)
    assert result == Thumbprint(Chain.sha1(chain.intermediate), f"--ca-file {root_file}")


def test_the_thumbprint_pins_the_root_when_the_host_serves_it(tmp_path: Path, chain: Chain, root_file: str):
    server = serve_chain(tmp_path, chain, chain.leaf, chain.intermediate, chain.root)
    try:
        assert thumbprint(server.url, ca_file=root_file).value == Chain.sha1(chain.root)
    finally:
        server.close()


# -- whose chain: checked against a trust store before it is pinned ------------------------------
def test_by_default_the_chain_must_verify_against_the_system_trust_store(site: StaticSite):
    """A chain no public CA vouches for is what a man-in-the-middle would serve: refused, with
    no thumbprint, unless a CA is named for it."""
    with pytest.raises(UntrustedChain, match="not trusted"):
        thumbprint(site.url)


def test_the_system_trust_store_is_what_openssl_is_told_it_is(site: StaticSite, chain: Chain, root_file: str,
                                                              monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", root_file)  # the system trust store, as OpenSSL finds it
    result = thumbprint(site.url)
    assert result.value == Chain.sha1(chain.intermediate)
    assert result.trusted_by == f"the system trust store ({root_file})"


def test_a_chain_from_another_ca_than_the_one_named_is_refused(site: StaticSite, tmp_path: Path):
    """The host (or whoever answers for it) serves a chain of a CA other than the one given."""
    other = make_chain()
    (tmp_path / "other.pem").write_bytes(other.pem(other.root))
    with pytest.raises(UntrustedChain, match="not trusted"):
        thumbprint(site.url, ca_file=str(tmp_path / "other.pem"))


def test_an_unchecked_thumbprint_says_that_nothing_vouched_for_it(site: StaticSite, chain: Chain):
    assert thumbprint(site.url, verify=False) == Thumbprint(Chain.sha1(chain.intermediate), "")


def test_an_untrusted_chain_is_a_chain_verdict_not_a_fetch_error(site: StaticSite):
    with pytest.raises(ChainError) as refused:
        thumbprint(site.url)
    assert not isinstance(refused.value, FetchError)


# -- the chain's shape (judged with or without a trust check) ------------------------------------
def test_a_host_serving_only_its_leaf_has_an_incomplete_chain(tmp_path: Path, chain: Chain, root_file: str):
    server = serve_chain(tmp_path, chain, chain.leaf)
    try:
        with pytest.raises(ChainError, match="only its own certificate"):
            thumbprint(server.url, verify=False)
        with pytest.raises(ChainError):  # and with the trust check, it does not verify at all
            thumbprint(server.url, ca_file=root_file)
    finally:
        server.close()


def test_a_self_signed_host_is_refused(tmp_path: Path):
    leaf, key = self_signed_leaf()
    from cryptography.hazmat.primitives import serialization

    (tmp_path / "site").mkdir()
    server = StaticSite(tmp_path / "site", leaf.public_bytes(serialization.Encoding.PEM),
                        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()), tmp_path / "tls")
    try:
        with pytest.raises(ChainError, match="self-signed"):
            thumbprint(server.url, verify=False)
        with pytest.raises(UntrustedChain):
            thumbprint(server.url)
    finally:
        server.close()


def test_a_host_that_does_not_answer_is_a_fetch_error_not_a_chain_verdict():
    from serving import free_port

    with pytest.raises(FetchError, match="TLS handshake failed"):
        thumbprint(f"https://127.0.0.1:{free_port()}")


@pytest.mark.parametrize("url", ["http://example.com", "https://", "https://host:notaport"])
def test_a_url_that_is_not_https_with_a_host_is_refused(url):
    with pytest.raises(OidcError):
        oidc_fetch.host_and_port(url)


# -- the published documents --------------------------------------------------------------------
@pytest.fixture(scope="module")
def signing_key():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def publish(site_dir: Path, issuer: str, key, prefix: str = "cluster-a") -> None:
    for relative, content in Publication(issuer, jwks_from_keys([key.public_key()])).files().items():
        path = site_dir / prefix / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def ca_file(tmp: Path, chain: Chain) -> str:
    (tmp / "root.crt").write_bytes(chain.pem(chain.root))
    return str(tmp / "root.crt")


def test_the_documents_are_fetched_from_the_issuer_url(site: StaticSite, chain: Chain, tmp_path: Path, signing_key):
    issuer = f"{site.url}/cluster-a"
    publish(tmp_path / "site", issuer, signing_key)
    discovery, jwks = asyncio.run(published_documents(issuer, ca_file(tmp_path, chain)))
    assert discovery["issuer"] == issuer and discovery["jwks_uri"] == f"{issuer}/keys.json"
    assert jwks == jwks_from_keys([signing_key.public_key()])


def test_a_token_verifies_against_the_published_documents(site: StaticSite, chain: Chain, tmp_path: Path,
                                                          signing_key):
    import time

    issuer = f"{site.url}/cluster-a"
    publish(tmp_path / "site", issuer, signing_key)
    token = sign_token(signing_key, claims_for(issuer, now=time.time()))
    verified = asyncio.run(verify_published(token, issuer, ca_file=ca_file(tmp_path, chain)))
    assert verified.subject == "system:serviceaccount:team:app"
    with pytest.raises(TokenRejected, match="audience"):
        asyncio.run(verify_published(token, issuer, audience="other", ca_file=ca_file(tmp_path, chain)))


def test_nothing_published_at_the_issuer_is_a_404(site: StaticSite, chain: Chain, tmp_path: Path):
    with pytest.raises(FetchError, match=r"openid-configuration: HTTP 404"):
        asyncio.run(published_documents(f"{site.url}/nothing", ca_file(tmp_path, chain)))


def test_a_private_ca_the_system_does_not_trust_is_named(site: StaticSite, tmp_path: Path, signing_key):
    issuer = f"{site.url}/cluster-a"
    publish(tmp_path / "site", issuer, signing_key)
    with pytest.raises(FetchError, match=r"not trusted.*--ca-file"):
        asyncio.run(published_documents(issuer))


@pytest.mark.parametrize(("jwks_uri", "says"), [("http://127.0.0.1/keys.json", "not an https URL"),
                                                (None, "not an https URL")])
def test_a_discovery_document_without_an_https_jwks_uri_is_refused(site: StaticSite, chain: Chain, tmp_path: Path,
                                                                   jwks_uri, says):
    issuer = f"{site.url}/cluster-a"
    path = tmp_path / "site" / "cluster-a" / ".well-known" / "openid-configuration"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"issuer": issuer, **({"jwks_uri": jwks_uri} if jwks_uri else {})}))
    with pytest.raises(FetchError, match=says):
        asyncio.run(published_documents(issuer, ca_file(tmp_path, chain)))


def test_a_published_jwks_that_is_not_json_is_refused(site: StaticSite, chain: Chain, tmp_path: Path, signing_key):
    issuer = f"{site.url}/cluster-a"
    publish(tmp_path / "site", issuer, signing_key)
    (tmp_path / "site" / "cluster-a" / "keys.json").write_text("<html>")
    with pytest.raises(FetchError, match=r"keys.json: not JSON"):
        asyncio.run(published_documents(issuer, ca_file(tmp_path, chain)))


# -- the pod's web-identity projection ----------------------------------------------------------
def mutated_pod() -> dict:
    """A pod as the webhook leaves it (web identity), reduced to what the lookup reads."""
    return {"metadata": {"name": "web", "namespace": "team"},
            "spec": {"serviceAccountName": "app",
                     "containers": [{"name": "sidecar"}, {
                         "name": "app",
                         "env": [{"name": "AWS_WEB_IDENTITY_TOKEN_FILE",
                                  "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"}],
                         "volumeMounts": [{"name": "aws-iam-token", "readOnly": True,
                                           "mountPath": "/var/run/secrets/eks.amazonaws.com/serviceaccount"}]}],
                     "volumes": [{"name": "aws-iam-token", "projected": {"sources": [{"serviceAccountToken": {
                         "audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token"}}]}}]}}


def test_the_token_requested_for_a_pod_is_the_one_its_sdk_reads():
    assert oidc_fetch.web_identity_projection(mutated_pod()) == {
        "audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token"}


def test_a_pod_the_webhook_did_not_mutate_is_named_as_such():
    pod = mutated_pod()
    del pod["spec"]["containers"][1]["env"]
    with pytest.raises(FetchError, match="team/web has no AWS_WEB_IDENTITY_TOKEN_FILE"):
        oidc_fetch.web_identity_projection(pod)


def test_a_token_file_that_is_not_a_projected_token_is_named():
    pod = mutated_pod()
    pod["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["path"] = "other"
    with pytest.raises(FetchError, match="is not a projected serviceAccountToken of container 'app'"):
        oidc_fetch.web_identity_projection(pod)
