"""The `pod-identity-webhook` ConfigMap mode (`--watch-config-map --namespace <webhook ns>`):
mappings come from a watched ConfigMap that can be edited and deleted while serving."""

from __future__ import annotations

import orjson
import pytest_asyncio

from .api import (
    ROLE_ANNOTATION,
    WEBHOOK_NAMESPACE,
    ApiError,
    Kube,
    env_of,
    eventually,
    mutated,
    pod,
    unique,
    volume,
)
from .webhooks import Webhook, retire

CONFIG_MAP = "pod-identity-webhook"
ROLE = "arn:aws:iam::111122223333:role/e2e-from-config-map"
EDITED_ROLE = "arn:aws:iam::111122223333:role/e2e-edited"
ANNOTATED_ROLE = "arn:aws:iam::111122223333:role/e2e-annotation-wins"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cm_webhook(launch_webhook, admin: Kube):
    """Started before the ConfigMap exists: an absent ConfigMap is an empty mapping, not a
    reason to stay unready."""
    hook = await launch_webhook(name="pod-identity-webhook-configmap", label="configmap",
                                flags=("--watch-config-map", "--namespace", WEBHOOK_NAMESPACE))
    yield hook
    assert await retire(admin, hook) == 0, hook.proc.tail()


def config_map(mapping: dict | str) -> dict:
    text = mapping if isinstance(mapping, str) else orjson.dumps(mapping).decode()
    return {"metadata": {"name": CONFIG_MAP}, "data": {"config": text}}


async def put_config_map(admin: Kube, mapping: dict | str) -> None:
    try:
        await admin.call(admin.core.replace_namespaced_config_map, CONFIG_MAP, WEBHOOK_NAMESPACE,
                         config_map(mapping))
    except ApiError as exc:
        if exc.status != 404:
            raise
        await admin.call(admin.core.create_namespaced_config_map, WEBHOOK_NAMESPACE, config_map(mapping))


def role_of(stored: dict) -> str | None:
    return env_of(stored, "app").get("AWS_ROLE_ARN")


async def next_pod(admin: Kube, namespace: str, service_account: str, accept, what: str) -> dict:
    return await eventually(lambda: admin.create_pod(namespace, pod(unique("p"), service_account), dry_run=True),
                            accept, what=what)


async def test_mapping_is_applied_edited_and_removed_live(admin: Kube, cm_webhook: Webhook):
    ns = await admin.namespace("e2e-cm", cm_webhook.namespace_labels, service_accounts=("default", "app", "annotated"))
    await admin.annotate_service_account(ns, "annotated", {ROLE_ANNOTATION: ANNOTATED_ROLE})
    await put_config_map(admin, {
        f"{ns}/app": {"RoleARN": ROLE, "Audience": "sts.example.com", "UseRegionalSTS": True, "TokenExpiration": 1800},
        f"{ns}/annotated": {"RoleARN": ROLE},
    })

    first = await next_pod(admin, ns, "app", lambda p: role_of(p) == ROLE, "the ConfigMap's role")
    assert env_of(first, "app")["AWS_STS_REGIONAL_ENDPOINTS"] == "regional"
    assert volume(first, "aws-iam-token")["projected"]["sources"] == [
        {"serviceAccountToken": {"audience": "sts.example.com", "expirationSeconds": 1800, "path": "token"}}]
    stored = await admin.create_pod(ns, pod("stored", "app"))
    assert role_of(stored) == ROLE
    # A role annotation on the ServiceAccount wins over the ConfigMap entry.
    assert role_of(await admin.create_pod(ns, pod("annotated", "annotated"))) == ANNOTATED_ROLE

    await put_config_map(admin, {f"{ns}/app": {"RoleARN": EDITED_ROLE}})
    edited = await next_pod(admin, ns, "app", lambda p: role_of(p) == EDITED_ROLE, "the edited role")
    assert volume(edited, "aws-iam-token")["projected"]["sources"][0]["serviceAccountToken"] == {
        "audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token"}  # defaults
    assert "AWS_STS_REGIONAL_ENDPOINTS" not in env_of(edited, "app")

    # An invalid edit is logged and the previous mapping stays.
    await put_config_map(admin, "{not json")
    await eventually(lambda: cm_webhook.log_events("config map invalid; keeping the previous mapping"),
                     bool, what="the webhook noticing the invalid ConfigMap")
    assert role_of(await admin.create_pod(ns, pod(unique("kept"), "app"), dry_run=True)) == EDITED_ROLE

    await admin.call(admin.core.delete_namespaced_config_map, CONFIG_MAP, WEBHOOK_NAMESPACE)
    await next_pod(admin, ns, "app", lambda p: not mutated(p), "the mapping gone with the ConfigMap")
    assert not mutated(await admin.create_pod(ns, pod("after-delete", "app")))


async def test_namespace_patterns_map_every_matching_namespace(admin: Kube, cm_webhook: Webhook):
    """Ours only: `team-*`-style globs besides the literal `*`; the exact key wins."""
    prefix = unique("e2e-glob")
    matching = await admin.namespace(f"{prefix}-a", cm_webhook.namespace_labels, service_accounts=("app",))
    exact = await admin.namespace(f"{prefix}-b", cm_webhook.namespace_labels, service_accounts=("app",))
    other = await admin.namespace("e2e-elsewhere", cm_webhook.namespace_labels, service_accounts=("app",))
    await put_config_map(admin, {f"{prefix}-*/app": {"RoleARN": ROLE}, f"{exact}/app": {"RoleARN": EDITED_ROLE}})

    await next_pod(admin, matching, "app", lambda p: role_of(p) == ROLE, "the pattern's role")
    assert role_of(await admin.create_pod(exact, pod("exact", "app"))) == EDITED_ROLE
    assert not mutated(await admin.create_pod(other, pod("other", "app")))
    await admin.call(admin.core.delete_namespaced_config_map, CONFIG_MAP, WEBHOOK_NAMESPACE)

