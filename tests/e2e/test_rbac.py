"""Least privilege: deploy/rbac.yaml gives the webhook's ServiceAccount what `serve` needs and
nothing more (its one create is of Events). Every webhook of this suite runs with that identity
(a TokenRequest token), so a missing permission also fails the behaviour tests; these pin down
the other direction."""

from __future__ import annotations

import pytest

from .api import WEBHOOK_NAMESPACE, WEBHOOK_SERVICE_ACCOUNT, ApiError, Kube

CONFIG_MAP = "pod-identity-webhook"
NEEDED = [
    # (verb, resource, namespace, name)
    ("list", "serviceaccounts", "", ""),  # the cluster-wide list+watch
    ("watch", "serviceaccounts", "", ""),
    ("get", "serviceaccounts", "some-namespace", "some-sa"),  # the lookup on a cache miss
    ("get", "configmaps", WEBHOOK_NAMESPACE, CONFIG_MAP),
    ("list", "configmaps", WEBHOOK_NAMESPACE, CONFIG_MAP),  # list/watch with fieldSelector metadata.name
    ("watch", "configmaps", WEBHOOK_NAMESPACE, CONFIG_MAP),
    ("create", "events", "some-namespace", ""),  # Warning Events on ServiceAccounts
]
FORBIDDEN = [
    ("get", "secrets", WEBHOOK_NAMESPACE, ""),
    ("list", "secrets", "", ""),
    ("get", "secrets", "kube-system", "anything"),
    ("list", "configmaps", WEBHOOK_NAMESPACE, ""),  # only the one ConfigMap
    ("get", "configmaps", WEBHOOK_NAMESPACE, "other"),
    ("get", "configmaps", "default", CONFIG_MAP),  # only in its own namespace
    ("create", "pods", "default", ""),
    ("create", "serviceaccounts", "default", ""),
    ("update", "serviceaccounts", "default", "default"),
    ("patch", "serviceaccounts", "default", "default"),
    ("delete", "serviceaccounts", "default", "default"),
    ("create", "configmaps", WEBHOOK_NAMESPACE, ""),
    ("update", "configmaps", WEBHOOK_NAMESPACE, CONFIG_MAP),
    ("create", "secrets", WEBHOOK_NAMESPACE, ""),
    ("create", "namespaces", "", ""),
    ("list", "pods", "", ""),
    ("update", "events", "default", "any"),  # an Event is created once, never changed or read
    ("patch", "events", "default", "any"),
    ("list", "events", "", ""),
    ("delete", "events", "default", "any"),
]


@pytest.mark.parametrize("verb, resource, namespace, name", NEEDED)
async def test_the_webhook_may_do_what_it_needs(webhook_client: Kube, verb, resource, namespace, name):
    assert await webhook_client.can_i(verb, resource, namespace=namespace, name=name)


@pytest.mark.parametrize("verb, resource, namespace, name", FORBIDDEN)
async def test_the_webhook_may_not_do_anything_else(webhook_client: Kube, verb, resource, namespace, name):
    assert not await webhook_client.can_i(verb, resource, namespace=namespace, name=name)


async def test_no_create_of_any_kind_or_token_minting(admin: Kube, webhook_client: Kube):
    """Cross-checked by the admin with a SubjectAccessReview for the ServiceAccount user."""
    user = f"system:serviceaccount:{WEBHOOK_NAMESPACE}:{WEBHOOK_SERVICE_ACCOUNT}"
    for group, resource, subresource in [("", "*", ""), ("apps", "deployments", ""),
                                         ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", ""),
                                         ("rbac.authorization.k8s.io", "clusterroles", ""),
                                         ("", "serviceaccounts", "token")]:
        review = await admin.call(admin.authorization.create_subject_access_review, {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": ["system:serviceaccounts", f"system:serviceaccounts:{WEBHOOK_NAMESPACE}",
                                              "system:authenticated"],
                     "resourceAttributes": {"verb": "create", "group": group, "resource": resource,
                                            "subresource": subresource, "namespace": WEBHOOK_NAMESPACE}}})
        assert review["status"].get("allowed") is not True, (group, resource, subresource)


async def test_field_selector_list_and_watch_of_the_config_map_are_allowed_for_real(webhook_client: Kube):
    """resourceNames restricts list/watch only when the request names the object through
    `fieldSelector=metadata.name=…`, which is how the ConfigMap source asks."""
    core = webhook_client.core
    selector = f"metadata.name={CONFIG_MAP}"
    listed = await webhook_client.call(core.list_namespaced_config_map, WEBHOOK_NAMESPACE, field_selector=selector)
    assert listed["kind"] == "ConfigMapList"
    response = await core.list_namespaced_config_map(WEBHOOK_NAMESPACE, field_selector=selector, watch=True,
                                                     timeout_seconds=1, _preload_content=False)
    try:
        assert response.status == 200
        await response.read()  # ends after timeout_seconds
    finally:
        response.release()
    with pytest.raises(ApiError) as denied:
        await webhook_client.call(core.list_namespaced_config_map, WEBHOOK_NAMESPACE)
    assert denied.value.status == 403
    with pytest.raises(ApiError) as denied:
        await webhook_client.call(core.list_namespaced_secret, WEBHOOK_NAMESPACE)
    assert denied.value.status == 403
