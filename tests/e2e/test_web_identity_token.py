"""The whole IRSA chain with real parts: the projected token a mutated pod asks for is minted
by the API server (TokenRequest, as the kubelet does), verifies against the issuer's published
keys, and botocore, given only the pod's injected environment, exchanges it at STS (moto)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature

from .api import ROLE_ANNOTATION, Kube, env_of, pod, volume
from .aws import run_sdk, sdk_environment, verify_jwt, write_projected_token
from .plane import ControlPlane
from .webhooks import Webhook

ROLE = "arn:aws:iam::123456789012:role/e2e-web-identity"


@pytest.fixture(scope="module")
def sts() -> Iterator[str]:
    """moto's STS on 127.0.0.1 (it accepts any token: the JWT checks below are ours)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    yield f"http://127.0.0.1:{port}"
    server.stop()


async def discovery(plane: ControlPlane) -> tuple[dict, dict]:
    """The OIDC discovery document and the JWKS it points at (fetched as the admin)."""
    status, body = await asyncio.to_thread(plane.get, "/.well-known/openid-configuration")
    assert status == 200, body
    document = json.loads(body)
    prefix = f"{plane.url}/"
    assert document["jwks_uri"].startswith(prefix), document  # loopback only, never anything else
    status, body = await asyncio.to_thread(plane.get, "/" + document["jwks_uri"][len(prefix):])
    assert status == 200, body
    return document, json.loads(body)


async def test_projected_token_verifies_and_botocore_assumes_the_role(admin: Kube, webhook: Webhook,
                                                                      control_plane: ControlPlane, sts: str,
                                                                      tmp_path: Path):
    ns = await admin.namespace("e2e-token", webhook.namespace_labels)
    sa = await admin.service_account(ns, "app", {ROLE_ANNOTATION: ROLE})
    stored = await admin.create_pod(ns, pod("web", "app"))
    [source] = volume(stored, "aws-iam-token")["projected"]["sources"]
    request = source["serviceAccountToken"]
    assert request == {"audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token"}

    # The kubelet's part: a token exactly as the projection asks, bound to this pod.
    answer = await admin.token(ns, "app", audiences=[request["audience"]],
                               expiration_seconds=request["expirationSeconds"], bound_pod=stored)
    token, minted_at = answer["status"]["token"], time.time()

    document, jwks = await discovery(control_plane)
    assert document["issuer"] == control_plane.issuer
    header, claims = verify_jwt(token, jwks)
    assert header["alg"] == "RS256" and header["kid"] in {k["kid"] for k in jwks["keys"]}
    assert claims["iss"] == control_plane.issuer
    assert claims["aud"] == ["sts.amazonaws.com"]
    assert claims["sub"] == f"system:serviceaccount:{ns}:app"
    assert abs(claims["exp"] - (minted_at + request["expirationSeconds"])) < 60
    assert claims["exp"] - claims["iat"] == request["expirationSeconds"]
    binding = claims["kubernetes.io"]
    assert binding["namespace"] == ns
    assert binding["pod"] == {"name": "web", "uid": stored["metadata"]["uid"]}
    assert binding["serviceaccount"] == {"name": "app", "uid": sa["metadata"]["uid"]}
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(InvalidSignature):
        verify_jwt(tampered, jwks)

    # The API server itself accepts it for that audience (what STS would check through OIDC).
    review = await admin.call(admin.authentication.create_token_review, {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token, "audiences": ["sts.amazonaws.com"]}})
    assert review["status"]["authenticated"] is True, review["status"]
    assert review["status"]["user"]["username"] == f"system:serviceaccount:{ns}:app"

    # The SDK's part: nothing but the pod's environment (and the test's isolation).
    token_file = write_projected_token(tmp_path, stored, "app", "aws-iam-token", token)
    env = sdk_environment(stored, "app", tmp_path, AWS_ENDPOINT_URL_STS=sts)
    assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == str(token_file)
    assert env["AWS_ROLE_ARN"] == env_of(stored, "app")["AWS_ROLE_ARN"] == ROLE
    result = await run_sdk(env, caller_identity=True)
    assert result["method"] == "assume-role-with-web-identity"
    assert result["access_key"].startswith("ASIA") and result["token"]
    assert result["arn"].startswith("arn:aws:sts::123456789012:assumed-role/e2e-web-identity/")
