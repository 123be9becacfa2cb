"""`pod-identity-injector oidc …` as a user runs it, with no cluster: documents published from
key files onto a local https site (its own CA), tokens verified against that site, the
thumbprint of its chain. Exit 0 when everything holds, 1 when a check fails, 2 when the
command cannot run; a failure is one line on stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from injector.oidc.documents import key_id

from oidc_helpers import (
    Chain,
    StaticSite,
    claims_for,
    make_chain,
    pem_private,
    pem_public,
    self_signed_leaf,
    sign_token,
)
from serving import free_port


def oidc(*args: str | Path, stdin: str | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "injector", "oidc", *map(str, args)], capture_output=True,
                          text=True, input=stdin, timeout=60, check=False,
                          env={**os.environ, **env} if env else None)


def one_line(result: subprocess.CompletedProcess[str], code: int, command: str) -> str:
    """The failure's single stderr line (and nothing on stdout)."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"pod-identity-injector: oidc {command}: ")
    return line


@pytest.fixture(scope="module")
def chain() -> Chain:
    return make_chain()


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def site(tmp_path: Path, chain: Chain) -> Iterator[StaticSite]:
    (tmp_path / "site").mkdir()
    server = StaticSite(tmp_path / "site", chain.pem(chain.leaf, chain.intermediate), chain.leaf_key_pem(),
                        tmp_path / "tls")
    (tmp_path / "ca.crt").write_bytes(chain.pem(chain.root))
    yield server
    server.close()


def publish_keys(tmp_path: Path, issuer: str, *keys) -> subprocess.CompletedProcess[str]:
    args: list[str | Path] = ["publish", "--issuer", issuer, "--out", tmp_path / "site" / "cluster-a"]
    for i, k in enumerate(keys):
        (tmp_path / f"sa-{i}.key").write_bytes(pem_private(k))
        args += ["--key", tmp_path / f"sa-{i}.key"]
    return oidc(*args)


# -- publish -------------------------------------------------------------------------------------
def test_publish_from_key_files_writes_both_documents_and_says_what_comes_next(tmp_path: Path, key):
    issuer = "https://oidc.example.com/cluster-a"
    result = publish_keys(tmp_path, issuer, key)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "site" / "cluster-a"
    discovery = json.loads((out / ".well-known" / "openid-configuration").read_text())
    assert (discovery["issuer"], discovery["jwks_uri"]) == (issuer, f"{issuer}/keys.json")
    jwks = (out / "keys.json").read_text()
    assert [k["kid"] for k in json.loads(jwks)["keys"]] == [key_id(key.public_key())]
    assert '"d"' not in jwks  # the private half never leaves the key file
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["keys.json", "openid-configuration"]
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"wrote {out}/.well-known/openid-configuration", f"wrote {out}/keys.json"]
    assert f"  pod-identity-injector oidc thumbprint {issuer}" in lines
    assert (f"  aws iam create-open-id-connect-provider --url {issuer} --client-id-list sts.amazonaws.com "
            "--thumbprint-list THUMBPRINT") in lines


@pytest.mark.parametrize(("args", "says"), [
    (["--issuer", "http://oidc.example.com", "--key", "k.pem"], "must be an https:// URL"),
    (["--issuer", "https://oidc.example.com/", "--key", "k.pem"], "must not end with '/'"),
    (["--issuer", "https://oidc.example.com", "--key", "missing.pem"], "--key missing.pem: No such file"),
    (["--issuer", "https://oidc.example.com", "--kubeconfig", "missing.kubeconfig"],
     "--kubeconfig missing.kubeconfig: no such file"),
])
def test_publish_input_that_cannot_be_used_exits_2(tmp_path: Path, args, says):
    result = oidc("publish", "--out", tmp_path / "out", *args)
    assert says in one_line(result, 2, "publish")
    assert not (tmp_path / "out").exists()


def test_publish_from_an_api_server_that_does_not_answer_exits_2(tmp_path: Path):
    result = oidc("publish", "--issuer", "https://oidc.example.com", "--out", tmp_path / "out",
                  "--kube-api", f"http://127.0.0.1:{free_port()}", "--kubeconfig", "")
    assert "/.well-known/openid-configuration from the API server" in one_line(result, 2, "publish")


