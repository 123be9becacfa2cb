"""EKS Pod Identity (container credentials) mode: `--watch-container-credentials-config FILE`.

The identities file is laid out as a ConfigMap volume is (`identities.json` → `..data/…`,
`..data` → a timestamped directory), edited in place and swapped like the kubelet does, while
the webhook serves. The credentials endpoint is a local stand-in for the Pod Identity Agent."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web

from .api import ROLE_ANNOTATION, Kube, env_of, eventually, mounts_of, mutated, pod, unique, volume
from .aws import run_sdk, sdk_environment, write_projected_token
from .webhooks import BackgroundServer, Webhook, retire

CC_DIR = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount"
ROLE = "arn:aws:iam::111122223333:role/e2e-annotated"


class IdentitiesFile:
    """`identities.json` in a ConfigMap-volume layout."""

    NAME = "identities.json"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / self.NAME
        self.generation = 0
        directory.mkdir(parents=True, exist_ok=True)
        self.swap([])
        os.symlink(f"..data/{self.NAME}", self.path)

    @staticmethod
    def content(pairs: list[tuple[str, str]]) -> str:
        return json.dumps({"identities": [{"namespace": ns, "serviceAccount": sa} for ns, sa in pairs]})

    def rewrite(self, pairs: list[tuple[str, str]]) -> None:
        """An in-place edit (through the symlinks: same inode, new content)."""
        self.path.write_text(self.content(pairs))

    def swap(self, pairs: list[tuple[str, str]]) -> None:
        """The kubelet's atomic update: a new directory, then `..data` renamed over."""
        self.generation += 1
        data = self.directory / f"..2026_01_01_00_00_{self.generation:02d}.e2e"
        data.mkdir()
        (data / self.NAME).write_text(self.content(pairs))
        link = self.directory / "..data"
        old = os.readlink(link) if link.is_symlink() else None
        os.symlink(data.name, self.directory / "..data_tmp")
        os.replace(self.directory / "..data_tmp", link)
        if old:
            shutil.rmtree(self.directory / old)


