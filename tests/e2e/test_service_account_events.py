"""Warning Events on misannotated ServiceAccounts, on a real kube-apiserver
(docs/reference.md#service-account-events, docs/mutation.md#service-account-events): a near-miss
key and a malformed role-arn each get one Event naming the ServiceAccount by uid, which
`kubectl describe serviceaccount` lists; a clean ServiceAccount gets none; an update that brings
the same problem again, and a second webhook process syncing the same cluster (a restart, or
another replica), create no second Event. The webhook runs as deploy/rbac.yaml's identity, so
the RBAC rule is exercised too."""

from __future__ import annotations

import os
import subprocess

import pytest_asyncio

from .api import ROLE_ANNOTATION, Kube, eventually
from .test_chart import tools  # noqa: F401  (the fixture: helm and kubectl from tools/get-helm.sh)
from .webhooks import Webhook, retire

ROLE = "arn:aws:iam::111122223333:role/e2e-events"
NEAR_MISS = {"eks.amazon.com/role-arn": ROLE}
BAD_ARN = {ROLE_ANNOTATION: "not-an-arn"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def reporter(launch_webhook, admin: Kube):
    """A webhook of its own, at debug level: its log says what it did with each ServiceAccount
    (the session's webhook, when running, reports the same Events; either may be first)."""
    hook = await launch_webhook(name="pod-identity-webhook-events", label="events", flags=("--log-level", "debug"))
    yield hook
    assert await retire(admin, hook) == 0, hook.proc.tail()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def namespace(admin: Kube, reporter: Webhook) -> str:
    ns = await admin.namespace("e2e-sa-events", reporter.namespace_labels)
    await admin.service_account(ns, "near-miss", NEAR_MISS)
    await admin.service_account(ns, "bad-arn", BAD_ARN)
    await admin.service_account(ns, "clean", {ROLE_ANNOTATION: ROLE})
    return ns


async def events_of(admin: Kube, namespace: str, name: str | None = None) -> list[dict]:
    listed = await admin.call(admin.core.list_namespaced_event, namespace)
    return [e for e in listed["items"] if name is None or e["involvedObject"].get("name") == name]


async def wait_for_both(admin: Kube, namespace: str) -> dict[str, list[dict]]:
    async def probe():
        return {name: await events_of(admin, namespace, name) for name in ("near-miss", "bad-arn")}

    return await eventually(probe, lambda found: all(found.values()), timeout=30, interval=0.3,
                            what="an Event on each misannotated ServiceAccount")


def log_lines(hook: Webhook, event: str, service_account: str) -> list[dict]:
    return [e for e in hook.log_events(event) if e.get("service_account") == service_account]


async def test_a_near_miss_and_a_malformed_role_arn_get_one_warning_event_each(admin, namespace, reporter):
    found = await wait_for_both(admin, namespace)
    for name, reason, says in (("near-miss", "NearMissAnnotation", "rename it to eks.amazonaws.com/role-arn"),
                               ("bad-arn", "InvalidRoleArn", "'not-an-arn' is not an IAM role ARN")):
        [event] = found[name]
        sa = await admin.call(admin.core.read_namespaced_service_account, name, namespace)
        assert event["involvedObject"]["uid"] == sa["metadata"]["uid"]
        assert {k: event["involvedObject"][k] for k in ("apiVersion", "kind", "namespace", "name")} == {
            "apiVersion": "v1", "kind": "ServiceAccount", "namespace": namespace, "name": name}
        assert event["type"] == "Warning" and event["reason"] == reason and says in event["message"]
        assert event["count"] == 1 and len(event["message"].encode()) < 1024
        assert event["source"]["component"] == event["reportingComponent"] == "pod-identity-injector"
        assert event["reportingInstance"]
    assert not any(entry.get("exception") or entry.get("exc_info") for entry in reporter.log_entries())


async def test_a_clean_service_account_gets_no_event(admin, namespace, reporter):
    await wait_for_both(admin, namespace)  # the job has been through what the sync brought
    assert await events_of(admin, namespace, "clean") == []
    assert await events_of(admin, namespace, "default") == []
    assert not log_lines(reporter, "service account event created", f"{namespace}/clean")


async def test_kubectl_describe_serviceaccount_lists_the_event(tools, control_plane, admin, namespace):  # noqa: F811
    await wait_for_both(admin, namespace)
    _, kubectl = tools
    proc = subprocess.run([kubectl, "describe", "serviceaccount", "near-miss", "-n", namespace],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)})
    assert proc.returncode == 0, proc.stderr
    events = proc.stdout.partition("Events:")[2]
    assert "Warning" in events and "NearMissAnnotation" in events and "pod-identity-injector" in events, proc.stdout


async def test_an_update_bringing_the_same_problem_again_creates_no_second_event(admin, namespace, reporter):
    await wait_for_both(admin, namespace)
    # The entry changes (regional STS), the role-arn problem is the same: the store calls the
    # listener again, and the job suppresses the Event it sent (or found) a moment ago.
    await admin.annotate_service_account(namespace, "bad-arn", {"eks.amazonaws.com/sts-regional-endpoints": "true"})
    key = f"{namespace}/bad-arn"
    await eventually(lambda: log_lines(reporter, "service account event suppressed: sent recently", key), bool,
                     timeout=30, interval=0.3, what="the update handled by the events job")
    [event] = await events_of(admin, namespace, "bad-arn")
    assert event["reason"] == "InvalidRoleArn" and event["count"] == 1


async def test_a_second_process_syncing_the_cluster_creates_no_second_event(launch_webhook, admin, namespace):
    await wait_for_both(admin, namespace)
    before = {name: await events_of(admin, namespace, name) for name in ("near-miss", "bad-arn")}
    again = await launch_webhook(name="pod-identity-webhook-events-2", label="events-2",
                                 flags=("--log-level", "debug"))
    try:
        for name in ("near-miss", "bad-arn"):
            key = f"{namespace}/{name}"
            await eventually(lambda key=key: log_lines(again, "service account event already recorded", key),
                             bool, timeout=30, interval=0.3, what=f"{name} reported by the second process")
        assert not log_lines(again, "service account event created", f"{namespace}/near-miss")
    finally:
        assert await retire(admin, again) == 0, again.proc.tail()
    after = {name: await events_of(admin, namespace, name) for name in ("near-miss", "bad-arn")}
    assert {n: [e["metadata"]["uid"] for e in v] for n, v in after.items()} == {
        n: [e["metadata"]["uid"] for e in v] for n, v in before.items()}
    assert all(len(v) == 1 and v[0]["count"] == 1 for v in after.values())
