"""`oidc publish` / `thumbprint` / `verify` against a real kube-apiserver (docs/self-hosted.md#publish,
docs/self-hosted.md#key-rotation).

A self-hosted cluster is played by a second kube-apiserver of the session (same etcd, its own
prefix) whose `--service-account-issuer` is the URL of a static https site on 127.0.0.1 with
its own CA (root → intermediate → leaf): the stand-in for the S3 bucket or CDN. The
documents `oidc publish` writes from the live API server are what that site serves, and
tokens from TokenRequest are checked against it as STS would. The failing paths: an API
server whose issuer is not the public URL (the session's own, `https://127.0.0.1:<port>`),
a JWKS left stale by a signing-key change, and a token for another audience.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import yaml
from cryptography.hazmat.primitives import serialization

from injector.certificates.authority import generate_private_key, key_to_pem
from injector.oidc.documents import key_id

from .api import ROLE_ANNOTATION, Kube, api_client
from .plane import ControlPlane, Proc, _apiserver_flags, _http_get, wait_until, write_kubeconfig
from oidc_helpers import Chain, StaticSite, make_chain
from serving import free_port

ROLE = "arn:aws:iam::111122223333:role/e2e-self-hosted"
ISSUER_PATH = "cluster-a"


def oidc(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The installed command, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "injector", "oidc", *map(str, args)], capture_output=True,
                          text=True, timeout=120, check=False, stdin=subprocess.DEVNULL)


async def run_oidc(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(oidc, *args)


@pytest.fixture(scope="module")
def local_plane(control_plane) -> ControlPlane:
    if control_plane.external:
        pytest.skip("external mode (E2E_KUBECONFIG): the self-hosted issuer is a second kube-apiserver of the "
                    "local session, started with --service-account-issuer at a loopback static site")
    return control_plane


@dataclass
class Site:
    """The public host: `directory` over https, sending leaf and intermediate (as S3 or a CDN
    do); clients trust `ca_file` (the root)."""

    server: StaticSite
    chain: Chain
    directory: Path
    ca_file: Path


@pytest.fixture(scope="module")
def site(local_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("oidc-site")
    chain = make_chain()
    (workdir / "root").mkdir()
    server = StaticSite(workdir / "root", chain.pem(chain.leaf, chain.intermediate), chain.leaf_key_pem(),
                        workdir / "tls")
    (workdir / "ca.crt").write_bytes(chain.pem(chain.root))
    yield Site(server, chain, workdir / "root", workdir / "ca.crt")
    server.close()


@dataclass
class SelfHosted:
    """A kube-apiserver whose issuer is the static site's URL; `restart` changes its keys."""

    plane: ControlPlane
    workdir: Path
    issuer: str
    site_dir: Path
    ca_file: Path
    port: int = 0
    proc: Proc | None = None
    signing_key: Path | None = None
    starts: int = 0

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def out(self) -> Path:
        """Where the documents go: the site's directory for the issuer's path."""
        return self.site_dir / ISSUER_PATH

    def start(self, signing_key: Path, verification_keys: list[Path]) -> None:
        etcd = next(a for a in self.plane.etcd.cmd if a.startswith("http://127.0.0.1:") and
                    self.plane.etcd.cmd[self.plane.etcd.cmd.index(a) - 1] == "--listen-client-url")
        etcd_port = int(etcd.rsplit(":", 1)[1])
        self.port = free_port()
        replaced = ("--service-account-issuer=", "--api-audiences=", "--service-account-key-file=",
                    "--service-account-signing-key-file=")
        flags = [f for f in _apiserver_flags(self.plane.pki, self.port, etcd_port) if not f.startswith(replaced)]
        flags += [f"--service-account-issuer={self.issuer}", f"--service-account-jwks-uri={self.issuer}/keys.json",
                  "--etcd-prefix=/oidc-self-hosted", f"--service-account-signing-key-file={signing_key}",
                  *(f"--service-account-key-file={key}" for key in verification_keys)]
        self.starts += 1
        self.proc = Proc("kube-apiserver (self-hosted issuer)", [self.plane.binary, "kube-apiserver", *flags],
                         self.workdir / f"kube-apiserver-{self.starts}.log").start()
        context = self.plane.admin_context()
        wait_until(lambda: _http_get(self.port, "/readyz", context)[0] == 200, 90,
                   "self-hosted kube-apiserver /readyz", proc=self.proc, interval=0.2)
        self.signing_key = signing_key
        write_kubeconfig(self.kubeconfig, f"https://127.0.0.1:{self.port}", self.plane.pki.ca_file,
                         client_cert=self.plane.pki.path("admin.crt"), client_key=self.plane.pki.path("admin.key"),
                         user="e2e-admin")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def new_key(self, name: str) -> Path:
        path = self.workdir / name
        path.write_bytes(key_to_pem(generate_private_key()))
        return path