# -- verify --------------------------------------------------------------------------------------
def test_a_token_signed_by_the_published_key_verifies(tmp_path: Path, site: StaticSite, key):
    issuer = f"{site.url}/cluster-a"
    assert publish_keys(tmp_path, issuer, key).returncode == 0
    (tmp_path / "token").write_text(sign_token(key, claims_for(issuer, now=time.time())) + "\n")
    result = oidc("verify", "--issuer", issuer, "--token", tmp_path / "token", "--ca-file", tmp_path / "ca.crt")
    assert result.returncode == 0, result.stderr
    ok, policy = result.stdout.splitlines()
    assert ok.startswith(f"ok: the token of system:serviceaccount:team:app verifies against {issuer} ")
    assert f"key {key_id(key.public_key())}, RS256, audience sts.amazonaws.com" in ok
    host_path = issuer.removeprefix("https://")
    assert policy == (f'trust policy condition: "StringEquals": {{"{host_path}:sub": '
                      f'"system:serviceaccount:team:app", "{host_path}:aud": "sts.amazonaws.com"}}')


def test_a_token_from_stdin_is_read_too(tmp_path: Path, site: StaticSite, key):
    issuer = f"{site.url}/cluster-a"
    assert publish_keys(tmp_path, issuer, key).returncode == 0
    result = oidc("verify", "--issuer", issuer, "--token", "-", "--ca-file", tmp_path / "ca.crt",
                  stdin=sign_token(key, claims_for(issuer, now=time.time())))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("case", "says"), [
    ("rotated key", "key: token key id"),
    ("wrong audience", "audience: token audience ['https://kubernetes.default.svc'] does not include"),
    ("expired", "expired: token expired at"),
])
def test_a_token_sts_would_reject_exits_1_naming_the_mismatch(tmp_path: Path, site: StaticSite, key, case, says):
    issuer = f"{site.url}/cluster-a"
    assert publish_keys(tmp_path, issuer, key).returncode == 0
    now = time.time()
    token = {"rotated key": lambda: sign_token(rsa.generate_private_key(public_exponent=65537, key_size=2048),
                                               claims_for(issuer, now=now)),
             "wrong audience": lambda: sign_token(key, claims_for(issuer, now=now,
                                                                  aud=["https://kubernetes.default.svc"])),
             "expired": lambda: sign_token(key, claims_for(issuer, now=now - 7200))}[case]()
    (tmp_path / "token").write_text(token)
    result = oidc("verify", "--issuer", issuer, "--token", tmp_path / "token", "--ca-file", tmp_path / "ca.crt")
    assert says in one_line(result, 1, "verify")


def test_an_issuer_url_that_publishes_nothing_fails_the_check(tmp_path: Path, site: StaticSite, key):
    (tmp_path / "token").write_text(sign_token(key, claims_for(f"{site.url}/none")))
    result = oidc("verify", "--issuer", f"{site.url}/none", "--token", tmp_path / "token",
                  "--ca-file", tmp_path / "ca.crt")
    assert "published documents: " in one_line(result, 1, "verify")
    assert "HTTP 404" in result.stderr


@pytest.mark.parametrize(("args", "says"), [
    (["--token", "missing"], "--token missing:"),
    (["--token", "empty"], "--token empty is empty"),
    (["--token", "empty", "--ca-file", "missing.crt"], "--ca-file missing.crt"),
])
def test_verify_input_that_cannot_be_used_exits_2(tmp_path: Path, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").write_text("\n")
    result = oidc("verify", "--issuer", "https://oidc.example.com", *args)
    assert says in one_line(result, 2, "verify")


def test_verify_needs_a_token_or_a_pod():
    result = oidc("verify", "--issuer", "https://oidc.example.com")
    assert result.returncode == 2 and "one of the arguments --token --pod is required" in result.stderr


# -- thumbprint ----------------------------------------------------------------------------------
def test_thumbprint_prints_it_and_the_iam_command(site: StaticSite, chain: Chain, tmp_path: Path):
    result = oidc("thumbprint", f"{site.url}/cluster-a", "--ca-file", tmp_path / "ca.crt")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        Chain.sha1(chain.intermediate),
        f"aws iam create-open-id-connect-provider --url {site.url}/cluster-a --client-id-list sts.amazonaws.com "
        f"--thumbprint-list {Chain.sha1(chain.intermediate)}"]
    assert result.stderr == ""


