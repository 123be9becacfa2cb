"""The account id and partition from EC2 instance metadata (injector/sources/instance_metadata.py,
docs/reference.md#instance-metadata), against a stand-in on 127.0.0.1 that checks what IMDS
checks: a token PUT needs a TTL between 1 and 21600 seconds and may not carry X-Forwarded-For;
a GET without a valid token is refused with 401 unless IMDSv1 is allowed.

The command-line tests run the real `pod-identity-injector mutate` and `serve` processes with
AWS_EC2_METADATA_SERVICE_ENDPOINT pointing at the stand-in (or at a closed loopback port).
No test reaches anything but loopback.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from injector.cli import parser as cli
from injector.core.settings import MutationSettings, SettingsError
from injector.sources.instance_metadata import (
    DOCUMENT_PATH,
    ENDPOINT_ENV,
    ENDPOINT_MODE_ENV,
    IPV4_ENDPOINT,
    IPV6_ENDPOINT,
    PARTITION_PATH,
    TOKEN_HEADER,
    TOKEN_PATH,
    TOKEN_TTL_HEADER,
    MetadataError,
    endpoint_from,
    lookup,
    partition_for_region,
)

from serving import free_port, make_certs, pod_review, start_server

ACCOUNT = "210987654321"
DOCUMENT = {"accountId": ACCOUNT, "region": "cn-northwest-1", "instanceId": "i-0123456789abcdef0",
            "availabilityZone": "cn-northwest-1a", "architecture": "x86_64"}


# -- the stand-in ------------------------------------------------------------------------------
@dataclass
class Imds:
    """What the stand-in answers; `requests` records (method, path, headers) as received."""

    document: bytes = json.dumps(DOCUMENT).encode()
    partition: str | None = "aws-cn"  # None: services/partition is 404
    v1_allowed: bool = False  # HttpTokens=optional
    token_status: int = 200  # anything else: the token PUT is answered with this status
    token_delay: float = 0.0  # seconds before the token answer (a dropped answer, as with a hop limit of 1)
    accept_tokens: bool = True  # False: every token is refused, as after they expire
    fail_first: int = 0  # answer this many requests with 503 first
    tokens: dict[str, float] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environ(self, **extra: str) -> dict[str, str]:
        return {ENDPOINT_ENV: self.endpoint, **extra}


def _handler(imds: Imds) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in {"Content-Type": "text/plain", **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def record(self) -> bool:
            imds.requests.append((self.command, self.path, dict(self.headers)))
            if imds.fail_first > 0:
                imds.fail_first -= 1
                self.answer(503)
                return False
            return True

        def do_PUT(self) -> None:
            if not self.record():
                return
            if self.path != TOKEN_PATH:
                return self.answer(403)
            if "X-Forwarded-For" in self.headers:
                return self.answer(403)  # IMDS refuses token requests that came through a proxy
            ttl = self.headers.get(TOKEN_TTL_HEADER, "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return self.answer(400)
            if imds.token_delay:
                time.sleep(imds.token_delay)
            if imds.token_status != 200:
                return self.answer(imds.token_status)
            token = secrets.token_urlsafe(32)
            imds.tokens[token] = time.monotonic() + int(ttl)
            self.answer(200, token.encode(), {TOKEN_TTL_HEADER: ttl})

        def do_GET(self) -> None:
            if not self.record():
                return
            token = self.headers.get(TOKEN_HEADER)
            if token is not None:
                if not imds.accept_tokens or imds.tokens.get(token, 0) < time.monotonic():
                    return self.answer(401)
            elif not imds.v1_allowed:
                return self.answer(401)
            if self.path == DOCUMENT_PATH:
                return self.answer(200, imds.document, {"Content-Type": "application/json"})
            if self.path == PARTITION_PATH and imds.partition is not None:
                return self.answer(200, imds.partition.encode())
            self.answer(404)

    return Handler


def serve_imds(imds: Imds, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    server_class = http.server.ThreadingHTTPServer
    if ":" in host:
        server_class = type("V6Server", (http.server.ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    server = server_class((host, 0), _handler(imds))
    server.daemon_threads = True
    imds.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def imds() -> Iterator[Imds]:
    stand_in = Imds()
    server = serve_imds(stand_in)
    yield stand_in
    server.shutdown()
    server.server_close()


def closed_port_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"


def raw(imds: Imds, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", imds.port, timeout=5)
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# -- the stand-in checks what IMDS checks ------------------------------------------------------
@pytest.mark.parametrize("headers, status", [
    ({}, 400),
    ({TOKEN_TTL_HEADER: ""}, 400),
    ({TOKEN_TTL_HEADER: "0"}, 400),
    ({TOKEN_TTL_HEADER: "21601"}, 400),
    ({TOKEN_TTL_HEADER: "ten"}, 400),
    ({TOKEN_TTL_HEADER: "60", "X-Forwarded-For": "10.0.0.7"}, 403),
    ({TOKEN_TTL_HEADER: "21600"}, 200),
])
def test_stand_in_checks_the_token_request(imds: Imds, headers: dict[str, str], status: int):
    assert raw(imds, "PUT", TOKEN_PATH, headers)[0] == status


def test_stand_in_refuses_a_get_without_a_valid_token(imds: Imds):
    assert raw(imds, "GET", DOCUMENT_PATH, {})[0] == 401
    assert raw(imds, "GET", DOCUMENT_PATH, {TOKEN_HEADER: "forged"})[0] == 401
    token = raw(imds, "PUT", TOKEN_PATH, {TOKEN_TTL_HEADER: "5"})[1].decode()
    status, body = raw(imds, "GET", DOCUMENT_PATH, {TOKEN_HEADER: token})
    assert status == 200 and json.loads(body)["accountId"] == ACCOUNT


# -- the lookup --------------------------------------------------------------------------------
def test_lookup_takes_a_token_then_reads_the_document_and_the_partition(imds: Imds):
    found = lookup(imds.environ())
    assert (found.account_id, found.region, found.partition, found.partition_from) == (
        ACCOUNT, "cn-northwest-1", "aws-cn", "metadata")
    assert found.endpoint == imds.endpoint
    (put, put_path, put_headers), *gets = imds.requests
    assert (put, put_path) == ("PUT", TOKEN_PATH)
    assert 1 <= int(put_headers[TOKEN_TTL_HEADER]) <= 21600 and "X-Forwarded-For" not in put_headers
    assert [(m, p) for m, p, _ in gets] == [("GET", DOCUMENT_PATH), ("GET", PARTITION_PATH)]
    assert all(h[TOKEN_HEADER] in imds.tokens for _, _, h in gets)


@pytest.mark.parametrize("region, partition", [
    ("us-east-1", "aws"), ("eu-west-3", "aws"), ("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov"),
    ("us-iso-east-1", "aws-iso"), ("us-isob-east-1", "aws-iso-b"), ("eu-isoe-west-1", "aws-iso-e"),
    ("us-isof-south-1", "aws-iso-f"), ("eusc-de-east-1", "aws-eusc"),
])
def test_partition_from_the_region_name(region: str, partition: str):
    assert partition_for_region(region) == partition


@pytest.mark.parametrize("answered", [None, "aws-moon", ""])
def test_without_a_known_services_partition_the_region_decides(imds: Imds, answered: str | None):
    imds.partition = answered
    imds.document = json.dumps({**DOCUMENT, "region": "us-gov-east-1"}).encode()
    found = lookup(imds.environ())
    assert (found.partition, found.partition_from) == ("aws-us-gov", "region")


def test_a_token_request_refused_as_unsupported_falls_back_to_imdsv1(imds: Imds):
    imds.token_status, imds.v1_allowed = 404, True
    assert lookup(imds.environ()).account_id == ACCOUNT
    assert all(TOKEN_HEADER not in h for m, _, h in imds.requests if m == "GET")


def test_a_token_answer_that_never_arrives_falls_back_to_imdsv1(imds: Imds):
    imds.token_delay, imds.v1_allowed = 0.5, True
    assert lookup(imds.environ(), timeout=0.2).account_id == ACCOUNT


def test_without_a_token_answer_and_without_imdsv1_the_error_names_the_hop_limit(imds: Imds):
    imds.token_delay = 0.5
    with pytest.raises(MetadataError) as caught:
        lookup(imds.environ(), timeout=0.2)
    message = str(caught.value)
    assert f"EC2 instance metadata at {imds.endpoint} answered HTTP 401" in message and "hop limit" in message
    assert "\n" not in message


def test_a_server_error_is_tried_again(imds: Imds):
    imds.fail_first = 1
    assert lookup(imds.environ()).account_id == ACCOUNT
    assert [m for m, _, _ in imds.requests][:2] == ["PUT", "PUT"]


@pytest.mark.parametrize("change, expected", [
    ({"accept_tokens": False}, "answered HTTP 401 for /latest/dynamic/instance-identity/document (the token "
                               "was refused)"),
    ({"token_status": 400}, "answered HTTP 400 to the token request"),
    ({"token_status": 401}, "answered HTTP 401 to the token request"),
    ({"token_status": 403}, "answered HTTP 401 for /latest/dynamic/instance-identity/document; the token "
                            "request got HTTP 403"),
    ({"fail_first": 10}, "answered HTTP 503 to the token request"),
    ({"document": b"<html>captive portal</html>"}, "answered an identity document that is not a JSON object"),
    ({"document": b"[]"}, "answered an identity document that is not a JSON object"),
    ({"document": json.dumps({"region": "us-east-1"}).encode()}, "without a 12-digit accountId (accountId: None)"),
    ({"document": json.dumps({**DOCUMENT, "accountId": "12345678901"}).encode()},
     "without a 12-digit accountId (accountId: '12345678901')"),
    ({"document": json.dumps({**DOCUMENT, "accountId": 210987654321}).encode()}, "without a 12-digit accountId"),
    ({"document": json.dumps({**DOCUMENT, "region": None}).encode()}, "without a region (region: None)"),
])
def test_an_unusable_answer_is_one_clear_line(imds: Imds, change: dict[str, Any], expected: str):
    for name, value in change.items():
        setattr(imds, name, value)
    with pytest.raises(MetadataError) as caught:
        lookup(imds.environ())
    message = str(caught.value)
    assert message.startswith(f"EC2 instance metadata at {imds.endpoint} ") and "\n" not in message
    assert expected in message


def test_a_closed_port_is_reported_quickly():
    endpoint = closed_port_endpoint()
    started = time.monotonic()
    with pytest.raises(MetadataError, match=rf"^EC2 instance metadata at {endpoint} did not answer "
                                            r"\(connection refused, 2 tries\)$"):
        lookup({ENDPOINT_ENV: endpoint})
    assert time.monotonic() - started < 2


def test_an_endpoint_that_accepts_but_never_answers_times_out():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(MetadataError, match=r"did not answer .*timed out after 0\.2 s, 2 tries"):
            lookup({ENDPOINT_ENV: endpoint}, timeout=0.2)
        assert time.monotonic() - started < 3


def test_an_ipv6_loopback_endpoint():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    stand_in = Imds()
    try:
        server = serve_imds(stand_in, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        assert lookup({ENDPOINT_ENV: f"http://[::1]:{stand_in.port}/"}).account_id == ACCOUNT
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("environ, endpoint", [
    ({}, IPV4_ENDPOINT),
    ({ENDPOINT_MODE_ENV: "IPv4"}, IPV4_ENDPOINT),
    ({ENDPOINT_MODE_ENV: "IPv6"}, IPV6_ENDPOINT),
    ({ENDPOINT_ENV: "http://127.0.0.1:1338/", ENDPOINT_MODE_ENV: "IPv6"}, "http://127.0.0.1:1338"),
])
def test_the_endpoint_is_chosen_as_the_sdks_choose_it(environ: dict[str, str], endpoint: str):
    assert endpoint_from(environ) == endpoint


@pytest.mark.parametrize("environ, expected", [
    ({ENDPOINT_MODE_ENV: "IPv5"}, "is neither IPv4 nor IPv6"),
    ({ENDPOINT_ENV: "https://127.0.0.1:1"}, "is not an http:// URL"),
    ({ENDPOINT_ENV: "127.0.0.1:1338"}, "is not an http:// URL"),
    ({ENDPOINT_ENV: "http://127.0.0.1:99999"}, "has an invalid port"),
    ({"AWS_EC2_METADATA_DISABLED": "true"}, "is turned off (AWS_EC2_METADATA_DISABLED=true)"),
])
def test_a_bad_endpoint_setting_is_reported_without_a_request(environ: dict[str, str], expected: str):
    with pytest.raises(MetadataError, match=re.escape(expected)):
        lookup(environ)


# -- the command line: which flags ask, and what wins ------------------------------------------
def parse(*argv: str):
    return cli.build_parser().parse_args(["mutate", "-f", "pod.yaml", *argv])


@pytest.fixture
def pointed_at(imds: Imds, monkeypatch: pytest.MonkeyPatch) -> Imds:
    monkeypatch.setenv(ENDPOINT_ENV, imds.endpoint)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    return imds


def test_an_explicit_account_id_never_asks_instance_metadata(pointed_at: Imds):
    settings = cli.mutation_settings(parse("--compose-role-arn", "--aws-account-id", "111122223333"))
    assert (settings.aws_account_id, settings.aws_partition) == ("111122223333", "aws")
    assert cli.mutation_settings(parse()) == MutationSettings()
    assert pointed_at.requests == []


def test_without_an_account_id_both_come_from_instance_metadata(pointed_at: Imds):
    settings = cli.mutation_settings(parse("--compose-role-arn"))
    assert (settings.aws_account_id, settings.aws_partition) == (ACCOUNT, "aws-cn")


def test_an_explicit_partition_wins_over_the_looked_up_one(pointed_at: Imds):
    settings = cli.mutation_settings(parse("--compose-role-arn", "--aws-partition=aws"))
    assert (settings.aws_account_id, settings.aws_partition) == (ACCOUNT, "aws")


def test_the_partition_defaults_to_aws_when_nothing_is_looked_up():
    assert MutationSettings().aws_partition == "aws" == cli.mutation_settings(parse()).aws_partition


def test_no_source_for_the_account_is_a_settings_error(monkeypatch: pytest.MonkeyPatch):
    endpoint = closed_port_endpoint()
    monkeypatch.setenv(ENDPOINT_ENV, endpoint)
    with pytest.raises(SettingsError, match=rf"^--compose-role-arn needs --aws-account-id, and EC2 instance "
                                            rf"metadata at {endpoint} did not answer \(connection refused"):
        cli.mutation_settings(parse("--compose-role-arn"))


# -- the real commands -------------------------------------------------------------------------
SERVICE_ACCOUNT = """\
apiVersion: v1
kind: ServiceAccount
metadata:
  name: my-app
  namespace: default
  annotations:
    eks.amazonaws.com/role-arn: team/reader
