"""Fixtures of the e2e tier: one control plane per session, webhooks per configuration.

* `control_plane` (session): finds or builds kube-test-plane, starts etcd and kube-apiserver
  on free 127.0.0.1 ports. No binary: the e2e tests are skipped, unless `E2E_REQUIRED=1`,
  which makes them fail instead (CI sets it, so CI cannot go green without them).
* `kube_server` (session): that API server's version and feature gates (server_features.py),
  for the tests whose expected outcome depends on the Kubernetes minor (`make e2e-matrix`).
* `webhook_kubeconfig` (session): the webhook's own identity, as in a cluster: the
  ServiceAccount and RBAC of deploy/rbac.yaml and a TokenRequest token. Every webhook of the
  suite runs with it, so a missing permission fails tests.
* `webhook` (session): `serve` watching ServiceAccounts, registered for namespaces labelled
  `e2e-webhook=enabled`. Modules needing other flags start their own through `launch_webhook`.

External mode, `E2E_KUBECONFIG=<admin kubeconfig>` (e.g. kind, `make e2e-kind`): the same
tests against that cluster; nothing is started but the webhooks, which listen on
`E2E_WEBHOOK_HOST` (default 127.0.0.1), where that cluster's API server reaches them.
Everything the session creates there that is cluster-scoped is labelled
`app.kubernetes.io/managed-by=pod-identity-injector-e2e` and deleted at the end (and at the
start, if an interrupted session left it: so only one session at a time per cluster). Tests
that cannot work there are skipped with the reason (`_external_skip`, `_external_mode_skips`).

Every async test and fixture here shares the session's event loop. On a failure the tails of
the logs of every process still running (API server, etcd, webhooks) are attached to the report.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from pytest_asyncio import is_async_test

from . import plane as plane_module
from .api import WEBHOOK_NAMESPACE, WEBHOOK_SERVICE_ACCOUNT, ApiError, Kube, api_client, load_manifests
from .plane import (
    LOOPBACK,
    ControlPlane,
    ExternalCluster,
    ExternalClusterError,
    binary_for_tests,
    connect_external_cluster,
    external_kubeconfig,
    start_control_plane,
    webhook_host,
    write_kubeconfig,
)
from .server_features import ServerFeatures, server_features
from .webhooks import Webhook, launch, retire

E2E_DIR = Path(__file__).resolve().parent
RBAC = E2E_DIR.parents[1] / "deploy" / "rbac.yaml"

# Locally only loopback is ever contacted; make sure no proxy setting of the host gets in between.
for _var in ("NO_PROXY", "no_proxy"):
    _hosts = [h for h in os.environ.get(_var, "").split(",") if h]
    os.environ[_var] = ",".join(dict.fromkeys([*_hosts, "127.0.0.1", "localhost"]))


def _in_e2e(item: pytest.Item) -> bool:
    return E2E_DIR in Path(item.path).parents


# -- external mode: what cannot work against an existing cluster, and why ------------------------
OWNER_LABELS = {"app.kubernetes.io/managed-by": "pod-identity-injector-e2e"}
OWNER_SELECTOR = ",".join(f"{k}={v}" for k, v in OWNER_LABELS.items())
CHART_INSTALLED_SKIP = (
    "external mode (E2E_KUBECONFIG): the installed-chart tests run the chart's webhook as a local "
    "process registered at https://127.0.0.1:<port> (webhook.url), which a foreign cluster's API server "
    "cannot call; tools/e2e-kind.sh installs the chart into the kind cluster itself (image loaded, webhook "
    "in-cluster, self-managed certificate) and runs `helm test` there instead")
JWKS_SKIP = (
    "external mode (E2E_KUBECONFIG): the cluster's discovery document names jwks_uri {jwks_uri!r}, not under "
    "{url}/, and the test only fetches keys from the API server it talks to; tools/e2e-kind.sh sets "
    "--service-account-jwks-uri so that kind's is")

CONTROLLER_SKIP = (
    "external mode (E2E_KUBECONFIG): the test gives a hand-made pod a 0-replica ReplicaSet as its owner, "
    "which a real cluster's ReplicaSet controller deletes before `audit` lists it; the local control plane "
    "runs no controllers")


def _external_skip(item: pytest.Item) -> str:
    """Skips known at collection time (the JWKS one needs the cluster: `_external_mode_skips`)."""
    if Path(item.path).name == "test_chart.py" and "installed" in getattr(item, "fixturenames", ()):
        return CHART_INSTALLED_SKIP
    if item.name == "test_an_unreachable_webhook_url":
        return CONTROLLER_SKIP
    return ""


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    session_loop = pytest.mark.asyncio(loop_scope="session")
    external = bool(external_kubeconfig())
    for item in items:
        if _in_e2e(item):
            item.add_marker(pytest.mark.e2e)
            if is_async_test(item):
                item.add_marker(session_loop, append=False)
            if external and (reason := _external_skip(item)):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _external_mode_skips(request: pytest.FixtureRequest) -> None:
    if not external_kubeconfig() or Path(request.node.path).name != "test_web_identity_token.py":
        return
    cluster = request.getfixturevalue("control_plane")
    if not cluster.jwks_uri.startswith(f"{cluster.url}/"):
        pytest.skip(JWKS_SKIP.format(jwks_uri=cluster.jwks_uri, url=cluster.url))


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
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane | ExternalCluster]:
    if kubeconfig := external_kubeconfig():
        try:
            cluster = connect_external_cluster(Path(kubeconfig), tmp_path_factory.mktemp("cluster"), webhook_host())
        except (ExternalClusterError, TimeoutError, OSError) as exc:
            pytest.fail(f"E2E_KUBECONFIG={kubeconfig}: {exc}", pytrace=False)
        print(f"\nexternal cluster {cluster.url} (issuer {cluster.issuer}), webhooks on {cluster.webhook_host}")
        yield cluster
        return
    if os.environ.get("E2E_WEBHOOK_HOST", LOOPBACK) != LOOPBACK:
        pytest.fail("E2E_WEBHOOK_HOST is only for an existing cluster (E2E_KUBECONFIG); the local control plane "
                    "reaches the webhooks on 127.0.0.1", pytrace=False)
    binary = binary_for_tests()
    plane = start_control_plane(binary, tmp_path_factory.mktemp("plane"))
    print(f"\ncontrol plane ready in {plane.startup_seconds:.1f}s at {plane.url}")
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kube_server(control_plane: ControlPlane | ExternalCluster) -> ServerFeatures:
    """The version and feature gates of the API server under test."""
    features = server_features(control_plane.get)
    print(f"\nkube-apiserver {features.git_version}")
    return features


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def admin(control_plane: ControlPlane | ExternalCluster) -> AsyncIterator[Kube]:
    """The cluster admin (client certificate, group system:masters; or E2E_KUBECONFIG's user)."""
    client = await api_client(control_plane.kubeconfig)
    try:
        if not control_plane.external:
            yield Kube(client)
            return
        kube = Kube(client, owner_labels=OWNER_LABELS)
        await delete_owned(kube)  # what an interrupted session left
        await wait_for_webhook_namespace(kube)
        try:
            yield kube
        finally:
            await delete_owned(kube)
    finally:
        await client.close()


async def delete_owned(admin: Kube) -> None:
    """External mode: delete the session's MutatingWebhookConfigurations first (no pod
    creation may go to a stopped webhook), then its ClusterRoleBindings and ClusterRoles,
    then its namespaces with everything in them (a real cluster's controller-manager finishes
    that; not waited for)."""
    await admin.call(admin.admission.delete_collection_mutating_webhook_configuration, label_selector=OWNER_SELECTOR)
    await admin.call(admin.rbac.delete_collection_cluster_role_binding, label_selector=OWNER_SELECTOR)
    await admin.call(admin.rbac.delete_collection_cluster_role, label_selector=OWNER_SELECTOR)
    namespaces = await admin.call(admin.core.list_namespace, label_selector=OWNER_SELECTOR)
    for namespace in namespaces["items"]:
        if namespace["metadata"].get("deletionTimestamp"):
            continue
        try:
            await admin.call(admin.core.delete_namespace, namespace["metadata"]["name"])
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise


async def wait_for_webhook_namespace(admin: Kube, timeout: float = 180) -> None:
    """deploy/rbac.yaml's namespace must be created by this session: wait until an earlier
    session's is gone; refuse to touch one that the tier did not create."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            namespace = await admin.call(admin.core.read_namespace, WEBHOOK_NAMESPACE)
        except ApiError as exc:
            if exc.status == 404:
                return
            raise
        labels = namespace["metadata"].get("labels") or {}
        if not OWNER_LABELS.items() <= labels.items():
            pytest.fail(f"namespace {WEBHOOK_NAMESPACE} exists and was not created by the e2e tier (no "
                        f"{OWNER_SELECTOR}); the tests create it for deploy/rbac.yaml, so use a cluster without it "
                        "(tools/e2e-kind.sh installs the chart into pod-identity-injector-system)", pytrace=False)
        if loop.time() > deadline:
            pytest.fail(f"namespace {WEBHOOK_NAMESPACE} of an earlier session still terminating after {timeout:.0f}s",
                        pytrace=False)
        await asyncio.sleep(1)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def webhook_kubeconfig(control_plane: ControlPlane | ExternalCluster, admin: Kube) -> Path:
    """A kubeconfig authenticating as the webhook's ServiceAccount with a bearer token."""
    manifests = load_manifests(RBAC)
    namespaces = {d["metadata"].get("namespace") for d in manifests} - {None}
    assert namespaces == {WEBHOOK_NAMESPACE}, f"deploy/rbac.yaml uses namespaces {namespaces}"
    await admin.call(admin.core.create_namespace, {"metadata": {"name": WEBHOOK_NAMESPACE}})
    await admin.apply_manifests(manifests)
    answer = await admin.token(WEBHOOK_NAMESPACE, WEBHOOK_SERVICE_ACCOUNT, expiration_seconds=4 * 3600)
    return write_kubeconfig(control_plane.workdir / "webhook.kubeconfig", control_plane.url,
                            control_plane.api_ca_file, token=answer["status"]["token"],
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
def launch_webhook(control_plane: ControlPlane | ExternalCluster, admin: Kube, webhook_kubeconfig: Path,
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
