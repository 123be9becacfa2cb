"""injector.oidc.documents: the documents a self-hosted issuer publishes, a token checked the way STS
checks it, and the thumbprint IAM pins — all on values, no network.

Helpers shared with the other oidc tests are in tests/oidc_helpers.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from injector.oidc import documents as oidc
from injector.oidc.documents import (
    ChainError,
    IssuerMismatch,
    OidcError,
    Publication,
    TokenRejected,
    chain_thumbprint,
    check_issuer,
    create_provider_command,
    jwks_from_keys,
    key_id,
    load_public_keys,
    publication_from_cluster,
    verify_token,
)

from oidc_helpers import (
    ISSUER,
    NOW,
    Chain,
    b64url,
    claims_for,
    make_chain,
    pem_private,
    pem_public,
    self_signed_leaf,
    sign_token,
)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# -- issuer URLs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["https://oidc.example.com", "https://bucket.s3.eu-west-1.amazonaws.com/cluster-a",
                                 "https://127.0.0.1:8443/x"])
def test_an_https_issuer_is_taken_verbatim(url):
    assert check_issuer(url) == url


@pytest.mark.parametrize(("url", "says"), [
    ("http://oidc.example.com", "https://"),
    ("https:///path", "https://"),
    ("oidc.example.com", "https://"),
    ("https://oidc.example.com/a/", "must not end with '/'"),
    ("https://oidc.example.com/a?x=1", "query"),
    ("https://oidc.example.com/a#k", "fragment"),
])
def test_an_issuer_sts_could_not_match_is_refused(url, says):
    with pytest.raises(OidcError, match=says):
        check_issuer(url)


# -- keys and documents --------------------------------------------------------------------------
def test_the_key_id_is_the_api_servers_sha256_of_the_public_key_info(rsa_key):
    der = rsa_key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key_id(rsa_key.public_key()) == b64url(hashlib.sha256(der).digest())


def test_public_private_and_certificate_pem_all_give_public_keys_only(rsa_key, ec_key):
    chain = make_chain()
    pem = pem_public(rsa_key) + pem_private(ec_key) + chain.pem(chain.leaf)
    keys = load_public_keys(pem, "keys.pem")
    assert [key_id(k) for k in keys] == [key_id(rsa_key.public_key()), key_id(ec_key.public_key()),
                                         key_id(chain.leaf.public_key())]
    published = json.dumps(jwks_from_keys(keys))
    assert '"d"' not in published and "PRIVATE" not in published


def test_a_jwks_lists_each_key_once_with_the_algorithm_the_api_server_signs_with(rsa_key, ec_key):
    jwks = jwks_from_keys([rsa_key.public_key(), ec_key.public_key(), rsa_key.public_key()])
    assert [(k["kty"], k["alg"], k["use"]) for k in jwks["keys"]] == [("RSA", "RS256", "sig"), ("EC", "ES256", "sig")]
    assert jwks["keys"][1]["crv"] == "P-256"
    assert [oidc.key_id(oidc.jwk_public_key(k)) for k in jwks["keys"]] == [k["kid"] for k in jwks["keys"]]


@pytest.mark.parametrize(("pem", "says"), [
    (b"not pem at all", "no PEM public key"),
    (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "cannot read the PUBLIC KEY block"),
])
def test_a_key_file_without_a_usable_key_is_refused_naming_the_file(pem, says):
    with pytest.raises(OidcError, match=f"keys.pem: {says}"):
        load_public_keys(pem, "keys.pem")


def test_a_key_the_api_server_cannot_sign_with_is_refused():
    with pytest.raises(OidcError, match=r"RS256.*ES256"):
        load_public_keys(pem_public(ec.generate_private_key(ec.SECP384R1())), "p384.pem")


def test_the_published_discovery_document_names_the_public_issuer_and_its_jwks(rsa_key):
    publication = Publication(ISSUER, jwks_from_keys([rsa_key.public_key()]))
    files = publication.files()
    assert sorted(files) == [".well-known/openid-configuration", "keys.json"]
    discovery = json.loads(files[".well-known/openid-configuration"])
    assert discovery == {"issuer": ISSUER, "jwks_uri": f"{ISSUER}/keys.json",
                         "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                         "id_token_signing_alg_values_supported": ["RS256"]}
    assert json.loads(files["keys.json"]) == publication.jwks


def cluster_documents(issuer: str, jwks_uri: str, key: Any) -> tuple[dict, dict]:
    """What kube-apiserver serves at /.well-known/openid-configuration and /openid/v1/jwks."""
    return ({"issuer": issuer, "jwks_uri": jwks_uri, "response_types_supported": ["id_token"],
             "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"]},
            jwks_from_keys([key.public_key()]))


@pytest.mark.parametrize(("jwks_uri", "path"), [
    (f"{ISSUER}/openid/v1/jwks", "openid/v1/jwks"),  # --service-account-jwks-uri already under the issuer
    (f"{ISSUER}/keys.json", "keys.json"),
    ("https://10.0.0.1:6443/openid/v1/jwks", "keys.json"),  # the in-cluster address: rewritten
    (f"{ISSUER}/../etc/keys", "keys.json"),
])
def test_publishing_from_the_cluster_keeps_its_keys_and_puts_the_jwks_under_the_issuer(rsa_key, jwks_uri, path):
    discovery, jwks = cluster_documents(ISSUER, jwks_uri, rsa_key)
    publication = publication_from_cluster(ISSUER, discovery, jwks)
    assert publication.jwks == jwks
    assert publication.jwks_path == path
    assert publication.discovery["jwks_uri"] == f"{ISSUER}/{path}"
    assert publication.discovery["issuer"] == ISSUER


def test_a_cluster_with_another_issuer_is_refused_with_the_flags_to_change(rsa_key):
    discovery, jwks = cluster_documents("https://kubernetes.default.svc.cluster.local", "https://10.0.0.1/x", rsa_key)
    with pytest.raises(IssuerMismatch) as raised:
        publication_from_cluster(ISSUER, discovery, jwks)
    message = str(raised.value)
    assert f"'https://kubernetes.default.svc.cluster.local', not --issuer '{ISSUER}'" in message
    assert f"--service-account-issuer={ISSUER}" in message
    assert f"--service-account-jwks-uri={ISSUER}/keys.json" in message


def test_a_cluster_jwks_that_cannot_be_read_is_not_published(rsa_key):
    discovery, _ = cluster_documents(ISSUER, f"{ISSUER}/keys.json", rsa_key)
    for jwks in ({}, {"keys": []}, {"keys": [{"kty": "RSA", "kid": "k", "n": "!!"}]}, {"keys": [{"kty": "oct"}]}):
        with pytest.raises(OidcError):
            publication_from_cluster(ISSUER, discovery, jwks)


def test_the_iam_command_registers_the_issuer_for_sts():
    assert create_provider_command(ISSUER, "ab" * 20) == (
        f"aws iam create-open-id-connect-provider --url {ISSUER} --client-id-list sts.amazonaws.com "
        f"--thumbprint-list {'ab' * 20}")


# -- tokens --------------------------------------------------------------------------------------
def published(key: Any, issuer: str = ISSUER) -> dict[str, Any]:
    publication = Publication(issuer, jwks_from_keys([key.public_key()]))
    return {"issuer": issuer, "discovery": publication.discovery, "jwks": publication.jwks}


@pytest.mark.parametrize("key_fixture", ["rsa_key", "ec_key"])
def test_a_token_the_issuer_signed_for_sts_verifies(request, key_fixture):
    key = request.getfixturevalue(key_fixture)
    verified = verify_token(sign_token(key, claims_for()), **published(key), now=NOW + 10)
    assert verified.subject == "system:serviceaccount:team:app"
    assert verified.audiences == ["sts.amazonaws.com"]
    assert verified.expires_at == datetime.fromtimestamp(NOW + 3600, UTC)


def test_a_string_audience_counts_like_a_list_of_one(rsa_key):
    verify_token(sign_token(rsa_key, claims_for(aud="sts.amazonaws.com")), **published(rsa_key), now=NOW)


def test_a_token_without_kid_is_checked_against_every_key_of_its_type(rsa_key):
    verify_token(sign_token(rsa_key, claims_for(), kid=""), **published(rsa_key), now=NOW)


OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)

REJECTIONS = [
    # (what is wrong, how to make the token, check, words of the message)
    ("another issuer in the token", lambda k: sign_token(k, claims_for("https://10.0.0.1:6443")), "issuer",
     "token iss is 'https://10.0.0.1:6443', not 'https://oidc.example.com/cluster-a'"),
    ("the key was rotated after publishing", lambda k: sign_token(OTHER_KEY, claims_for()), "key",
     "not in the published JWKS"),
    ("same kid, other key", lambda k: sign_token(OTHER_KEY, claims_for(), kid=key_id(k.public_key())), "signature",
     "does not verify"),
    ("altered claims", lambda k: _swap_claims(sign_token(k, claims_for()), claims_for(sub="system:admin")),
     "signature", "does not verify"),
    ("the cluster's own audience", lambda k: sign_token(k, claims_for(aud=["https://kubernetes.default.svc"])),
     "audience", "['https://kubernetes.default.svc'] does not include 'sts.amazonaws.com'"),
    ("no audience", lambda k: sign_token(k, claims_for(aud=None)), "audience", "[] does not include"),
    ("expired", lambda k: sign_token(k, claims_for(exp=int(NOW) - 5)), "expired", "5s ago"),
    ("no exp", lambda k: sign_token(k, claims_for(exp=None)), "malformed", "no exp"),
    ("issued in the future", lambda k: sign_token(k, claims_for(nbf=int(NOW) + 600)), "not-yet-valid", "nbf"),
    ("no subject", lambda k: sign_token(k, claims_for(sub=None)), "malformed", "no sub"),
    ("alg none", lambda k: _unsigned(claims_for()), "malformed", "alg is 'none'"),
    ("HS256", lambda k: sign_token(k, claims_for(), alg="HS256"), "malformed", "alg is 'HS256'"),
    ("not a JWT", lambda k: "abc.def", "malformed", "2 dot-separated parts"),
    ("garbage parts", lambda k: "a.b.c", "malformed", "not a JWT"),
]


def _swap_claims(token: str, claims: dict[str, Any]) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"


def _unsigned(claims: dict[str, Any]) -> str:
    header = b64url(json.dumps({"alg": "none"}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}."


@pytest.mark.parametrize(("case", "make", "check", "says"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_each_mismatch_sts_would_reject_is_named_exactly(rsa_key, case, make, check, says):
    with pytest.raises(TokenRejected) as raised:
        verify_token(make(rsa_key), **published(rsa_key), now=NOW)
    assert raised.value.check == check
    assert says in str(raised.value)


def test_a_discovery_document_for_another_issuer_fails_before_the_token_is_read(rsa_key):
    documents = published(rsa_key, issuer="https://10.0.0.1:6443")
    with pytest.raises(TokenRejected, match=r"says issuer 'https://10.0.0.1:6443'") as raised:
        verify_token(sign_token(rsa_key, claims_for()), issuer=ISSUER, discovery=documents["discovery"],
                     jwks=documents["jwks"], now=NOW)
    assert raised.value.check == "discovery"


def test_a_stale_jwks_says_to_publish_again(rsa_key):
    with pytest.raises(TokenRejected, match=r"run `oidc publish` again"):
        verify_token(sign_token(OTHER_KEY, claims_for()), **published(rsa_key), now=NOW)


def test_the_audience_checked_is_the_one_asked_for(rsa_key):
    token = sign_token(rsa_key, claims_for(aud=["custom"]))
    verify_token(token, **published(rsa_key), audience="custom", now=NOW)
    with pytest.raises(TokenRejected, match=r"does not include 'sts.amazonaws.com'"):
        verify_token(token, **published(rsa_key), now=NOW)


def test_now_defaults_to_the_clock(rsa_key):
    verify_token(sign_token(rsa_key, claims_for(now=time.time())), **published(rsa_key))


# -- thumbprint ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chain() -> Chain:
    return make_chain()


def test_the_thumbprint_is_the_sha1_of_the_last_certificate_served(chain):
    assert chain_thumbprint([chain.leaf, chain.intermediate], "127.0.0.1") == Chain.sha1(chain.intermediate)
    assert chain_thumbprint([chain.leaf, chain.intermediate, chain.root], "localhost") == Chain.sha1(chain.root)


def test_a_self_signed_certificate_has_no_ca_to_pin():
    leaf, _ = self_signed_leaf()
    with pytest.raises(ChainError, match="self-signed"):
        chain_thumbprint([leaf], "127.0.0.1")


def test_a_leaf_served_without_its_chain_is_incomplete(chain):
    with pytest.raises(ChainError, match=r"only its own certificate .*send the intermediate"):
        chain_thumbprint([chain.leaf], "127.0.0.1")


def test_a_chain_with_a_gap_or_in_the_wrong_order_is_incomplete(chain):
    with pytest.raises(ChainError, match=r"incomplete or out-of-order.*certificate 0"):
        chain_thumbprint([chain.leaf, chain.root], "127.0.0.1")
    with pytest.raises(ChainError, match="incomplete or out-of-order"):
        chain_thumbprint([chain.intermediate, chain.leaf], "127.0.0.1")


def test_a_leaf_for_another_host_or_out_of_date_is_refused(chain):
    with pytest.raises(ChainError, match="would not be accepted"):
        chain_thumbprint([chain.leaf, chain.intermediate], "oidc.example.com")
    with pytest.raises(ChainError, match="would not be accepted"):
        chain_thumbprint([chain.leaf, chain.intermediate], "127.0.0.1", now=datetime.now(UTC) + timedelta(days=30))
