"""`reinvocationPolicy: IfNeeded` with a second mutating webhook that adds a sidecar after us:
the API server calls us again and the sidecar gets credentials too, nothing twice."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import pytest_asyncio
from aiohttp import web

from .api import ROLE_ANNOTATION, Kube, env_of, eventually, pod, unique, webhook_configuration
from .plane import ControlPlane
from .webhooks import BackgroundServer, Webhook, serving_context, wait_until_active

ROLE = "arn:aws:iam::111122223333:role/e2e-reinvoked"
# Webhooks of different configurations are called in the order of the configurations' names.
SIDECAR_CONFIGURATION = "zz-e2e-sidecar-injector"
SIDECAR_LABEL = {"e2e-sidecar": "enabled"}


class SidecarInjector:
    """A minimal third-party webhook: appends container `sidecar` unless it is there."""

    def __init__(self, plane: ControlPlane) -> None:
        self.received: list[dict] = []
        app = web.Application()
        app.router.add_post("/inject", self.handle)
        self.server = BackgroundServer(app, serving_context(plane))

    async def handle(self, request: web.Request) -> web.Response:
        review = await request.json()
        pod_object = review["request"]["object"]
        self.received.append(pod_object)
        response: dict = {"uid": review["request"]["uid"], "allowed": True}
        if not any(c["name"] == "sidecar" for c in pod_object["spec"]["containers"]):
            patch = [{"op": "add", "path": "/spec/containers/-",
                      "value": {"name": "sidecar", "image": "registry.k8s.io/pause:3.10"}}]
            response |= {"patchType": "JSONPatch", "patch": base64.b64encode(json.dumps(patch).encode()).decode()}
        return web.json_response({"apiVersion": review["apiVersion"], "kind": "AdmissionReview",
                                  "response": response})


@pytest.fixture(scope="module")
def sidecar_server(control_plane: ControlPlane) -> Iterator[SidecarInjector]:
    injector = SidecarInjector(control_plane)
    injector.server.start()
    yield injector
    injector.server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sidecar_injector(admin: Kube, control_plane: ControlPlane, webhook: Webhook,
                           sidecar_server: SidecarInjector):
    configuration = webhook_configuration(SIDECAR_CONFIGURATION, "sidecar.e2e.example.com",
                                          f"{sidecar_server.server.base_url}/inject", control_plane.pki.ca_file,
                                          SIDECAR_LABEL, failure_policy="Fail", reinvocation="Never")
    assert webhook.name < SIDECAR_CONFIGURATION
    await admin.call(admin.admission.create_mutating_webhook_configuration, configuration)
    yield sidecar_server
    await admin.call(admin.admission.delete_mutating_webhook_configuration, SIDECAR_CONFIGURATION)


async def test_sidecar_added_after_us_gets_credentials_too(admin: Kube, webhook: Webhook,
                                                           sidecar_injector: SidecarInjector):
    ns = await admin.namespace("e2e-reinvoke", {**webhook.namespace_labels, **SIDECAR_LABEL})
    await admin.service_account(ns, "app", {ROLE_ANNOTATION: ROLE})
    await wait_until_active(admin, ns, service_account="app",
                            accept=lambda p: "AWS_ROLE_ARN" in env_of(p, "sidecar"))

    name = unique("web")
    stored = await admin.create_pod(ns, pod(name, "app", containers=("app",)))
    assert [c["name"] for c in stored["spec"]["containers"]] == ["app", "sidecar"]
    for container in stored["spec"]["containers"]:
        assert [e["name"] for e in container["env"]] == ["AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"]
        assert [m["name"] for m in container["volumeMounts"]].count("aws-iam-token") == 1
    assert [v["name"] for v in stored["spec"]["volumes"]].count("aws-iam-token") == 1

    # The order of events: we mutated `app`, the injector saw that and added `sidecar`,
    # we were called again and mutated only `sidecar`.
    seen = next(p for p in sidecar_injector.received if p["metadata"].get("name") == name)
    assert "AWS_ROLE_ARN" in env_of(seen, "app")
    # Log lines are written when the webhook's loop next turns, which may be after the API
    # server has its answer: wait for the second one rather than read once.
    calls = await eventually(lambda: webhook.decisions(namespace=ns, pod=name), lambda found: len(found) >= 2,
                             timeout=10, what="two admission log lines")
    assert [c.get("containers") for c in calls] == [["app"], ["sidecar"]]
