"""The Go webhook in the cluster, from its own deploy/ manifests (tools/go-webhook/build.sh: its
Go module at the pinned version, its image built offline), for the migration scenarios.

Harness needs sit in the first two functions, so that another cluster harness ports them alone:
`load_image` (here: `tools/kind/cluster.py load`, kind's `load image-archive`) and
`certificate_objects` (here: with no cert-manager in the cluster, the Secret and caBundle that
cert-manager would make from the manifests' Certificate)."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import yaml

from injector.certificates.authority import cert_to_pem, generate_ca, generate_serving_cert, key_to_pem

from .conftest import Kubectl

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "tools" / "go-webhook" / "build.sh"
NAME, NAMESPACE = "pod-identity-webhook", "default"  # as the manifests name them
# Kinds that need cert-manager; `certificate_objects` stands in for them while it is not installed.
CERT_MANAGER_KINDS = {"ClusterIssuer", "Certificate"}


def load_image(archive: str) -> None:
    """Make the image of `archive` (a `docker save`) available to the node without a registry."""
    subprocess.run([sys.executable, str(REPO / "tools" / "kind" / "cluster.py"), "load", archive], check=True,
                   capture_output=True, timeout=300)


def certificate_objects(documents: list[dict]) -> tuple[list[dict], str]:
    """The manifests without cert-manager's objects, the Secret their Certificate names, and the
    caBundle its CA injector would write (base64 PEM)."""
    (certificate,) = [d for d in documents if d["kind"] == "Certificate"]
    ca, ca_key = generate_ca("go-webhook-test-ca")
    cert, key = generate_serving_cert(ca, ca_key, certificate["spec"]["dnsNames"], [])
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": certificate["spec"]["secretName"], "namespace": NAMESPACE},
              "data": {"tls.crt": base64.b64encode(cert_to_pem(cert)).decode(),
                       "tls.key": base64.b64encode(key_to_pem(key)).decode()}}
    kept = [d for d in documents if d["kind"] not in CERT_MANAGER_KINDS]
    return [secret, *kept], base64.b64encode(cert_to_pem(ca)).decode()


def build() -> tuple[str, Path]:
    """(image archive, deploy/ directory of the pinned module)."""
    archive = subprocess.run(["bash", str(BUILD)], check=True, capture_output=True, text=True, timeout=1800)
    deploy = subprocess.run(["bash", str(BUILD), "--deploy"], check=True, capture_output=True, text=True, timeout=300)
    return archive.stdout.strip(), Path(deploy.stdout.strip())


def image_of(archive: str) -> str:
    return "localhost/go-pod-identity-webhook:" + Path(archive).parent.name


def published(deploy: Path, image: str) -> list[dict]:
    """The deploy/ manifests exactly as the Go project's Makefile applies them: IMAGE replaced."""
    documents = [d for f in sorted(deploy.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    for document in documents:
        if document["kind"] == "Deployment":
            for container in document["spec"]["template"]["spec"]["containers"]:
                assert container["image"] == "IMAGE"
                container["image"] = image
    return documents


def manifests(deploy: Path, image: str) -> list[dict]:
    """`published`, with the image already on the node (no pull: it is in no registry) and
    cert-manager's part done by `certificate_objects`."""
    documents = published(deploy, image)
    for document in documents:
        if document["kind"] == "Deployment":
            for container in document["spec"]["template"]["spec"]["containers"]:
                container["imagePullPolicy"] = "IfNotPresent"
    documents, ca_bundle = certificate_objects(documents)
    for document in documents:
        if document["kind"] == "MutatingWebhookConfiguration":
            document["metadata"].get("annotations", {}).pop("cert-manager.io/inject-ca-from", None)
            for hook in document["webhooks"]:
                hook["clientConfig"]["caBundle"] = ca_bundle
    return documents


def install(kubectl: Kubectl, documents: list[dict]) -> None:
    kubectl.apply(*documents)
    kubectl("-n", NAMESPACE, "rollout", "status", f"deployment/{NAME}", "--timeout=180s", timeout=190)


def remove(kubectl: Kubectl) -> None:
    """The configuration first, so that no call goes to a webhook that is going away."""
    kubectl("delete", "mutatingwebhookconfiguration", NAME, "--ignore-not-found")
    for kind in ("deployment", "service", "secret/pod-identity-webhook-cert", "serviceaccount", "role", "rolebinding"):
        target = [kind] if "/" in kind else [kind, NAME]
        kubectl("-n", NAMESPACE, "delete", *target, "--ignore-not-found", "--wait=false")
    kubectl("delete", "clusterrole", NAME, "--ignore-not-found")
    kubectl("delete", "clusterrolebinding", NAME, "--ignore-not-found")
    kubectl("-n", NAMESPACE, "delete", "certificate", NAME, "--ignore-not-found", check=False)
    kubectl("delete", "clusterissuer", "selfsigned", "--ignore-not-found", check=False)
