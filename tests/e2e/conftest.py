"""Fixtures of the e2e tier: one control plane per session, webhooks per configuration.

* `control_plane` (session): finds or builds kube-test-plane, starts etcd and kube-apiserver
  on free 127.0.0.1 ports. No binary: the e2e tests are skipped, unless `E2E_REQUIRED=1`,
  which makes them fail instead (CI sets it, so CI cannot go green without them).
* `webhook_kubeconfig` (session): the webhook's own identity, as in a cluster: the
  ServiceAccount and RBAC of deploy/rbac.yaml and a TokenRequest token. Every webhook of the
  suite runs with it, so a missing permission fails tests.
* `webhook` (session): `serve` watching ServiceAccounts, registered for namespaces labelled
  `e2e-webhook=enabled`. Modules needing other flags start their own through `launch_webhook`.

Every async test and fixture here shares the session's event loop. On a failure the tails of
the logs of every process still running (API server, etcd, webhooks) are attached to the report.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from pytest_asyncio import is_async_test

from . import plane as plane_module
from .api import WEBHOOK_NAMESPACE, WEBHOOK_SERVICE_ACCOUNT, Kube, api_client, load_manifests
from .plane import BinaryUnavailable, ControlPlane, find_binary, start_control_plane, write_kubeconfig
from .webhooks import Webhook, launch, retire

E2E_DIR = Path(__file__).resolve().parent
RBAC = E2E_DIR.parents[1] / "deploy" / "rbac.yaml"

# Only loopback is ever contacted; make sure no proxy setting of the host gets in between.
for _var in ("NO_PROXY", "no_proxy"):
    _hosts = [h for h in os.environ.get(_var, "").split(",") if h]
    os.environ[_var] = ",".join(dict.fromkeys([*_hosts, "127.0.0.1", "localhost"]))


def _in_e2e(item: pytest.Item) -> bool:
    return E2E_DIR in Path(item.path).parents


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    session_loop = pytest.mark.asyncio(loop_scope="session")
    for item in items:
        if _in_e2e(item):
            item.add_marker(pytest.mark.e2e)
            if is_async_test(item):
                item.add_marker(session_loop, append=False)


ReportWrapper = Generator[None, pytest.TestReport, pytest.TestReport]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> ReportWrapper:
    report = yield
    if report.failed and _in_e2e(item):
        for proc in plane_module.LIVE:
            report.sections.append((f"{proc.name} log (last lines, {proc.log_file})", proc.tail(40)))
    return report


# -- the control plane --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    try:
        binary = find_binary()
    except BinaryUnavailable as exc:
        if os.environ.get("E2E_REQUIRED") == "1":
            pytest.fail(f"E2E_REQUIRED=1 but kube-test-plane is unavailable: {exc}", pytrace=False)
        pytest.skip(f"kube-test-plane unavailable (set E2E_REQUIRED=1 to make this an error): {exc}")
    plane = start_control_plane(binary, tmp_path_factory.mktemp("plane"))
    print(f"\ncontrol plane ready in {plane.startup_seconds:.1f}s at {plane.url}")
    try:
        yield plane
    finally:
        plane.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def admin(control_plane: ControlPlane) -> AsyncIterator[Kube]:
    """The cluster admin (client certificate, group system:masters)."""
    client = await api_client(control_plane.kubeconfig)
    try:
        yield Kube(client)
    finally:
        await client.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def webhook_kubeconfig(control_plane: ControlPlane, admin: Kube) -> Path:
    """A kubeconfig authenticating as the webhook's ServiceAccount with a bearer token."""
    manifests = load_manifests(RBAC)
    namespaces = {d["metadata"].get("namespace") for d in manifests} - {None}
    assert namespaces == {WEBHOOK_NAMESPACE}, f"deploy/rbac.yaml uses namespaces {namespaces}"
    await admin.call(admin.core.create_namespace, {"metadata": {"name": WEBHOOK_NAMESPACE}})
    await admin.apply_manifests(manifests)
    answer = await admin.token(WEBHOOK_NAMESPACE, WEBHOOK_SERVICE_ACCOUNT, expiration_seconds=4 * 3600)
    return write_kubeconfig(control_plane.workdir / "webhook.kubeconfig", control_plane.url,
                            control_plane.pki.ca_file, token=answer["status"]["token"],
                            user=f"system:serviceaccount:{WEBHOOK_NAMESPACE}:{WEBHOOK_SERVICE_ACCOUNT}")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def webhook_client(webhook_kubeconfig: Path) -> AsyncIterator[Kube]:
    """The API as the webhook sees it (its ServiceAccount token)."""
    client = await api_client(webhook_kubeconfig)
    try:
        yield Kube(client)
    finally:
        await client.close()


LaunchWebhook = Callable[..., Awaitable[Webhook]]


@pytest.fixture(scope="session")
def launch_webhook(control_plane: ControlPlane, admin: Kube, webhook_kubeconfig: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> LaunchWebhook:
    """`await launch_webhook(name=…, label=…, flags=(…))`: a registered, active webhook.
    The caller retires it (`webhooks.retire`)."""
    workdir = tmp_path_factory.mktemp("webhooks")

    async def start(*, name: str, label: str, flags: tuple[str, ...] = ()) -> Webhook:
        return await launch(control_plane, admin, workdir, webhook_kubeconfig, name=name, label=label, flags=flags)

    return start


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def webhook(launch_webhook: LaunchWebhook, admin: Kube) -> AsyncIterator[Webhook]:
    """The default deployment: ServiceAccount annotations from a list+watch of the API."""
    hook = await launch_webhook(name="pod-identity-webhook", label="enabled")
    yield hook
    assert await retire(admin, hook) == 0, hook.proc.tail()
