"""The ports' routes in process (aiohttp's test client): every class of input gets its
documented answer (docs/mutation.md#answers), the probes say why they fail
(docs/reference.md#readiness), the debug and metrics routes exist only when asked for, and
unknown paths and methods are answered as aiohttp's router answers them. Also the jobs that
run beside a server. The same routes over real TLS, as a process, are tests/test_server.py."""

from __future__ import annotations

import asyncio
import base64
import json
import re

import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from injector.core.identity import service_account_entry
from injector.core.settings import MutationSettings, ServeSettings
from injector.server.metrics import Exposition, Metrics
from injector.server.routes import Routes, ServerJobs, ServerState, metrics_routes, webhook_routes
from injector.sources.store import IdentityStore

from serving import RoutesTestServer, pod_review

ROLE = "arn:aws:iam::111122223333:role/my-app"
LIMIT = 64 * 1024


def make_state(**settings) -> ServerState:
    serve = ServeSettings(max_request_bytes=LIMIT, **settings)
    store = IdentityStore(serve.mutation)
    annotations = {"eks.amazonaws.com/role-arn": ROLE}
    store.replace_service_accounts({
        "default/my-app": service_account_entry(annotations, serve.mutation),
        "default/default": service_account_entry({}, serve.mutation),
    })
    return ServerState(serve, store, None, Metrics())


def client_of(routes: Routes) -> TestClient:
    """A test client of `routes` served as `serve` serves them (`Routes.server`)."""
    return TestClient(RoutesTestServer(routes))


@pytest.fixture
async def client():
    async with client_of(webhook_routes(make_state())) as test_client:
        yield test_client


async def review(client: TestClient, document, content_type: str = "application/json"):
    response = await client.post("/mutate", data=json.dumps(document), headers={"Content-Type": content_type})
    return response.status, await response.json()


def patch_of(answer: dict) -> list:
    return json.loads(base64.b64decode(answer["response"]["patch"]))