@pytest.fixture(scope="module")
def self_hosted(local_plane: ControlPlane, site: Site,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[SelfHosted]:
    workdir = tmp_path_factory.mktemp("oidc-apiserver")
    cluster = SelfHosted(local_plane, workdir, f"{site.server.url}/{ISSUER_PATH}", site.directory, site.ca_file)
    key = cluster.new_key("sa-1.key")
    cluster.start(key, [key])
    yield cluster
    cluster.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(self_hosted: SelfHosted) -> AsyncIterator[Kube]:
    client = await api_client(self_hosted.kubeconfig)
    try:
        yield Kube(client)
    finally:
        await client.close()


async def mutated_pod(api: Kube, tmp_path: Path) -> tuple[str, str]:
    """A namespace with an annotated ServiceAccount and a pod as the webhook mutates it (the
    offline `mutate` command's output); no kubelet is needed: a token is bound to the object."""
    namespace = await api.namespace("e2e-oidc", service_accounts=())
    account = await api.service_account(namespace, "app", {ROLE_ANNOTATION: ROLE})
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": namespace},
           "spec": {"serviceAccountName": "app", "containers": [{"name": "app", "image": "busybox"}]}}
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    (tmp_path / "sa.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ServiceAccount", **account}))
    mutate = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "injector", "mutate", "-f",
                                                      str(tmp_path / "pod.yaml"), "--service-account",
                                                      str(tmp_path / "sa.yaml"), "-o", "pod"],
                                     capture_output=True, text=True, timeout=60, check=True)
    await api.create_pod(namespace, json.loads(mutate.stdout))
    return namespace, "web"


async def publish(cluster: SelfHosted) -> subprocess.CompletedProcess[str]:
    result = await run_oidc("publish", "--issuer", cluster.issuer, "--out", cluster.out,
                            "--kubeconfig", cluster.kubeconfig)
    assert result.returncode == 0, result.stderr
    return result


async def verify(cluster: SelfHosted, *source: str | Path) -> subprocess.CompletedProcess[str]:
    return await run_oidc("verify", "--issuer", cluster.issuer, *source, "--ca-file", cluster.ca_file,
                          "--kubeconfig", cluster.kubeconfig)


def signing_kid(cluster: SelfHosted) -> str:
    assert cluster.signing_key is not None
    key = serialization.load_pem_private_key(cluster.signing_key.read_bytes(), password=None)
    return key_id(key.public_key())


# -- the happy path ------------------------------------------------------------------------------
async def test_published_from_the_live_cluster_a_pods_token_verifies_as_sts_would(
        self_hosted: SelfHosted, api: Kube, site: Site, tmp_path: Path):
    result = await publish(self_hosted)
    assert result.stderr == ""  # the API server's own jwks_uri already names the published one
    assert f"wrote {self_hosted.out}/.well-known/openid-configuration" in result.stdout
    assert f"wrote {self_hosted.out}/keys.json" in result.stdout
    discovery = json.loads((self_hosted.out / ".well-known" / "openid-configuration").read_text())
    assert discovery["issuer"] == self_hosted.issuer
    assert discovery["jwks_uri"] == f"{self_hosted.issuer}/keys.json"
    jwks = json.loads((self_hosted.out / "keys.json").read_text())
    assert [k["kid"] for k in jwks["keys"]] == [signing_kid(self_hosted)]  # the API server's kid, computed here

    namespace, name = await mutated_pod(api, tmp_path)
    result = await verify(self_hosted, "--pod", name, "-n", namespace)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: the token of system:serviceaccount:{namespace}:app verifies against "
                                    f"{self_hosted.issuer}")
    provider = self_hosted.issuer.removeprefix("https://")
    assert f'"{provider}:sub": "system:serviceaccount:{namespace}:app"' in result.stdout

    chain = site.chain
    # The site's CA is private: thumbprint checks the served chain against it (docs/self-hosted.md#thumbprint).
    result = await run_oidc("thumbprint", self_hosted.issuer, "--ca-file", self_hosted.ca_file)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        Chain.sha1(chain.intermediate),
        f"aws iam create-open-id-connect-provider --url {self_hosted.issuer} --client-id-list sts.amazonaws.com "
        f"--thumbprint-list {Chain.sha1(chain.intermediate)}"]


