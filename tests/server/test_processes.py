"""The admission server over real TLS: what the API server and an admin can rely on."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import aiohttp
import jsonpatch
import pytest

from injector.certificates.authority import generate_ca

from serving import EXAMPLES, Server, make_certs, pod_review, start_server


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    make_certs(directory)
    return directory


@pytest.fixture(scope="module")
def server(tmp_path_factory, certs) -> Server:
    srv = start_server(tmp_path_factory.mktemp("serve"), certs, "--enable-debugging-handlers")
    yield srv
    assert srv.stop() == 0


def decoded_patch(response: dict) -> list:
    return json.loads(base64.b64decode(response["patch"]))


# -- answers to well-formed reviews ----------------------------------------------------------
@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_annotated_service_account_gets_a_patch_echoing_version_kind_and_uid(server, api_version):
    review = pod_review(api_version=api_version, uid="uid-" + api_version[-2:])
    status, answer = server.review(review)
    assert status == 200
    assert answer["apiVersion"] == api_version and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == "uid-" + api_version[-2:]
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"
    pod = jsonpatch.apply_patch(review["request"]["object"], decoded_patch(response))
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["AWS_ROLE_ARN"] == "arn:aws:iam::111122223333:role/my-app"
    assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"
    assert pod["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"] == {
        "audience": "sts.amazonaws.com", "expirationSeconds": 3600, "path": "token"}


def test_the_readme_example_review_is_mutated(server):
    status, answer = server.review(json.loads((EXAMPLES / "admission-review.json").read_text()))
    assert status == 200 and answer["response"]["allowed"] and "patch" in answer["response"]


def test_service_account_without_role_or_unknown_is_allowed_without_patch(server):
    for name in ("default", "nobody"):
        status, answer = server.review(pod_review(service_account=name))
        assert status == 200
        assert answer["response"] == {"uid": "3a1d2c4b-0000-4000-8000-000000000001", "allowed": True}


def test_json_with_charset_parameter_is_accepted(server):
    status, answer = server.review(pod_review(), content_type="application/json; charset=utf-8")
    assert status == 200 and "patch" in answer["response"]


def test_update_and_non_pod_requests_are_allowed_unchanged(server):
    review = pod_review()
    review["request"]["operation"] = "UPDATE"
    _, answer = server.review(review)
    assert answer["response"]["allowed"] is True and "patch" not in answer["response"]
    review = pod_review()
    review["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    _, answer = server.review(review)
    assert answer["response"]["allowed"] is True and "patch" not in answer["response"]
    assert "not a Pod" in answer["response"]["status"]["message"]


def test_object_that_is_not_a_pod_object_is_allowed_with_a_reason(server):
    review = pod_review()
    review["request"]["object"] = "not a pod"
    status, answer = server.review(review)
    assert status == 200 and answer["response"]["allowed"] is True
    assert "no pod object" in answer["response"]["status"]["message"]


def test_review_without_request_is_answered_as_bad_content(server):
    for document in ({}, {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}):
        status, answer = server.review(document)
        assert status == 200
        assert answer["response"]["allowed"] is False
        assert answer["response"]["status"]["message"].startswith("bad content")


# -- bad input: clear errors, never a crash ---------------------------------------------------
def test_wrong_content_type_is_415_with_the_go_message(server):
    status, _, body = server.request("POST", "/mutate", b"{}", {"Content-Type": "application/xml"})
    assert status == 415
    assert body == b"Invalid Content-Type, expected `application/json`\n"


@pytest.mark.parametrize("body, fragment", [
    (b'{"request": {', b"not valid JSON"),
    (b"", b"not valid JSON"),
    (b"[1, 2]", b"not a JSON object"),
    (b'{"kind": "Pod"}', b"expected kind AdmissionReview"),
    (b"\xff\xfe", b"not valid JSON"),
])
def test_undecodable_bodies_are_400_with_a_clear_message(server, body, fragment):
    status, _, answer = server.request("POST", "/mutate", body, {"Content-Type": "application/json"})
    assert status == 400 and fragment in answer


def test_oversized_body_is_413(server):
    big = b'{"request": {"object": {"x": "' + b"a" * (4 * 1024 * 1024) + b'"}}}'
    try:
        status, _, answer = server.request("POST", "/mutate", big, {"Content-Type": "application/json"})
    except (ConnectionError, ssl.SSLError):  # the server may close before reading everything
        return
    assert status == 413 and b"--max-request-bytes" in answer


def test_chunked_oversized_body_is_413(server):
    def chunks():
        for _ in range(64):
            yield b"a" * 65536

    import http.client

    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=server.ssl_context, timeout=10)
    try:
        conn.request("POST", "/mutate", body=chunks(), headers={"Content-Type": "application/json"},
                     encode_chunked=True)
        assert conn.getresponse().status == 413
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        conn.close()
    assert server.request("GET", "/healthz")[0] == 200


def test_server_survives_garbage_and_keeps_answering(server):
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(b"\x16\x03\x01garbage-not-tls\r\n\r\n")
        raw.settimeout(2)
        with contextlib.suppress(OSError):
            raw.recv(100)
    status, answer = server.review(pod_review())
    assert status == 200 and answer["response"]["allowed"]


# -- health, readiness, metrics, debug --------------------------------------------------------
def test_health_and_readiness(server):
    assert server.request("GET", "/healthz")[::2] == (200, b"ok")
    assert server.request("GET", "/readyz")[::2] == (200, b"ok")


def test_metrics_keep_the_go_webhook_names(server):
    server.review(pod_review())
    server.review(pod_review(service_account="nobody"))
    text = server.metrics()
    assert 'pod_identity_webhook_pod_count{method="sts_web_identity"}' in text
    assert "pod_identity_webhook_missing_sa_count " in text
    assert "pod_identity_webhook_used 1.0" in text
    assert 'pod_identity_injector_admissions_total{decision="mutated",mode="sts_web_identity"}' in text
    assert "pod_identity_injector_admission_duration_seconds_bucket" in text
    assert "pod_identity_injector_serving_certificate_expiry_timestamp_seconds" in text


def test_debugging_handlers(server):
    status, _, body = server.request("POST", "/debug/alpha/deny")
    assert status == 200 and json.loads(body)["response"]["status"]["message"] == "Test deny message"
    assert server.request("GET", "/debug/alpha/500")[::2] == (500, b"test error")
    cache = json.loads(server.metrics("/debug/alpha/cache"))
    assert cache["default/my-app"]["RoleARN"] == "arn:aws:iam::111122223333:role/my-app"


def test_debugging_handlers_are_off_by_default(tmp_path, certs):
    srv = start_server(tmp_path, certs)
    try:
        assert srv.request("GET", "/debug/alpha/500")[0] == 404
    finally:
        assert srv.stop() == 0


def test_each_admission_is_logged_with_namespace_pod_service_account_and_decision(server):
    server.review(pod_review(uid="log-check-uid"))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in server.logs().splitlines() if "log-check-uid" in line]
        if lines:
            break
        time.sleep(0.05)
    (line,) = lines
    assert line["event"] == "admission" and line["namespace"] == "default" and line["pod"] == "web-"
    assert line["service_account"] == "my-app" and line["decision"] == "mutated" and line["mutated"] is True


# -- start-up errors ---------------------------------------------------------------------------
def test_bad_flags_and_files_fail_at_start_with_one_clear_line(tmp_path, certs):
    import subprocess
    import sys

    cases = [
        (["--tls-min-version", "TLS1.2"], "--tls-min-version"),
        (["--tls-cipher-suites", "TLS_NOT_A_SUITE"], "TLS_NOT_A_SUITE"),
        (["--in-cluster=true"], "--in-cluster"),
        (["--service-account", str(tmp_path / "missing.yaml")], "missing.yaml"),
    ]
    for extra, fragment in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "injector", "serve", "--port", "0", "--tls-cert", str(certs / "tls.crt"),
             "--tls-key", str(certs / "tls.key"), "--service-account", str(EXAMPLES / "serviceaccount.yaml"),
             *extra], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert fragment in proc.stderr.strip().splitlines()[-1]


# -- certificate rotation while requests flow ------------------------------------------------
def test_certificate_rotation_while_requests_flow_fails_no_request(tmp_path):
    certs = tmp_path / "certs"
    old_ca = make_certs(certs)
    srv = start_server(tmp_path, certs)
    failures, answers, stop = [], [0], threading.Event()
    # Trust both CAs so the client accepts the certificate before and after the swap.
    new_ca = generate_ca("rotated-ca")
    bundle = tmp_path / "both.crt"
    bundle.write_bytes((certs / "ca.crt").read_bytes())
    from injector.certificates.authority import cert_to_pem

    bundle.write_bytes(bundle.read_bytes() + cert_to_pem(new_ca[0]))
    ctx = ssl.create_default_context(cafile=str(bundle))
    body = json.dumps(pod_review()).encode()

    def client() -> None:
        import http.client

        while not stop.is_set():
            conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=10)
            try:
                conn.request("POST", "/mutate", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                if resp.status != 200 or not json.loads(resp.read())["response"]["allowed"]:
                    failures.append(resp.status)
                answers[0] += 1
            except Exception as exc:
                failures.append(repr(exc))
            finally:
                conn.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        make_certs(certs, new_ca)  # atomic replace of all four files
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", srv.port)) as sock, \
                    ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                issuer = dict(x[0] for x in tls.getpeercert()["issuer"])["commonName"]
            if issuer == "rotated-ca":
                break
            time.sleep(0.2)
        assert issuer == "rotated-ca"
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
        assert srv.stop() == 0
    assert failures == []
    assert answers[0] > 20
    assert old_ca is not None


# -- graceful shutdown ----------------------------------------------------------------------
def test_sigterm_drains_in_flight_requests(tmp_path, certs):
    # 3 s: the readiness probe and 20 requests must fit in the delay on a loaded CI machine too
    # (one run at 1 s saw the server close the keep-alive connection after the delay, mid-loop).
    srv = start_server(tmp_path, certs, "--shutdown-delay", "3s")
    body = json.dumps(pod_review()).encode()

    async def scenario() -> tuple[list[int], int, int]:
        ctx = srv.ssl_context
        # A request in flight: headers and half of the body sent before SIGTERM.
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, ssl=ctx)
        head = (f"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        writer.write(head + body[: len(body) // 2])
        await writer.drain()
        await asyncio.sleep(0.2)
        srv.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        # During --shutdown-delay: not ready, but new requests are still answered.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            async with session.get(f"https://127.0.0.1:{srv.port}/readyz") as resp:
                ready_status = resp.status
            statuses = []
            for _ in range(20):
                async with session.post(f"https://127.0.0.1:{srv.port}/mutate", data=body,
                                        headers={"Content-Type": "application/json"}) as resp:
                    statuses.append(resp.status)
        writer.write(body[len(body) // 2:])
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        return statuses, ready_status, int(status_line.split()[1])

    statuses, ready_status, in_flight_status = asyncio.run(scenario())
    assert ready_status == 503
    assert statuses == [200] * 20
    assert in_flight_status == 200
    assert srv.proc.wait(30) == 0
    assert "shutdown complete" in srv.logs()


# -- several serving processes ----------------------------------------------------------------
def test_multiple_workers_share_the_port_and_metrics(tmp_path, certs):
    srv = start_server(tmp_path, certs, workers=2)
    try:
        assert len(_worker_pids(srv)) == 2
        for _ in range(30):
            status, answer = srv.review(pod_review())
            assert status == 200 and "patch" in answer["response"]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            text = srv.metrics()
            if 'pod_identity_webhook_pod_count{method="sts_web_identity"} 30.0' in text:
                break
            time.sleep(0.1)
        assert 'pod_identity_webhook_pod_count{method="sts_web_identity"} 30.0' in text
    finally:
        assert srv.stop() == 0


def _worker_pids(srv: Server, count: int = 2) -> list[int]:
    """The PIDs of the serving processes (the supervisor's among them), from their "serving" log lines."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = sorted({json.loads(line)["pid"] for line in srv.logs().splitlines() if '"serving"' in line})
        if len(pids) >= count:
            return pids
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} workers serving:\n{srv.logs()}")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone too, waiting for its reaper
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"