"""
POD = """\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default}
spec:
  serviceAccountName: my-app
  containers: [{name: app, image: busybox}]
"""


def command_env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_EC2_METADATA", "AWS_METADATA"))}
    return {**env, ENDPOINT_ENV: endpoint, "PYTHONUNBUFFERED": "1"}


def run_mutate(tmp_path: Path, endpoint: str, *flags: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sa.yaml").write_text(SERVICE_ACCOUNT)
    (tmp_path / "pod.yaml").write_text(POD)
    return subprocess.run(
        [sys.executable, "-m", "injector", "mutate", "-f", str(tmp_path / "pod.yaml"), "--service-account",
         str(tmp_path / "sa.yaml"), "-o", "pod", *flags],
        capture_output=True, text=True, timeout=60, check=False, env=command_env(endpoint))


def role_arn_of(pod_json: str) -> str:
    env = json.loads(pod_json)["spec"]["containers"][0]["env"]
    return next(e["value"] for e in env if e["name"] == "AWS_ROLE_ARN")


def test_mutate_composes_the_arn_from_instance_metadata(imds: Imds, tmp_path: Path):
    run = run_mutate(tmp_path, imds.endpoint, "--compose-role-arn")
    assert run.returncode == 0, run.stderr
    assert role_arn_of(run.stdout) == f"arn:aws-cn:iam::{ACCOUNT}:role/team/reader"
    assert "Traceback" not in run.stderr


def test_mutate_with_a_closed_metadata_port_fails_with_one_line(tmp_path: Path):
    endpoint = closed_port_endpoint()
    run = run_mutate(tmp_path, endpoint, "--compose-role-arn")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == (f"pod-identity-injector: --compose-role-arn needs --aws-account-id, and EC2 instance "
                          f"metadata at {endpoint} did not answer (connection refused, 2 tries)\n")


def test_mutate_with_garbage_from_instance_metadata_fails_with_one_line(imds: Imds, tmp_path: Path):
    imds.document = b"{not json"
    run = run_mutate(tmp_path, imds.endpoint, "--compose-role-arn")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1 and "identity document that is not a JSON object" in run.stderr


def test_serve_composes_the_arn_from_instance_metadata(imds: Imds, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    make_certs(tmp_path)
    (tmp_path / "sa.yaml").write_text(SERVICE_ACCOUNT)
    for name, value in command_env(imds.endpoint).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    server = start_server(tmp_path, tmp_path, "--compose-role-arn", "--service-account", str(tmp_path / "sa.yaml"))
    try:
        status, review = server.review(pod_review())
        assert status == 200 and review["response"]["allowed"]
        patch = base64.b64decode(review["response"]["patch"]).decode()
        assert f"arn:aws-cn:iam::{ACCOUNT}:role/team/reader" in patch
    finally:
        assert server.stop() == 0
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    composed = [line for line in lines if line.get("event") == "role names are composed into role ARNs"]
    assert composed and composed[0]["account_id"] == ACCOUNT and composed[0]["partition"] == "aws-cn"
    assert sum(1 for m, _, _ in imds.requests if m == "PUT") == 1  # once, at start-up


def test_serve_without_any_source_for_the_account_exits_with_one_line(tmp_path: Path):
    make_certs(tmp_path)
    endpoint = closed_port_endpoint()
    proc = subprocess.run(
        [sys.executable, "-m", "injector", "serve", "--compose-role-arn", "--port", str(free_port()),
         "--metrics-port", "0", "--bind-address", "127.0.0.1", "--tls-cert", str(tmp_path / "tls.crt"),
         "--tls-key", str(tmp_path / "tls.key"), "--service-account", str(tmp_path / "missing-is-fine.yaml")],
        capture_output=True, text=True, timeout=60, check=False, env=command_env(endpoint))
    assert proc.returncode == 2
    assert proc.stderr == (f"pod-identity-injector: --compose-role-arn needs --aws-account-id, and EC2 instance "
                           f"metadata at {endpoint} did not answer (connection refused, 2 tries)\n")