class CredentialsEndpoint:
    """Answers GET /v1/credentials like the Pod Identity Agent when the Authorization header
    is exactly the expected token; records what it was sent."""

    def __init__(self) -> None:
        self.expected_token = ""
        self.seen: list[str] = []
        self.credentials = {
            "AccessKeyId": "ASIAE2EPODIDENTITY01", "SecretAccessKey": "e2e-secret-key", "Token": "e2e-session-token",
            "Expiration": (datetime.now(UTC) + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        app = web.Application()
        app.router.add_get("/v1/credentials", self.handle)
        self.server = BackgroundServer(app)

    async def handle(self, request: web.Request) -> web.Response:
        authorization = request.headers.get("Authorization", "")
        self.seen.append(authorization)
        if not self.expected_token or authorization != self.expected_token:
            return web.json_response({"message": "bad token"}, status=401)
        return web.json_response(self.credentials)

    @property
    def url(self) -> str:
        return f"{self.server.base_url}/v1/credentials"


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> IdentitiesFile:
    return IdentitiesFile(tmp_path_factory.mktemp("pod-identity") / "config")


@pytest.fixture(scope="module")
def endpoint() -> Iterator[CredentialsEndpoint]:
    endpoint = CredentialsEndpoint()
    endpoint.server.start()
    yield endpoint
    endpoint.server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pi_webhook(launch_webhook, admin: Kube, identities: IdentitiesFile, endpoint: CredentialsEndpoint):
    hook = await launch_webhook(name="pod-identity-webhook-container-credentials", label="pod-identity",
                                flags=("--watch-container-credentials-config", str(identities.path),
                                       "--container-credentials-full-uri", endpoint.url))
    yield hook
    assert await retire(admin, hook) == 0, hook.proc.tail()


async def namespace_with_apps(admin: Kube, hook: Webhook) -> str:
    ns = await admin.namespace("e2e-pi", hook.namespace_labels, service_accounts=("default", "plain"))
    await admin.service_account(ns, "annotated", {ROLE_ANNOTATION: ROLE})
    return ns


def container_credentials(p: dict) -> bool:
    return "AWS_CONTAINER_CREDENTIALS_FULL_URI" in env_of(p, "app")


def next_pod(admin: Kube, ns: str, sa: str):
    return lambda: admin.create_pod(ns, pod(unique("p"), sa), dry_run=True)


def assert_container_credentials(stored: dict, endpoint: CredentialsEndpoint) -> None:
    assert stored["metadata"]["labels"]["eks.amazonaws.com/pod-identity"] == "enabled"
    assert env_of(stored, "app") == {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": endpoint.url,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": f"{CC_DIR}/eks-pod-identity-token",
    }
    assert mounts_of(stored, "app")["eks-pod-identity-token"] == {
        "name": "eks-pod-identity-token", "mountPath": CC_DIR, "readOnly": True}
    [source] = volume(stored, "eks-pod-identity-token")["projected"]["sources"]
    token = source["serviceAccountToken"]
    assert token["audience"] == "pods.eks.amazonaws.com" and token["path"] == "eks-pod-identity-token"
    assert 79200 <= token["expirationSeconds"] <= 86400  # the default lifetime, jittered


async def test_in_place_edit_of_the_file_is_followed(admin, pi_webhook, identities, endpoint):
    ns = await namespace_with_apps(admin, pi_webhook)
    identities.rewrite([(ns, "annotated"), (ns, "plain")])
    listed = await eventually(next_pod(admin, ns, "plain"), container_credentials, what="the listed pair")
    assert_container_credentials(listed, endpoint)
    # Listed wins over the role annotation: container credentials, no AWS_ROLE_ARN.
    annotated = await admin.create_pod(ns, pod("annotated", "annotated"))
    assert_container_credentials(annotated, endpoint)

    identities.rewrite([(ns, "plain")])
    back = await eventually(next_pod(admin, ns, "annotated"), lambda p: "AWS_ROLE_ARN" in env_of(p, "app"),
                            what="the annotation again once unlisted")
    assert env_of(back, "app")["AWS_ROLE_ARN"] == ROLE and not container_credentials(back)


async def test_configmap_style_symlink_swap_is_followed(admin, pi_webhook, identities, endpoint):
    ns = await namespace_with_apps(admin, pi_webhook)
    identities.swap([(ns, "plain")])
    await eventually(next_pod(admin, ns, "plain"), container_credentials, what="the pair after a swap")
    assert_container_credentials(await admin.create_pod(ns, pod("listed", "plain")), endpoint)

    identities.swap([])
    await eventually(next_pod(admin, ns, "plain"), lambda p: not mutated(p), what="nothing after the next swap")


async def test_botocore_gets_container_credentials_with_the_projected_token(admin, pi_webhook, identities,
                                                                             endpoint, tmp_path):
    ns = await namespace_with_apps(admin, pi_webhook)
    identities.rewrite([(ns, "plain")])
    await eventually(next_pod(admin, ns, "plain"), container_credentials, what="the listed pair")
    stored = await admin.create_pod(ns, pod("sdk", "plain"))
    [source] = volume(stored, "eks-pod-identity-token")["projected"]["sources"]
    request = source["serviceAccountToken"]
    answer = await admin.token(ns, "plain", audiences=[request["audience"]],
                               expiration_seconds=request["expirationSeconds"], bound_pod=stored)
    endpoint.expected_token = answer["status"]["token"]
    write_projected_token(tmp_path, stored, "app", "eks-pod-identity-token", endpoint.expected_token)

    result = await run_sdk(sdk_environment(stored, "app", tmp_path))
    assert result["method"] == "container-role"
    assert (result["access_key"], result["secret_key"], result["token"]) == (
        "ASIAE2EPODIDENTITY01", "e2e-secret-key", "e2e-session-token")
    assert endpoint.seen[-1] == endpoint.expected_token
