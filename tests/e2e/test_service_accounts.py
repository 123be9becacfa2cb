"""IRSA through a real API server: ServiceAccount annotations, read by list+watch, decide what
the stored pod looks like (default deployment: `serve --kubeconfig`, deploy/rbac.yaml)."""

from __future__ import annotations

import copy

import pytest
import pytest_asyncio

from injector.core.settings import MutationSettings
from injector.sources.serviceaccounts import ServiceAccountSource
from injector.sources.store import IdentityStore

from .api import (
    ROLE_ANNOTATION,
    SKIP_LABEL,
    WEBHOOK_NAMESPACE,
    ApiError,
    Kube,
    api_client,
    env_of,
    eventually,
    mounts_of,
    mutated,
    pod,
    unique,
    volume,
)
from .webhooks import Webhook

ROLE = "arn:aws:iam::111122223333:role/e2e-app"
OTHER_ROLE = "arn:aws:iam::111122223333:role/e2e-other"
TOKEN_DIR = "/var/run/secrets/eks.amazonaws.com/serviceaccount"
ANNOTATIONS = {
    ROLE_ANNOTATION: ROLE,
    "eks.amazonaws.com/sts-regional-endpoints": "true",
    "eks.amazonaws.com/token-expiration": "3600",
}
WEB_IDENTITY_ENV = {
    "AWS_STS_REGIONAL_ENDPOINTS": "regional",
    "AWS_ROLE_ARN": ROLE,
    "AWS_WEB_IDENTITY_TOKEN_FILE": f"{TOKEN_DIR}/token",
}


@pytest_asyncio.fixture(loop_scope="session")  # every e2e coroutine shares the session loop
async def namespace(admin: Kube, webhook: Webhook) -> str:
    """A fresh namespace served by the default webhook, with `default` and an annotated `app`."""
    ns = await admin.namespace("e2e-irsa", webhook.namespace_labels)
    await admin.service_account(ns, "app", ANNOTATIONS)
    return ns


