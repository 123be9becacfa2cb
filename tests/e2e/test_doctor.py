"""`doctor POD -n NS` and `audit` against a real kube-apiserver, one reproducible cause per
test (docs/doctor.md): the finding's code, the exit code. The session's webhook (`webhook`
fixture) serves namespaces labelled `e2e-webhook=enabled`; registrations the tests add
themselves are made after the pod exists, so the API server never calls them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest_asyncio

from .api import ROLE_ANNOTATION, SKIP_LABEL, Kube, ca_bundle, pod, unique
from .webhooks import Webhook
from serving import free_port

ROLE = "arn:aws:iam::111122223333:role/e2e-doctor"


def command(*args: str) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "injector", *args, "-o", "json"], capture_output=True, text=True,
                            timeout=120, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode != 2, result.stderr
    return result.returncode, json.loads(result.stdout)


async def doctor(control_plane, namespace: str, name: str, *flags: str) -> tuple[int, dict]:
    return await asyncio.to_thread(command, "doctor", name, "-n", namespace, "--kubeconfig",
                                   str(control_plane.kubeconfig), "--webhook-configuration", "pod-identity-webhook",
                                   "--ca-file", control_plane.api_ca_file, *flags)


def codes(report: dict, status: str = "fail") -> list[str]:
    return [f["code"] for f in report["findings"] if f["status"] == status]


@pytest_asyncio.fixture(loop_scope="session")
async def namespace(admin: Kube, webhook: Webhook) -> str:
    return await admin.namespace("e2e-doctor", webhook.namespace_labels)


async def test_an_annotated_service_account_gives_a_mutated_pod(control_plane, admin, namespace):
    await admin.service_account(namespace, "app", {ROLE_ANNOTATION: ROLE})
    await admin.create_pod(namespace, pod("good", "app"))
    code, report = await doctor(control_plane, namespace, "good")
    assert {"sa-found", "role-arn-present", "webhook-registered", "pod-injected", "sdk-web-identity",
            "token-projection"} <= set(codes(report, "ok"))
    # The session's issuer is the API server on 127.0.0.1: STS could not fetch its keys.
    assert "issuer-private" in codes(report, "warn")
    assert codes(report) in ([], ["token-rejected"]) and code == (1 if codes(report) else 0)


async def test_a_service_account_without_role_arn(control_plane, admin, namespace):
    await admin.service_account(namespace, "plain")
    await admin.create_pod(namespace, pod("plain", "plain"))
    code, report = await doctor(control_plane, namespace, "plain")
    assert code == 1 and codes(report) == ["role-arn-missing"]


async def test_a_near_miss_annotation_key(control_plane, admin, namespace):
    await admin.service_account(namespace, "typo", {"eks.amazon.com/role-arn": ROLE})
    await admin.create_pod(namespace, pod("typo", "typo"))
    code, report = await doctor(control_plane, namespace, "typo")
    assert code == 1 and codes(report) == ["near-miss-annotation"]


async def test_a_pod_created_before_the_annotation(control_plane, admin, namespace):
    # Created with an annotation, as from a manifest: an object created owning no field gets no
    # managedFields at all, and then none record when the role was added (doctor says so).
    await admin.service_account(namespace, "late", {"example.com/team": "a"})
    await admin.create_pod(namespace, pod("early", "late"))
    await asyncio.sleep(1.1)  # managedFields and creationTimestamp have whole seconds
    # As `kubectl annotate` does it: its own field manager, so managedFields record when.
    await admin.call(admin.core.patch_namespaced_service_account, "late", namespace,
                     {"metadata": {"annotations": {ROLE_ANNOTATION: ROLE}}}, field_manager="kubectl-annotate")
    code, report = await doctor(control_plane, namespace, "early")
    assert code == 1 and codes(report) == ["pod-created-before-annotation", "pod-not-injected"]


async def test_the_skip_label(control_plane, admin, namespace):
    await admin.service_account(namespace, "skipped", {ROLE_ANNOTATION: ROLE})
    await admin.create_pod(namespace, pod("skipped", "skipped", labels={SKIP_LABEL: "true"}))
    code, report = await doctor(control_plane, namespace, "skipped")
    assert code == 1 and codes(report) == ["pod-skip-label", "pod-not-injected"]


async def test_a_namespace_the_selectors_exclude(control_plane, admin, webhook):
    other = await admin.namespace("e2e-doctor-unlabelled")
    await admin.service_account(other, "app", {ROLE_ANNOTATION: ROLE})
    await admin.create_pod(other, pod("outside", "app"))
    code, report = await doctor(control_plane, other, "outside")
    assert code == 1 and codes(report) == ["namespace-not-selected", "pod-not-injected"]
    message = next(f for f in report["findings"] if f["code"] == "namespace-not-selected")["message"]
    assert "matchLabels e2e-webhook=enabled (the object has no label e2e-webhook)" in message


def _registration(name: str, label: str, client_config: dict) -> dict:
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{"name": f"{name}.e2e.pod-identity-injector.test", "admissionReviewVersions": ["v1"],
                          "sideEffects": "None", "failurePolicy": "Ignore", "timeoutSeconds": 2,
                          "clientConfig": client_config,
                          "namespaceSelector": {"matchLabels": {"e2e-webhook": label}},
                          "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                     "resources": ["pods"]}]}]}


async def _unmutated_pod(admin: Kube, label: str) -> str:
    """A namespace no webhook serves yet, an annotated ServiceAccount and a pod."""
    ns = await admin.namespace(f"e2e-doctor-{label}", {"e2e-webhook": label})
    await admin.service_account(ns, "app", {ROLE_ANNOTATION: ROLE})
    await admin.create_pod(ns, pod("missed", "app"))
    return ns


async def test_a_webhook_service_without_endpoints(control_plane, admin):
    label = unique("noep")
    ns = await _unmutated_pod(admin, label)
    await admin.call(admin.core.create_namespaced_service, ns, {
        "metadata": {"name": "pod-identity-webhook"}, "spec": {"ports": [{"port": 443}], "selector": {"app": "x"}}})
    name = f"pod-identity-{label}"
    await admin.call(admin.admission.create_mutating_webhook_configuration, _registration(name, label, {
        "service": {"name": "pod-identity-webhook", "namespace": ns, "path": "/mutate"},
        "caBundle": ca_bundle(control_plane.api_ca_file)}))
    try:
        code, report = await asyncio.to_thread(
            command, "doctor", "missed", "-n", ns, "--kubeconfig", str(control_plane.kubeconfig),
            "--webhook-configuration", name)
    finally:
        await admin.call(admin.admission.delete_mutating_webhook_configuration, name)
    assert code == 1 and codes(report) == ["webhook-no-endpoints", "pod-not-injected"]


async def test_an_unreachable_webhook_url(control_plane, admin):
    label = unique("down")
    ns = await _unmutated_pod(admin, label)
    name = f"pod-identity-{label}"
    await admin.call(admin.admission.create_mutating_webhook_configuration, _registration(name, label, {
        "url": f"https://127.0.0.1:{free_port()}/mutate", "caBundle": ca_bundle(control_plane.api_ca_file)}))
    try:
        code, report = await asyncio.to_thread(
            command, "doctor", "missed", "-n", ns, "--kubeconfig", str(control_plane.kubeconfig),
            "--webhook-configuration", name)
        assert code == 1 and codes(report) == ["webhook-unreachable", "pod-not-injected"]
        # The same registration, as audit reports it, with the owner to restart.
        deployment = await admin.call(admin_apps(admin).create_namespaced_deployment, ns, {
            "metadata": {"name": "web"}, "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                                                  "template": {"metadata": {"labels": {"app": "web"}},
                                                               "spec": {"containers": [{"name": "a",
                                                                                        "image": "x"}]}}}})
        replica_set = await admin.call(admin_apps(admin).create_namespaced_replica_set, ns, {
            "metadata": {"name": "web-1", "ownerReferences": [_controller("Deployment", deployment)]},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "a", "image": "x"}]}}}})
        owned = pod("web-1-abcde", "app", labels={"app": "web"})
        owned["metadata"]["ownerReferences"] = [_controller("ReplicaSet", replica_set)]
        await admin.create_pod(ns, owned)
        code, listed = await asyncio.to_thread(command, "audit", "-n", ns, "--kubeconfig",
                                               str(control_plane.kubeconfig), "--webhook-configuration", name)
    finally:
        await admin.call(admin.admission.delete_mutating_webhook_configuration, name)
    assert code == 1
    by_pod = {entry["pod"]: entry for entry in listed["pods"]}
    assert set(by_pod) == {"missed", "web-1-abcde"}
    assert by_pod["web-1-abcde"]["owner"] == {"kind": "Deployment", "name": "web"}
    assert by_pod["web-1-abcde"]["restart"] == f"kubectl -n {ns} rollout restart deployment/web"
    assert by_pod["missed"]["owner"] == {"kind": "Pod", "name": "missed"}
    assert by_pod["missed"]["reasons"] == ["webhook-unreachable"]


async def test_a_volume_named_like_the_token_volume_is_found_by_doctor_and_audit(control_plane, admin, webhook):
    """The webhook leaves such a pod unchanged (§volume-collision); both commands must say why,
    and neither may call it injected."""
    ns = await admin.namespace("e2e-doctor-collision", webhook.namespace_labels)
    await admin.service_account(ns, "app", {ROLE_ANNOTATION: ROLE})
    await admin.create_pod(ns, pod("collided", "app", volumes=[{"name": "aws-iam-token", "emptyDir": {}}]))
    code, report = await doctor(control_plane, ns, "collided")
    assert code == 1 and codes(report) == ["volume-name-collision", "pod-not-injected"]
    assert "pod-injected" not in codes(report, "ok")
    code, listed = await asyncio.to_thread(command, "audit", "-n", ns, "--kubeconfig",
                                           str(control_plane.kubeconfig))
    assert code == 1 and [(e["pod"], e["reasons"]) for e in listed["pods"]] == [
        ("collided", ["volume-name-collision"])]


async def test_audit_is_quiet_where_every_pod_was_mutated(control_plane, admin, namespace):
    await admin.service_account(namespace, "fine", {ROLE_ANNOTATION: ROLE})
    await admin.create_pod(namespace, pod("fine", "fine"))
    code, listed = await asyncio.to_thread(command, "audit", "-n", namespace, "--kubeconfig",
                                           str(control_plane.kubeconfig))
    assert (code, listed) == (0, {"pods": []})


def admin_apps(admin: Kube):
    from kubernetes_asyncio import client

    return client.AppsV1Api(admin.api)


def _controller(kind: str, obj: dict) -> dict:
    return {"apiVersion": "apps/v1", "kind": kind, "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
            "controller": True}