def _wait_gone(pids: list[int], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_gone(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def test_workers_are_forked_and_share_the_supervisors_modules(tmp_path, certs):
    srv = start_server(tmp_path, certs, workers=3)
    try:
        serving = _worker_pids(srv, 3)
        assert srv.proc.pid in serving  # the supervisor serves as one of the three
        forked = [pid for pid in serving if pid != srv.proc.pid]
        assert len(forked) == 2
        for pid in forked:
            with open(f"/proc/{pid}/stat") as stat:
                assert int(stat.read().rsplit(")", 1)[1].split()[1]) == srv.proc.pid  # the supervisor's children
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:  # forked, not spawned: the same command line
                assert b"serve" in cmdline.read()
    finally:
        assert srv.stop() == 0


def test_a_killed_worker_stops_the_supervisor_and_the_other_worker(tmp_path, certs):
    srv = start_server(tmp_path, certs, workers=3)
    first, second = (pid for pid in _worker_pids(srv, 3) if pid != srv.proc.pid)
    os.kill(first, signal.SIGKILL)
    assert srv.proc.wait(20) == 1
    assert _wait_gone([second])
    assert "worker exited unexpectedly; stopping" in srv.logs()


def test_a_killed_supervisor_takes_its_workers_with_it(tmp_path, certs):
    srv = start_server(tmp_path, certs, workers=2)
    pids = _worker_pids(srv)
    srv.proc.kill()
    srv.proc.wait(10)
    assert _wait_gone(pids)


def test_sigterm_drains_every_worker(tmp_path, certs):
    # 5 s of delay: thirty fresh TLS connections must fit in it on a loaded machine.
    srv = start_server(tmp_path, certs, "--shutdown-delay", "5s", workers=2)
    _worker_pids(srv)
    body = json.dumps(pod_review()).encode()
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # During --shutdown-delay both serving processes still answer, and report not ready.
    readiness = {srv.request("GET", "/readyz")[0] for _ in range(10)}
    statuses = [srv.request("POST", "/mutate", body, {"Content-Type": "application/json"})[0] for _ in range(20)]
    assert readiness == {503} and statuses == [200] * 20
    assert srv.proc.wait(30) == 0
    logs = srv.logs()
    assert logs.count('"shutdown complete"') == 2 and "Traceback" not in logs


def test_sigterm_before_the_first_sync_stops_the_supervisor_at_once(tmp_path, certs):
    # No API server answers: the supervisor is still syncing, and has forked no worker.
    srv = start_server(tmp_path, certs, "--kube-api", "http://127.0.0.1:9", "--service-account-lookup-grace-period",
                       "0", ready=False, workers=2)
    deadline = time.monotonic() + 20
    while "list/watch failed; retrying" not in srv.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "list/watch failed; retrying" in srv.logs()
    assert srv.stop(timeout=10) == 0
    assert "stopped before serving" in srv.logs() and '"serving"' not in srv.logs()


def test_the_probes_have_a_port_of_their_own_when_asked(tmp_path):
    """--health-port: /healthz and /readyz over plain HTTP, apart from the webhook port
    (docs/reference.md#probes); nothing else is served there."""
    import http.client

    from serving import free_port, make_certs, start_server

    certs = tmp_path / "certs"
    certs.mkdir()
    make_certs(certs)
    health_port = free_port()
    server = start_server(tmp_path, certs, "--health-port", str(health_port))
    try:
        answers = {}
        for path in ("/healthz", "/readyz", "/mutate"):
            conn = http.client.HTTPConnection(server.host, health_port, timeout=10)
            conn.request("GET", path)
            answers[path] = conn.getresponse().status
            conn.close()
        assert answers == {"/healthz": 200, "/readyz": 200, "/mutate": 404}
        assert server.request("GET", "/healthz")[0] == 200  # still on the webhook port too
    finally:
        assert server.stop() == 0
    assert f'"health_port":{health_port}' in server.logs()
