"""When the webhook cannot be reached: `failurePolicy: Ignore` (what we ship) lets the pod in
unmutated, `Fail` rejects it. Each configuration has its own namespace label, so nothing
else in the suite is affected."""

from __future__ import annotations

import asyncio
import re

import pytest

from .api import ROLE_ANNOTATION, ApiError, Kube, env_of, eventually, mutated, pod, unique, webhook_configuration
from .plane import ControlPlane
from .webhooks import retire
from serving import free_port

ROLE = "arn:aws:iam::111122223333:role/e2e-unreachable"


async def dead_webhook_namespace(admin: Kube, plane: ControlPlane, policy: str) -> tuple[str, str]:
    """A configuration pointing at a 127.0.0.1 port nobody listens on, and a namespace it
    serves, with an annotated ServiceAccount `app`. Returns (namespace, webhook name)."""
    labels = {"e2e-dead-webhook": policy.lower()}
    name = f"e2e-dead-{policy.lower()}"
    hook = f"{name}.e2e.pod-identity-injector.test"
    await admin.call(admin.admission.create_mutating_webhook_configuration, webhook_configuration(
        name, hook, f"https://127.0.0.1:{free_port()}/mutate", plane.pki.ca_file, labels, failure_policy=policy))
    ns = await admin.namespace(f"e2e-dead-{policy.lower()}", labels)
    await admin.service_account(ns, "app", {ROLE_ANNOTATION: ROLE})
    return ns, hook


def fail_open_count(plane: ControlPlane, hook: str) -> float:
    status, body = plane.get("/metrics")
    assert status == 200
    pattern = rf'^apiserver_admission_webhook_fail_open_count{{[^}}]*name="{re.escape(hook)}"[^}}]*}} (\S+)$'
    return sum(float(m.group(1)) for m in re.finditer(pattern, body.decode(), re.MULTILINE))


async def test_fail_policy_rejects_the_pod_when_the_webhook_is_unreachable(admin, control_plane):
    ns, hook = await dead_webhook_namespace(admin, control_plane, "Fail")

    async def attempt(name: str, dry_run: bool = True) -> ApiError | None:
        try:
            await admin.create_pod(ns, pod(name, "app"), dry_run=dry_run)
        except ApiError as exc:
            return exc
        return None

    await eventually(lambda: attempt(unique("probe")), lambda error: error is not None,
                     what="the Fail configuration in force")
    error = await attempt("rejected", dry_run=False)
    assert error is not None and error.status == 500
    assert f'failed calling webhook "{hook}"' in error.message and "connection refused" in error.message
    with pytest.raises(ApiError) as missing:
        await admin.read_pod(ns, "rejected")
    assert missing.value.status == 404
    await admin.call(admin.admission.delete_mutating_webhook_configuration, "e2e-dead-fail")


async def test_ignore_policy_admits_the_pod_unmutated_when_the_webhook_is_unreachable(admin, control_plane):
    ns, hook = await dead_webhook_namespace(admin, control_plane, "Ignore")

    async def probe_and_count() -> float:
        await admin.create_pod(ns, pod(unique("probe"), "app"), dry_run=True)
        return await asyncio.to_thread(fail_open_count, control_plane, hook)

    # Proof that the configuration is in force: the API server counts the calls that failed open.
    await eventually(probe_and_count, lambda count: count > 0, what="a failed-open call of the dead webhook")
    before = await asyncio.to_thread(fail_open_count, control_plane, hook)
    stored = await admin.create_pod(ns, pod("admitted", "app"))
    assert not mutated(stored) and "aws-iam-token" not in {v["name"] for v in stored["spec"]["volumes"]}
    assert await asyncio.to_thread(fail_open_count, control_plane, hook) == before + 1
    await admin.call(admin.admission.delete_mutating_webhook_configuration, "e2e-dead-ignore")


async def test_pods_created_while_our_webhook_is_stopped_start_without_credentials(admin, launch_webhook):
    """The real thing going away: SIGTERM to `serve`; the shipped Ignore policy lets pods in."""
    hook = await launch_webhook(name="pod-identity-webhook-stopped", label="stopped")
    try:
        ns = await admin.namespace("e2e-stopped", hook.namespace_labels)
        await admin.service_account(ns, "app", {ROLE_ANNOTATION: ROLE})
        assert env_of(await admin.create_pod(ns, pod("while-up", "app")), "app")["AWS_ROLE_ARN"] == ROLE

        assert await asyncio.to_thread(hook.proc.stop) == 0
        stored = await admin.create_pod(ns, pod("while-down", "app"))
        assert not mutated(stored)
    finally:
        await retire(admin, hook)