def test_thumbprint_checks_the_chain_against_the_system_trust_store(site: StaticSite, chain: Chain, tmp_path: Path):
    trusted = oidc("thumbprint", site.url, env={"SSL_CERT_FILE": str(tmp_path / "ca.crt")})
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stdout.splitlines()[0] == Chain.sha1(chain.intermediate)
    assert len(trusted.stdout.splitlines()) == 2 and trusted.stderr == ""


def test_a_chain_the_trust_store_does_not_vouch_for_gets_no_thumbprint(site: StaticSite):
    """What a man-in-the-middle would serve: refused (exit 1), saying how to go on."""
    line = one_line(oidc("thumbprint", site.url), 1, "thumbprint")
    assert "not trusted" in line and "the system trust store" in line
    assert "--ca-file" in line and "--insecure" in line


def test_a_chain_of_another_ca_than_the_ca_file_gets_no_thumbprint(site: StaticSite, tmp_path: Path):
    other = make_chain()
    (tmp_path / "other.crt").write_bytes(other.pem(other.root))
    line = one_line(oidc("thumbprint", site.url, "--ca-file", tmp_path / "other.crt"), 1, "thumbprint")
    assert "not trusted" in line and f"--ca-file {tmp_path / 'other.crt'}" in line


def test_an_unreadable_ca_file_exits_2(site: StaticSite, tmp_path: Path):
    assert "--ca-file" in one_line(oidc("thumbprint", site.url, "--ca-file", tmp_path / "missing.crt"), 2,
                                   "thumbprint")


def test_insecure_takes_the_thumbprint_and_says_loudly_that_nothing_was_checked(site: StaticSite, chain: Chain):
    result = oidc("thumbprint", site.url, "--insecure")
    assert result.returncode == 0, result.stderr
    value, command, warning = result.stdout.splitlines()
    assert value == Chain.sha1(chain.intermediate) and command.startswith("aws iam create-open-id-connect-provider")
    assert warning.startswith("# WARNING: the chain 127.0.0.1 served was NOT checked against any trust store")
    [said] = result.stderr.splitlines()
    assert said.startswith("pod-identity-injector: oidc thumbprint: warning: ") and "NOT checked" in said


def test_a_self_signed_host_fails_the_thumbprint_check(tmp_path: Path):
    from cryptography.hazmat.primitives import serialization

    leaf, leaf_key = self_signed_leaf()
    (tmp_path / "site").mkdir()
    server = StaticSite(tmp_path / "site", leaf.public_bytes(serialization.Encoding.PEM), pem_private(leaf_key),
                        tmp_path / "tls")
    try:
        assert "not trusted" in one_line(oidc("thumbprint", server.url), 1, "thumbprint")
        # Even unchecked, a self-signed certificate is nothing IAM can pin.
        assert "self-signed" in one_line(oidc("thumbprint", server.url, "--insecure"), 1, "thumbprint")
    finally:
        server.close()


def test_a_host_that_does_not_answer_exits_2():
    assert "Connection refused" in one_line(oidc("thumbprint", f"https://127.0.0.1:{free_port()}"), 2, "thumbprint")


# -- the webhook is not burdened -------------------------------------------------------------------
def test_serving_never_imports_the_oidc_modules():
    probe = ("import sys, injector.cli.main, injector.server.processes, injector.server.wiring; "
             "print(sorted(m for m in sys.modules if m.startswith('injector.oidc')))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"


def test_the_public_key_pem_works_like_the_private_one(tmp_path: Path, key):
    (tmp_path / "sa.pub").write_bytes(pem_public(key))
    result = oidc("publish", "--issuer", "https://oidc.example.com", "--out", tmp_path / "out", "--key",
                  tmp_path / "sa.pub")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "keys.json").read_text())["keys"][0]["kid"] == key_id(key.public_key())
