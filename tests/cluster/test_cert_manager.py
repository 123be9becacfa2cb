"""`certificates.mode=certManager` with a real cert-manager (tools/cert-manager: built from its
module, installed from its own chart): cert-manager issues the serving certificate and its CA
injector fills the caBundle; `helm test` passes; deleting the TLS Secret under load leaves no pod
without credentials. Once with the chart's own issuer chain, once with an existing ClusterIssuer."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import load
from .conftest import RELEASE, RELEASE_NAMESPACE, Kubectl
from .test_chart_lifecycle import CHART, IMAGE_VALUES

REPO = Path(__file__).resolve().parents[2]
PODS, RATE, FAULT_AT = 150, 5, 5.0  # 30 s of pods, the Secret deleted 5 s in: bounded
ISSUER = "test-ca"  # an existing ClusterIssuer, as an admin would already have


def load_image_command() -> str:
    """How this harness loads an image archive into the node (no registry): kind's own."""
    return f"{sys.executable} {REPO / 'tools' / 'kind' / 'cluster.py'} load"


def ensure_cert_manager(kubectl: Kubectl) -> None:
    """cert-manager as `make cluster-up CERT_MANAGER=1` installs it (tools/cert-manager/install.sh)."""
    if kubectl("get", "deployment", "-n", "cert-manager", "-o", "name", check=False).count("deployment") >= 3:
        return
    env = dict(kubectl.env, LOAD_IMAGE=load_image_command(), HELM=kubectl.helm_binary)
    result = subprocess.run(["bash", str(REPO / "tools" / "cert-manager" / "install.sh")], env=env,
                            capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, f"cert-manager did not install (make cluster-up CERT_MANAGER=1): {result.stderr}"


def existing_issuer() -> list[dict]:
    """A CA ClusterIssuer whose root a self-signed ClusterIssuer made: what a cluster already has."""
    return [
        {"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer", "metadata": {"name": "test-selfsigned"},
         "spec": {"selfSigned": {}}},
        {"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
         "metadata": {"name": "test-root", "namespace": "cert-manager"},
         "spec": {"isCA": True, "commonName": "test-root", "secretName": "test-root",
                  "privateKey": {"algorithm": "RSA", "size": 2048},
                  "issuerRef": {"name": "test-selfsigned", "kind": "ClusterIssuer", "group": "cert-manager.io"}}},
        {"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer", "metadata": {"name": ISSUER},
         "spec": {"ca": {"secretName": "test-root"}}},
    ]


@pytest.fixture(params=["chart-issuer", "existing-issuer"])
def cert_manager_mode(request, kubectl: Kubectl) -> Iterator[str]:
    """The release switched to certManager mode (the chart's issuer, or an existing one), ready;
    the default install again afterwards."""
    ensure_cert_manager(kubectl)
    values = ["--set", "certificates.mode=certManager"]
    if request.param == "existing-issuer":
        kubectl.apply(*existing_issuer())
        kubectl("wait", "--for=condition=Ready", f"clusterissuer/{ISSUER}", "--timeout=120s", timeout=130)
        values += ["--set", f"certificates.certManager.issuerRef.name={ISSUER}",
                   "--set", "certificates.certManager.issuerRef.kind=ClusterIssuer",
                   "--set", "certificates.certManager.issuerRef.group=cert-manager.io"]
    try:
        kubectl.helm("upgrade", RELEASE, CHART, "-n", RELEASE_NAMESPACE, "--reuse-values", *values,
                     "--wait", "--timeout", "5m", timeout=320)
        kubectl("-n", RELEASE_NAMESPACE, "wait", "--for=condition=Ready", f"certificate/{RELEASE}",
                "--timeout=180s", timeout=190)
        yield request.param
    finally:
        kubectl.helm("upgrade", RELEASE, CHART, "-n", RELEASE_NAMESPACE, "--reset-values", *IMAGE_VALUES,
                     "--wait", "--timeout", "5m", timeout=320)
        # cert-manager's Secret outlives its Certificate, and the chart does not adopt a Secret it
        # did not make (a later install would refuse it): gone, the next upgrade renders the chart's.
        kubectl("-n", RELEASE_NAMESPACE, "delete", "secret", f"{RELEASE}-tls", "--ignore-not-found")
        # So does the CA Secret of the chart's own issuer chain (cert-manager sets no owner on it).
        kubectl("-n", RELEASE_NAMESPACE, "delete", "secret", f"{RELEASE}-ca", "--ignore-not-found")
        kubectl.helm("upgrade", RELEASE, CHART, "-n", RELEASE_NAMESPACE, "--reset-values", *IMAGE_VALUES,
                     "--wait", "--timeout", "5m", timeout=320)
        if request.param == "existing-issuer":
            for kind, name in (("clusterissuer", ISSUER), ("clusterissuer", "test-selfsigned")):
                kubectl("delete", kind, name, "--ignore-not-found", check=False)
            kubectl("-n", "cert-manager", "delete", "certificate,secret", "test-root", "--ignore-not-found",
                    check=False)


def test_cert_manager_issues_and_injects_helm_test_passes_and_a_deleted_secret_loses_no_pod(
        kubectl: Kubectl, namespace: str, cert_manager_mode: str) -> None:
    configuration = kubectl.json("get", "mutatingwebhookconfiguration", RELEASE)
    injected_from = configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert injected_from == f"{RELEASE_NAMESPACE}/{RELEASE}"
    assert all(hook["clientConfig"].get("caBundle") for hook in configuration["webhooks"])
    out = kubectl.helm("test", RELEASE, "-n", RELEASE_NAMESPACE, "--logs", "--timeout", "5m", timeout=320)
    assert "Succeeded" in out, out

    kubectl.apply(load.service_account(namespace), load.deployment(namespace))
    probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "probe-", "namespace": namespace},
             "spec": load.deployment(namespace)["spec"]["template"]["spec"]}
    kubectl.wait_mutated(probe, '"AWS_ROLE_ARN"', "the webhook never mutated a probe pod")
    secret = kubectl.json("-n", RELEASE_NAMESPACE, "get", "certificate", RELEASE)["spec"]["secretName"]

    def fault() -> None:
        kubectl("-n", RELEASE_NAMESPACE, "delete", "secret", secret)

    started = time.monotonic()
    load.ramp(kubectl, namespace, total=PODS, per_second=RATE, fault_at=FAULT_AT, fault=fault)
    created, unmutated = load.count_pods(kubectl, namespace)
    reissued = kubectl("-n", RELEASE_NAMESPACE, "get", "secret", secret, "-o", "name", check=False)
    print(f"\ncertManager ({cert_manager_mode}), TLS Secret deleted: {created} pods, {len(unmutated)} without "
          f"credentials, {time.monotonic() - started:.0f} s", file=sys.stderr)
    assert created >= PODS
    assert unmutated == [], f"{len(unmutated)} of {created} pods without credentials: {unmutated[:10]}"
    assert reissued.strip(), "cert-manager did not issue the Secret again"
