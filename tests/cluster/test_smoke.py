"""Smoke tier: the chart as `make cluster-up` installs it, on a real kubelet and containerd."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import tempfile

from cryptography import x509

from .conftest import IMAGE, RELEASE, RELEASE_NAMESPACE, Kubectl, released

ROLE_ARN = "arn:aws:iam::111122223333:role/smoke"
WORKLOAD_UID = 1000

# Runs in the workload's container as a non-root user: what the SDK would read, as JSON.
READ_TOKEN = r"""
import base64, json, os, stat, time
path = os.environ["AWS_WEB_IDENTITY_TOKEN_FILE"]
token = open(path).read().strip()
payload = token.split(".")[1]
claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
info = os.stat(path)
print(json.dumps({"uid": os.getuid(), "role_arn": os.environ.get("AWS_ROLE_ARN"), "path": path,
                  "mode": oct(stat.S_IMODE(info.st_mode)), "owner": info.st_uid,
                  "aud": claims["aud"], "sub": claims["sub"], "iss": claims["iss"]}), flush=True)
time.sleep(3600)
"""


def test_chart_is_installed_from_the_registry_with_default_values(kubectl: Kubectl) -> None:
    """What an admin's first `helm install oci://… --version V` gets: nothing overridden, the
    released chart, whose default image is the released index by digest."""
    release = released()
    values = json.loads(kubectl.helm("get", "values", RELEASE, "-n", RELEASE_NAMESPACE, "-o", "json"))
    assert not values
    meta = json.loads(kubectl.helm("list", "-n", RELEASE_NAMESPACE, "-o", "json"))[0]
    assert meta["chart"] == f"pod-identity-injector-{release['version']}"
    assert meta["app_version"] == release["version"]
    container = kubectl.json("-n", RELEASE_NAMESPACE, "get", "deployment", RELEASE)["spec"]["template"]["spec"][
        "containers"][0]
    assert container["image"] == f"{release['registry']}/pod-identity-injector@{release['index_digest']}"
    assert container["imagePullPolicy"] == "IfNotPresent"


def test_the_kubelet_pulled_our_image_from_the_registry(kubectl: Kubectl) -> None:
    """Not preloaded: the node's containerd fetched it, over TLS with the cluster's CA."""
    release = released()
    pulled = kubectl.json("-n", RELEASE_NAMESPACE, "get", "events", "--field-selector", "reason=Pulled")["items"]
    image = f"{release['registry']}/pod-identity-injector@{release['index_digest']}"
    assert any(f'Successfully pulled image "{image}"' in e.get("message", "") for e in pulled), \
        [e.get("message") for e in pulled]
    # The kubelet reports what it pulled by the index's digest (containerd then took linux/amd64 from it).
    for pod in kubectl.json("-n", RELEASE_NAMESPACE, "get", "pods", "-l", f"app.kubernetes.io/name={RELEASE}")["items"]:
        for status in pod["status"].get("containerStatuses", []):
            assert status["imageID"] == image, status["imageID"]


def test_the_image_prints_the_released_version_and_commit(kubectl: Kubectl) -> None:
    release = released()
    pod = kubectl.json("-n", RELEASE_NAMESPACE, "get", "pods", "-l", f"app.kubernetes.io/name={RELEASE}")["items"][0]
    out = kubectl("-n", RELEASE_NAMESPACE, "exec", pod["metadata"]["name"], "-c",
                  pod["spec"]["containers"][0]["name"], "--", "/webhook", "version")
    assert out.split()[0] == release["version"]
    assert "(commit " in out


def test_both_replicas_are_ready_as_the_chart_runs_them(kubectl: Kubectl) -> None:
    deployment = kubectl.json("-n", RELEASE_NAMESPACE, "get", "deployment", RELEASE)
    assert deployment["status"].get("readyReplicas") == 2 == deployment["spec"]["replicas"]
    pods = kubectl.json("-n", RELEASE_NAMESPACE, "get", "pods", "-l", f"app.kubernetes.io/name={RELEASE}")["items"]
    # Replicas of an earlier rollout may still be terminating (their shutdown delay): not counted.
    running = [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    assert len(running) == 2
    for pod in running:
        container = pod["spec"]["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["runAsUser"] == 65532
        assert all(s["ready"] for s in pod["status"]["containerStatuses"])
    endpoints = kubectl.json("-n", RELEASE_NAMESPACE, "get", "endpoints", RELEASE)
    addresses = [a["ip"] for s in endpoints.get("subsets", []) for a in s.get("addresses", [])]
    assert sorted(addresses) == sorted(p["status"]["podIP"] for p in running)


def test_the_self_managed_certificate_is_trusted_by_the_webhook_configuration(kubectl: Kubectl) -> None:
    secret = kubectl.json("-n", RELEASE_NAMESPACE, "get", "secret", f"{RELEASE}-tls")
    serving = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    assert f"{RELEASE}.{RELEASE_NAMESPACE}.svc" in names
    configuration = kubectl.json("get", "mutatingwebhookconfiguration", RELEASE)
    bundle = base64.b64decode(configuration["webhooks"][0]["clientConfig"]["caBundle"])
    with tempfile.NamedTemporaryFile(suffix=".pem") as ca:
        ca.write(bundle)
        ca.flush()
        context = ssl.create_default_context(cafile=ca.name)
    # The serving certificate chains to a CA of the caBundle (the API server's own check).
    issuers = {c.subject for c in x509.load_pem_x509_certificates(bundle)}
    assert serving.issuer in issuers and context.cert_store_stats()["x509_ca"] >= 1


def test_a_deployment_gets_running_pods_that_read_the_projected_token_as_non_root(
        kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "app", "namespace": namespace,
                      "annotations": {"eks.amazonaws.com/role-arn": ROLE_ARN}}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app", "namespace": namespace},
         "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "app"}},
                  "template": {"metadata": {"labels": {"app": "app"}}, "spec": {
                      "serviceAccountName": "app",
                      "securityContext": {"runAsNonRoot": True, "runAsUser": WORKLOAD_UID,
                                          "runAsGroup": WORKLOAD_UID},
                      "terminationGracePeriodSeconds": 1,
                      "containers": [{"name": "app", "image": IMAGE, "imagePullPolicy": "Never",
                                      "command": ["python3", "-c", READ_TOKEN],
                                      "securityContext": {"allowPrivilegeEscalation": False,
                                                          "readOnlyRootFilesystem": True}}]}}}},
    )
    kubectl("-n", namespace, "rollout", "status", "deployment/app", "--timeout=180s", timeout=200)
    pods = kubectl.json("-n", namespace, "get", "pods", "-l", "app=app")["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    assert len(running) == 2
    issuer = json.loads(kubectl("get", "--raw", "/.well-known/openid-configuration"))["issuer"]
    for pod in running:
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["AWS_ROLE_ARN"] == ROLE_ARN
        report = _first_json_line(kubectl, namespace, pod["metadata"]["name"])
        assert report["uid"] == WORKLOAD_UID
        assert report["path"] == env["AWS_WEB_IDENTITY_TOKEN_FILE"]
        assert report["role_arn"] == ROLE_ARN
        # The kubelet gives the token file to the pod's user, readable by it alone.
        assert (report["mode"], report["owner"]) == ("0o600", WORKLOAD_UID)
        assert report["aud"] == ["sts.amazonaws.com"]
        assert report["sub"] == f"system:serviceaccount:{namespace}:app"
        assert report["iss"] == issuer


def _first_json_line(kubectl: Kubectl, namespace: str, pod: str) -> dict:
    """The container's report, read through the API server's log endpoint (kubelet → container)."""
    for _ in range(60):
        out = kubectl("-n", namespace, "logs", pod, check=False)
        for line in out.splitlines():
            if line.startswith("{"):
                return json.loads(line)
        subprocess.run(["sleep", "1"], check=False)
    raise AssertionError(f"{namespace}/{pod} printed no report: {out!r}")