def assert_web_identity(stored: dict, containers: list[str], role: str = ROLE) -> None:
    """The stored pod carries the token volume (first) and, in each container, the env and mount."""
    volumes = stored["spec"]["volumes"]
    assert volumes[0] == {"name": "aws-iam-token", "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"audience": "sts.amazonaws.com", "expirationSeconds": 3600, "path": "token"}}]}}
    assert [v["name"] for v in volumes].count("aws-iam-token") == 1
    for name in containers:
        assert env_of(stored, name) == {**WEB_IDENTITY_ENV, "AWS_ROLE_ARN": role}, name
        assert mounts_of(stored, name)["aws-iam-token"] == {
            "name": "aws-iam-token", "mountPath": TOKEN_DIR, "readOnly": True}, name


async def test_pod_of_an_annotated_service_account_is_stored_with_env_mount_and_token_volume(admin, namespace):
    created = await admin.create_pod(namespace, pod("web", "app", containers=("app", "proxy"),
                                                    init_containers=("setup",)))
    stored = await admin.read_pod(namespace, "web")
    assert stored["spec"] == created["spec"]
    assert_web_identity(stored, ["setup", "app", "proxy"])
    # The API server's own ServiceAccount admission ran too: its token volume follows ours.
    assert any(v["name"].startswith("kube-api-access-") for v in stored["spec"]["volumes"][1:])
    # Env order as the Go webhook: regional endpoint, then the role pair.
    names = [e["name"] for e in next(c for c in stored["spec"]["containers"] if c["name"] == "app")["env"]]
    assert names == ["AWS_STS_REGIONAL_ENDPOINTS", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"]


async def test_server_side_dry_run_returns_the_mutated_pod_and_stores_nothing(admin, namespace):
    answer = await admin.create_pod(namespace, pod("dry", "app"), dry_run=True)
    assert_web_identity(answer, ["app"])
    with pytest.raises(ApiError) as missing:
        await admin.read_pod(namespace, "dry")
    assert missing.value.status == 404


async def test_pod_without_an_identity_is_stored_unchanged(admin, namespace):
    stored = await admin.create_pod(namespace, pod("plain", "default"))
    assert not mutated(stored)
    assert "AWS_ROLE_ARN" not in env_of(stored, "app")
    assert [v["name"] for v in stored["spec"]["volumes"]] == [
        next(v["name"] for v in stored["spec"]["volumes"] if v["name"].startswith("kube-api-access-"))]


async def test_init_containers_and_fields_newer_than_our_code_are_stored_intact(admin, namespace, kube_server):
    """Native sidecars, resize policies, scheduling gates, spec.os, gRPC probes: the webhook
    patches only what it adds, so nothing it does not know is lost on the way. What the API
    server keeps depends on its gates: with InPlacePodVerticalScaling off (the default before
    1.33) it drops `resizePolicy` itself before any webhook sees the pod, and without
    SidecarContainers (before 1.29) an init container's `restartPolicy`."""
    original = pod("modern", "app", containers=("app",), init_containers=("setup", "sidecar"))
    spec = original["spec"]
    spec["initContainers"][1]["restartPolicy"] = "Always"  # native sidecar
    spec["initContainers"][1]["startupProbe"] = {"grpc": {"port": 9000, "service": "health"}, "periodSeconds": 3}
    spec["containers"][0]["resizePolicy"] = [{"resourceName": "cpu", "restartPolicy": "NotRequired"},
                                             {"resourceName": "memory", "restartPolicy": "RestartContainer"}]
    spec["containers"][0]["resources"] = {"requests": {"cpu": "100m", "memory": "64Mi"}}
    spec["containers"][0]["env"] = [{"name": "EXISTING", "value": "kept"}]
    spec["schedulingGates"] = [{"name": "example.com/wait-for-quota"}]
    spec["os"] = {"name": "linux"}
    stored = await admin.create_pod(namespace, copy.deepcopy(original))

    sidecar = stored["spec"]["initContainers"][1]
    if kube_server.enabled("SidecarContainers", ga_in=33):
        assert sidecar["restartPolicy"] == "Always"
    else:
        assert "restartPolicy" not in sidecar
    assert sidecar["startupProbe"]["grpc"] == {"port": 9000, "service": "health"}
    app = stored["spec"]["containers"][0]
    if kube_server.enabled("InPlacePodVerticalScaling", ga_in=35):
        assert app["resizePolicy"] == spec["containers"][0]["resizePolicy"]
    else:
        assert "resizePolicy" not in app
    assert app["resources"] == spec["containers"][0]["resources"]
    assert stored["spec"]["schedulingGates"] == spec["schedulingGates"]
    assert stored["spec"]["os"] == {"name": "linux"}
    assert app["env"][0] == {"name": "EXISTING", "value": "kept"}  # existing entries first, untouched
    assert env_of(stored, "app") == {"EXISTING": "kept", **WEB_IDENTITY_ENV}
    assert_web_identity(stored, ["setup", "sidecar"])


async def test_pod_without_volumes_gets_the_volumes_array_created(admin, namespace):
    """automountServiceAccountToken: false leaves the pod without `spec.volumes`; appending to
    a missing array would be a 500 from the API server."""
    stored = await admin.create_pod(namespace, pod("bare", "app", automountServiceAccountToken=False))
    assert [v["name"] for v in stored["spec"]["volumes"]] == ["aws-iam-token"]
    assert_web_identity(stored, ["app"])


async def test_pod_with_generate_name_is_mutated(admin, namespace):
    body = pod("", "app")
    del body["metadata"]["name"]
    body["metadata"]["generateName"] = "gen-"
    stored = await admin.create_pod(namespace, body)
    assert stored["metadata"]["name"].startswith("gen-")
    assert_web_identity(stored, ["app"])


async def test_skip_label_keeps_the_pod_away_from_the_webhook(admin, namespace, webhook):
    stored = await admin.create_pod(namespace, pod("skipped", "app", labels={SKIP_LABEL: "true"}))
    assert not mutated(stored)
    assert not webhook.decisions(namespace=namespace, pod="skipped")  # never even asked


async def test_the_webhooks_own_namespace_is_excluded(admin, webhook):
    """deploy/webhook-configuration.yaml excludes the webhook's namespace
    even where the rest of the selector matches."""
    await admin.call(admin.core.patch_namespace, WEBHOOK_NAMESPACE, {"metadata": {"labels": webhook.namespace_labels}})
    await admin.service_account(WEBHOOK_NAMESPACE, "excluded-app", ANNOTATIONS)
    stored = await admin.create_pod(WEBHOOK_NAMESPACE, pod("excluded", "excluded-app"))
    assert not mutated(stored)


async def test_token_lifetimes_are_ones_the_api_server_accepts(admin, namespace):
    """Lifetimes below TokenRequest's 600 s minimum would make the API server reject the pod;
    they are raised to 600. The pod annotation overrides the ServiceAccount's."""
    await admin.service_account(namespace, "short", {ROLE_ANNOTATION: ROLE, "eks.amazonaws.com/token-expiration": "60"})
    short = await admin.create_pod(namespace, pod("short", "short"))
    overridden = await admin.create_pod(namespace, pod("overridden", "app", annotations={
        "eks.amazonaws.com/token-expiration": "7200"}))
    for stored, seconds in ((short, 600), (overridden, 7200)):
        [source] = volume(stored, "aws-iam-token")["projected"]["sources"]
        assert source["serviceAccountToken"]["expirationSeconds"] == seconds


# -- the cache and its fallback --------------------------------------------------------------
async def test_service_account_created_just_before_its_pod_is_used(admin, webhook):
    """No pod may slip through because the watch has not delivered its ServiceAccount yet."""
    ns = await admin.namespace("e2e-fresh", webhook.namespace_labels)
    for index in range(5):
        await admin.service_account(ns, f"fresh-{index}", {ROLE_ANNOTATION: f"{ROLE}-{index}"})
        stored = await admin.create_pod(ns, pod(f"fresh-{index}", f"fresh-{index}"))
        assert env_of(stored, "app")["AWS_ROLE_ARN"] == f"{ROLE}-{index}"


async def test_cache_miss_is_answered_by_a_direct_get(admin, webhook_kubeconfig):
    """The fallback on its own, deterministically: a store fed by a ServiceAccount source
    whose watch never runs, so every lookup is a miss; with the webhook's own credentials."""
    ns = await admin.namespace("e2e-miss")
    client = await api_client(webhook_kubeconfig)
    try:
        store = IdentityStore(MutationSettings(), lookup_grace=5.0)
        source = ServiceAccountSource(client, store)
        assert not source.reflector.synced and store.tables.service_accounts == {}
        await admin.service_account(ns, "late", {ROLE_ANNOTATION: ROLE})

        resolution = await store.resolve_waiting(ns, "late")
        assert resolution.service_account_known
        assert resolution.identity is not None and resolution.identity.role_arn == ROLE
        assert f"{ns}/late" in store.tables.service_accounts  # cached for the next pod

        missing = await store.resolve_waiting(ns, "never-created")
        assert not missing.service_account_known and missing.identity is None
        assert not source.reflector.synced  # it was the GET, not the watch
    finally:
        await client.close()


async def test_annotation_changes_apply_to_the_next_pod(admin, namespace):
    first = await admin.create_pod(namespace, pod("before", "app"))
    assert env_of(first, "app")["AWS_ROLE_ARN"] == ROLE

    await admin.annotate_service_account(namespace, "app", {ROLE_ANNOTATION: OTHER_ROLE})
    changed = await eventually(lambda: admin.create_pod(namespace, pod("changed", "app"), dry_run=True),
                               lambda p: env_of(p, "app").get("AWS_ROLE_ARN") == OTHER_ROLE,
                               what="the new role in the next pod")
    assert_web_identity(changed, ["app"], role=OTHER_ROLE)

    await admin.annotate_service_account(namespace, "app", {ROLE_ANNOTATION: None})
    await eventually(lambda: admin.create_pod(namespace, pod("removed", "app"), dry_run=True),
                     lambda p: not mutated(p), what="no role in the next pod")
    stored = await admin.create_pod(namespace, pod("after", "app"))
    assert not mutated(stored) and "aws-iam-token" not in {v["name"] for v in stored["spec"]["volumes"]}


async def test_deleted_and_recreated_service_account_is_followed(admin, namespace):
    await admin.call(admin.core.delete_namespaced_service_account, "app", namespace)
    await admin.service_account(namespace, "app", {ROLE_ANNOTATION: OTHER_ROLE})
    stored = await eventually(lambda: admin.create_pod(namespace, pod(unique("again"), "app"), dry_run=True),
                              lambda p: env_of(p, "app").get("AWS_ROLE_ARN") == OTHER_ROLE,
                              what="the recreated ServiceAccount's role")
    assert mutated(stored)