# -- what STS would reject -------------------------------------------------------------------------
async def test_an_api_server_with_another_issuer_is_refused_with_the_flags_to_set(
        control_plane, self_hosted: SelfHosted, tmp_path: Path):
    """The session's API server signs with iss=https://127.0.0.1:<its port>, not the public URL."""
    result = await run_oidc("publish", "--issuer", self_hosted.issuer, "--out", tmp_path / "out",
                            "--kubeconfig", control_plane.kubeconfig)
    assert result.returncode == 1
    assert result.stdout == "" and not (tmp_path / "out").exists()
    [line] = result.stderr.splitlines()
    assert f"the API server's issuer is '{control_plane.issuer}', not --issuer '{self_hosted.issuer}'" in line
    assert f"--service-account-issuer={self_hosted.issuer}" in line
    assert f"--service-account-jwks-uri={self_hosted.issuer}/keys.json" in line

    admin = await api_client(control_plane.kubeconfig)
    try:
        kube = Kube(admin)
        namespace = await kube.namespace("e2e-oidc-other")
        token = (await kube.token(namespace, "default", audiences=["sts.amazonaws.com"]))["status"]["token"]
    finally:
        await admin.close()
    (tmp_path / "token").write_text(token)
    await publish(self_hosted)
    result = await verify(self_hosted, "--token", tmp_path / "token")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"pod-identity-injector: oidc verify: issuer: token iss is '{control_plane.issuer}', not "
        f"'{self_hosted.issuer}': the API server's --service-account-issuer must be {self_hosted.issuer}"]


async def test_a_token_for_another_audience_is_refused(self_hosted: SelfHosted, api: Kube, tmp_path: Path):
    await publish(self_hosted)
    namespace = await api.namespace("e2e-oidc-aud")
    answer = await api.token(namespace, "default")  # no audience: the API server's own (its issuer)
    (tmp_path / "token").write_text(answer["status"]["token"])
    result = await verify(self_hosted, "--token", tmp_path / "token")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"pod-identity-injector: oidc verify: audience: token audience ['{self_hosted.issuer}'] does not include "
        "'sts.amazonaws.com' (the IAM provider's client id); request the token with audience sts.amazonaws.com"]


async def test_a_signing_key_change_leaves_the_published_jwks_stale_until_published_again(
        self_hosted: SelfHosted, api: Kube, tmp_path: Path):
    await publish(self_hosted)
    old_kid = signing_kid(self_hosted)
    namespace, name = await mutated_pod(api, tmp_path)

    # The rotation done wrong: the API server signs with a new key before the site has it.
    old_key = self_hosted.signing_key
    assert old_key is not None
    new_key = self_hosted.new_key(f"sa-{self_hosted.starts + 1}.key")
    self_hosted.stop()
    await asyncio.to_thread(self_hosted.start, new_key, [new_key, old_key])
    new_kid = signing_kid(self_hosted)
    result = await verify(self_hosted, "--pod", name, "-n", namespace)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert f"key: token key id '{new_kid}' is not in the published JWKS at {self_hosted.issuer}/keys.json " \
           f"(it has '{old_kid}')" in line
    assert "run `oidc publish` again" in line

    # Published again: both keys (old tokens keep verifying), and the new token does.
    await publish(self_hosted)
    jwks = json.loads((self_hosted.out / "keys.json").read_text())
    assert {k["kid"] for k in jwks["keys"]} == {old_kid, new_kid}
    result = await verify(self_hosted, "--pod", name, "-n", namespace)
    assert result.returncode == 0, result.stderr