# -- well-formed reviews ---------------------------------------------------------------------
@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
async def test_a_pod_with_a_role_is_patched_and_the_envelope_echoed(client, api_version):
    status, answer = await review(client, pod_review(api_version=api_version, uid="u-1"))
    assert status == 200
    assert (answer["apiVersion"], answer["kind"]) == (api_version, "AdmissionReview")
    assert answer["response"]["uid"] == "u-1" and answer["response"]["allowed"] is True
    assert answer["response"]["patchType"] == "JSONPatch"
    assert {"op": "add", "path": "/spec/containers/0/env", "value": [
        {"name": "AWS_ROLE_ARN", "value": ROLE},
        {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"},
    ]} in patch_of(answer)


@pytest.mark.parametrize("service_account", ["default", "unknown"])
async def test_a_pod_without_an_identity_is_allowed_without_a_patch(client, service_account):
    _, answer = await review(client, pod_review(service_account=service_account, uid="u"))
    assert answer["response"] == {"uid": "u", "allowed": True}


async def test_json_with_parameters_is_json(client):
    status, answer = await review(client, pod_review(), "Application/JSON; charset=utf-8")
    assert status == 200 and "patch" in answer["response"]


@pytest.mark.parametrize("change, reason", [
    (lambda r: r["request"].update(operation="UPDATE"), "UPDATE is not mutated"),
    (lambda r: r["request"].update(kind={"group": "apps", "version": "v1", "kind": "Deployment"}), "not a Pod"),
    (lambda r: r["request"].update(object="not a pod"), "no pod object"),
])
async def test_what_is_not_a_pod_create_is_allowed_unchanged_with_the_reason(client, change, reason):
    document = pod_review()
    change(document)
    status, answer = await review(client, document)
    assert status == 200 and answer["response"]["allowed"] is True and "patch" not in answer["response"]
    assert reason in answer["response"]["status"]["message"]


@pytest.mark.parametrize("document", [{}, {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"},
                                      {"kind": "AdmissionReview", "request": None}])
async def test_a_review_without_a_request_is_denied_as_bad_content(client, document):
    status, answer = await review(client, document)
    assert status == 200
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"] == {"message": "bad content: the AdmissionReview has no request",
                                            "code": 403}


async def test_an_error_of_ours_allows_the_pod_unchanged_and_says_so():
    class BrokenStore(IdentityStore):
        async def resolve_waiting(self, namespace: str, name: str):
            raise RuntimeError("boom")

    state = make_state()
    state.store = BrokenStore(MutationSettings())
    async with client_of(webhook_routes(state)) as test_client:
        status, answer = await review(test_client, pod_review(uid="u"))
    assert status == 200
    assert answer["response"] == {"uid": "u", "allowed": True,
                                  "status": {"message": "pod-identity-injector error: boom"}}


@pytest.mark.parametrize("change, problem", [
    # Each of these was an HTTP 500 or a traceback before the type boundary (issue #10).
    (lambda r: (r["request"].pop("namespace"), r["request"]["object"].update(metadata="x")),
     "pod metadata is a string"),
    (lambda r: r["request"].update(namespace=["default"]), "request.namespace is an array"),
    (lambda r: r["request"].update(operation={"op": "CREATE"}), "request.operation is an object"),
    (lambda r: r["request"]["kind"].update(kind=1), "request.kind.kind is a number"),
    (lambda r: r["request"]["object"]["spec"]["containers"][0].update(name={"a": 1}),
     "pod spec.containers[0].name is an object"),
    (lambda r: r["request"]["object"]["spec"].update(volumes=[{"name": ["x"]}]), "pod spec.volumes[0].name"),
])
async def test_a_field_of_the_wrong_type_is_allowed_unchanged_and_named(client, change, problem):
    document = pod_review(uid="u")
    change(document)
    status, answer = await review(client, document)
    assert status == 200 and answer["response"]["allowed"] is True and "patch" not in answer["response"]
    assert answer["response"]["status"]["message"].startswith(f"malformed request: {problem}")


@pytest.mark.parametrize("api_version", [5, None, {"v": 1}])
async def test_a_non_string_api_version_is_not_echoed(client, api_version):
    document = pod_review(uid="u")
    document["apiVersion"] = api_version
    status, answer = await review(client, document)
    assert status == 200 and "apiVersion" not in answer and answer["response"]["uid"] == "u"


# -- bad input: an HTTP error with the reason, never a crash ----------------------------------
@pytest.mark.parametrize("content_type", ["application/xml", "text/plain", "", "application/json-patch+json"])
async def test_another_content_type_is_415_with_the_go_message(client, content_type):
    response = await client.post("/mutate", data=b"{}", headers={"Content-Type": content_type})
    assert response.status == 415
    assert await response.text() == "Invalid Content-Type, expected `application/json`\n"


@pytest.mark.parametrize("body, fragment", [
    (b"", "not valid JSON"),
    (b'{"request": {', "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'"text"', "not a JSON object"),
    (b'{"kind": "Pod"}', "expected kind AdmissionReview"),
])
async def test_an_undecodable_body_is_400_with_the_reason(client, body, fragment):
    response = await client.post("/mutate", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400 and fragment in await response.text()


async def test_a_body_declared_too_large_is_413_before_it_is_read(client):
    response = await client.post("/mutate", data=b"x" * (LIMIT + 1), headers={"Content-Type": "application/json"})
    assert response.status == 413
    assert await response.text() == (f"request body too large: {LIMIT + 1} bytes, the limit is {LIMIT} bytes "
                                     "(--max-request-bytes)\n")


async def test_a_chunked_body_that_grows_too_large_is_413(client):
    async def chunks():
        for _ in range(4):
            yield b" " * (LIMIT // 2)

    response = await client.post("/mutate", data=chunks(), headers={"Content-Type": "application/json"})
    # "more" when the limit is passed while reading, the size when the whole body was there at once
    assert response.status == 413
    assert re.fullmatch(rf"request body too large: (more|{2 * LIMIT} bytes), the limit is {LIMIT} bytes "
                        r"\(--max-request-bytes\)\n", await response.text())


async def test_a_large_body_over_the_peers_budget_is_503_before_it_is_read():
    """docs/reference.md#request-memory: one peer's large body, withheld, holds its share; its
    next large body is refused at once, with Retry-After; small reviews still pass."""
    state = ServerState(ServeSettings(max_request_bytes=4 * 1024**2, max_inflight_request_bytes_per_peer=300_000),
                        make_state().store, None, Metrics())
    release = asyncio.Event()

    async def withheld():
        yield b" " * 1000
        await release.wait()
        yield b" " * (200_000 - 1000)

    async with client_of(webhook_routes(state)) as test_client:
        headers = {"Content-Type": "application/json", "Content-Length": "200000"}
        first = asyncio.create_task(test_client.post("/mutate", data=withheld(), headers=headers))
        while not state.body_budget.used:
            await asyncio.sleep(0.01)
        with capture_logs() as logs:
            second = await test_client.post("/mutate", data=b" " * 200_000, headers=headers)
            assert second.status == 503 and second.headers["Retry-After"] == "1"
            assert "--max-inflight-request-bytes-per-peer 300000" in await second.text()
            status, answer = await review(test_client, pod_review())
            assert status == 200 and answer["response"]["allowed"] is True
        release.set()
        assert (await first).status == 400  # all spaces: not JSON, and read to the end
    assert state.body_budget.used == 0
    assert [(line["event"], line["scope"]) for line in logs if line.get("scope")] == [
        ("admission refused", "peer")]


async def test_a_client_that_goes_away_mid_body_is_one_warning_and_not_our_5xx():
    state = make_state()
    async with client_of(webhook_routes(state)) as test_client:
        with capture_logs() as logs:
            _, writer = await asyncio.open_connection(test_client.host, test_client.port)
            writer.write(b"POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 5000\r\n\r\n{\"apiVersion\": ")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.transport.abort()
            for _ in range(100):
                if any(line["event"] == "admission abandoned by the client" for line in logs):
                    break
                await asyncio.sleep(0.02)
    ours = [line for line in logs if "logger" not in line]  # not aiohttp's access log of the test server
    assert [(line["event"], line["log_level"]) for line in ours] == [("admission abandoned by the client", "warning")]
    state.metrics.publish()
    samples = {s.labels["code"]: s.value for m in state.metrics.registry.collect() for s in m.samples
               if s.name == "pod_identity_injector_http_requests_total"}
    assert samples == {"499": 1.0}


async def test_bad_input_is_counted_and_the_server_keeps_answering():
    state = make_state()
    async with client_of(webhook_routes(state)) as test_client:
        await test_client.post("/mutate", data=b"{", headers={"Content-Type": "application/json"})
        status, answer = await review(test_client, pod_review())
    assert status == 200 and answer["response"]["allowed"] is True
    requests = "pod_identity_injector_http_requests_total"
    state.metrics.publish()  # as every scrape and, in a worker, every second does
    for code in ("400", "200"):
        labels = {"method": "POST", "path": "/mutate", "code": code}
        assert state.metrics.registry.get_sample_value(requests, labels) == 1.0


# -- probes ----------------------------------------------------------------------------------
async def test_healthz_is_liveness_only(client):
    response = await client.get("/healthz")
    assert response.status == 200 and await response.text() == "ok"


async def test_while_draining_every_answer_ends_its_connection():
    state = make_state()
    async with client_of(webhook_routes(state)) as test_client:
        serving = await test_client.post("/mutate", data=json.dumps(pod_review()),
                                         headers={"Content-Type": "application/json"})
        assert "close" not in serving.headers.get("Connection", "").lower()
        state.draining = True
        for response in (await test_client.post("/mutate", data=json.dumps(pod_review()),
                                                headers={"Content-Type": "application/json"}),
                         await test_client.get("/readyz"), await test_client.get("/nowhere")):
            assert response.headers["Connection"].lower() == "close"
        assert (await response.text()) == "404: Not Found"


async def test_readyz_lists_every_reason_it_is_not_ready():
    state = make_state()
    state.store.expect("serviceaccounts")
    state.draining = True
    async with client_of(webhook_routes(state)) as test_client:
        response = await test_client.get("/readyz")
        assert response.status == 503
        assert await response.text() == "not ready: shutting down; waiting for serviceaccounts\n"
        state.draining = False
        state.store.mark_ready("serviceaccounts")
        response = await test_client.get("/readyz")
        assert response.status == 200 and await response.text() == "ok"


# -- paths and methods ----------------------------------------------------------------------
async def test_an_unknown_path_is_404_and_not_counted():
    state = make_state()
    async with client_of(webhook_routes(state)) as test_client:
        response = await test_client.post("/mutate/", data=b"{}", headers={"Content-Type": "application/json"})
        assert response.status == 404 and await response.text() == "404: Not Found"
    state.metrics.publish()
    assert "/mutate/" not in Exposition(state.metrics).render().decode()


async def test_a_probe_takes_get_and_head_and_answers_another_method_with_405_and_allow(client):
    assert (await client.head("/healthz")).status == 200
    response = await client.post("/readyz")
    assert response.status == 405 and response.headers["Allow"] == "GET,HEAD"


async def test_mutate_takes_any_method_as_the_go_webhook_does(client):
    response = await client.put("/mutate?timeout=10s", data=json.dumps(pod_review()),
                                headers={"Content-Type": "application/json"})
    assert response.status == 200 and (await response.json())["response"]["allowed"] is True


# -- debug and metrics routes ----------------------------------------------------------------
async def test_debug_routes_exist_only_when_enabled():
    async with client_of(webhook_routes(make_state())) as test_client:
        assert (await test_client.get("/debug/alpha/deny")).status == 404
    async with client_of(webhook_routes(make_state(enable_debugging_handlers=True))) as test_client:
        deny = await (await test_client.get("/debug/alpha/deny")).json()
        assert deny["response"] == {"uid": "", "allowed": False, "status": {"message": "Test deny message"}}
        response = await test_client.get("/debug/alpha/500")
        assert response.status == 500 and await response.text() == "test error"


async def test_the_metrics_port_renders_the_go_names_and_dumps_the_cache_on_request():
    state = make_state(enable_debugging_handlers=True)
    async with client_of(webhook_routes(state)) as webhook:
        await review(webhook, pod_review())
        await review(webhook, pod_review(service_account="unknown"))
    async with client_of(metrics_routes(state, Exposition(state.metrics))) as metrics:
        response = await metrics.get("/metrics")
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await response.text()
        assert 'pod_identity_webhook_pod_count{method="sts_web_identity"} 1.0' in text
        assert "pod_identity_webhook_missing_sa_count 1.0" in text
        assert 'pod_identity_injector_http_requests_total{code="200",method="POST",path="/mutate"} 2.0' in text
        cache = await (await metrics.get("/debug/alpha/cache")).json()
        assert cache["default/my-app"] == {"RoleARN": ROLE, "Audience": "sts.amazonaws.com",
                                           "UseRegionalSTS": False, "TokenExpiration": 86400}
        assert (await metrics.post("/debug/alpha/cache/clear")).status == 200
        assert await (await metrics.get("/debug/alpha/cache")).json() == {}


async def test_the_metrics_port_answers_healthz_as_older_go_manifests_probe_it():
    """kOps's addon and the community chart probe /healthz on port 9999 (docs/migrate.md#probes)."""
    state = make_state()
    async with client_of(metrics_routes(state, Exposition(state.metrics))) as metrics:
        response = await metrics.get("/healthz")
        assert response.status == 200 and await response.text() == "ok"


async def test_the_debug_clear_empties_what_the_go_webhook_clears_and_asks_the_sources_to_list_again():
    """docs/reference.md#debug-routes: the ServiceAccount and ConfigMap tables, refilled by a
    relist; the EKS Pod Identity list, which nothing would refill, is kept."""
    state = make_state(enable_debugging_handlers=True)
    state.store.replace_pod_identities(frozenset({("team", "app")}))
    relists: list[str] = []
    state.store.refill.append(lambda: relists.append("serviceaccounts"))
    async with client_of(metrics_routes(state, Exposition(state.metrics))) as metrics:
        assert (await metrics.post("/debug/alpha/cache/clear")).status == 200
    assert not state.store.tables.service_accounts and relists == ["serviceaccounts"]
    assert state.store.tables.pod_identities == frozenset({("team", "app")})


# -- jobs beside the server -----------------------------------------------------------------
async def test_background_jobs_run_until_stopped_and_then_runs_after_they_have_ended():
    events = []

    async def job(name: str) -> None:
        events.append(f"{name} started")
        try:
            await asyncio.Event().wait()
        finally:
            events.append(f"{name} stopped")

    async def crashing() -> None:
        raise RuntimeError("a job that fails does not keep the others from stopping")

    async def then() -> None:
        events.append("then")

    background = ServerJobs([lambda: job("watch"), crashing, lambda: job("feed")], then=then)
    background.start()
    await asyncio.sleep(0)
    assert events == ["watch started", "feed started"]
    await background.stop()
    assert events[2:] == ["watch stopped", "feed stopped", "then"]


# -- admission warnings (docs/mutation.md#warnings) ------------------------------------------
@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
async def test_a_preset_env_var_is_answered_with_a_warning_and_logged(client, api_version):
    preset = [{"name": "app", "image": "busybox", "env": [{"name": "AWS_ROLE_ARN", "value": "arn:x"}]}]
    with capture_logs() as logs:
        _, answer = await review(client, _with_containers(pod_review(api_version=api_version), preset))
    expected = ["pod-identity-injector: container app: AWS_ROLE_ARN without AWS_WEB_IDENTITY_TOKEN_FILE; "
                "nothing injected"]
    assert answer["response"]["warnings"] == expected and answer["response"]["allowed"] is True
    line = next(entry for entry in logs if entry["event"] == "admission")
    assert (line["log_level"], line["decision"], line["warnings"]) == ("info", "mutated", expected)


async def test_a_volume_collision_is_allowed_unchanged_warned_logged_at_warning_and_counted():
    state = make_state()
    async with client_of(webhook_routes(state)) as webhook:
        with capture_logs() as logs:
            _, answer = await review(webhook, pod_review(uid="u", volumes=[{"name": "aws-iam-token", "emptyDir": {}}]))
    assert answer["response"] == {"uid": "u", "allowed": True, "warnings": [
        "pod-identity-injector: volume aws-iam-token (emptyDir) already exists; pod left without AWS credentials"]}
    line = next(entry for entry in logs if entry["event"] == "admission")
    assert (line["log_level"], line["decision"], line["mutated"]) == ("warning", "volume-collision", False)
    text = Exposition(state.metrics).render().decode()
    assert 'pod_identity_injector_skipped_total{reason="volume-collision"} 1.0' in text
    assert 'pod_identity_injector_admissions_total{decision="volume-collision",mode="sts_web_identity"} 1.0' in text


async def test_a_near_miss_key_on_the_service_account_warns_every_pod_that_uses_it():
    state = make_state()
    state.store.put_service_account("default", "half-done", service_account_entry(
        {"eks.amazon.com/role-arn": ROLE}, state.settings.mutation))
    async with client_of(webhook_routes(state)) as webhook:
        _, answer = await review(webhook, pod_review(uid="u", service_account="half-done"))
    assert answer["response"] == {"uid": "u", "allowed": True, "warnings": [
        "pod-identity-injector: ServiceAccount key eks.amazon.com/role-arn is ignored; use eks.amazonaws.com/role-arn"]}


def _with_containers(document: dict, containers: list) -> dict:
    document["request"]["object"]["spec"]["containers"] = containers
    return document
