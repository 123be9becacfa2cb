"""The SDK side of the IRSA and Pod Identity scenarios: a pod running one AWS SDK's default chain."""

from __future__ import annotations

import json
import time

from .conftest import Kubectl
from .standin_fixtures import POD_CA_BUNDLE, SDK_IMAGE, STS_URL

# The SDKs of the workload image (tests/cluster/workload): each program uses its SDK's default
# credential chain and calls sts:GetCallerIdentity; `run.py SDK` runs it and prints the report.
SDKS = ("boto3", "go", "java", "js")
# What each SDK names the credential provider its chain used, by mode: boto3's `method`, Go's
# `Credentials.Source`, and the feature ids Java (`providerName()`, short codes) and JavaScript
# (`$source`, names) record for their user agents: Java's h,k are JavaScript's
# CREDENTIALS_ENV_VARS_STS_WEB_ID_TOKEN, CREDENTIALS_STS_ASSUME_ROLE_WEB_ID, and z is CREDENTIALS_HTTP.
PROVIDERS = {
    "web-identity": {"boto3": {"assume-role-with-web-identity"}, "go": {"WebIdentityCredentials"},
                     "java": {"h", "k"},
                     "js": {"CREDENTIALS_ENV_VARS_STS_WEB_ID_TOKEN", "CREDENTIALS_STS_ASSUME_ROLE_WEB_ID"}},
    "container-credentials": {"boto3": {"container-role"}, "go": {"CredentialsEndpointProvider"},
                              "java": {"z"}, "js": {"CREDENTIALS_HTTP"}},
}


def used_provider(report: dict, mode: str) -> bool:
    """Whether the report names the provider of `mode` (web-identity, container-credentials)."""
    return PROVIDERS[mode][report["sdk"]] <= set((report.get("provider") or "").split(","))


def refused(report: dict, code: str, status: str) -> bool:
    """An error answer from AWS: its code, or where the SDK keeps only the HTTP status (Java's
    default chain), that."""
    return report["ok"] is False and (report.get("code") == code or report.get("status") == status)


def sdk_pod(namespace: str, name: str, service_account: str, sdk: str = "boto3") -> dict:
    """A pod running `sdk`'s program under `service_account`, told only where the stand-ins are."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
        "spec": {"serviceAccountName": service_account, "terminationGracePeriodSeconds": 1,
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000},
                 "containers": [{
                     "name": "sdk", "image": SDK_IMAGE, "imagePullPolicy": "Never",
                     "command": ["python3", "/opt/sdk/run.py", sdk],
                     # Only what points the SDK at the stand-ins; the credentials come from the webhook.
                     # The CA in each SDK's way: AWS_CA_BUNDLE (boto3, Go; Java's program makes a
                     # trust store of it in /tmp), NODE_EXTRA_CA_CERTS (Node.js); the region in
                     # AWS_REGION too (Java and JavaScript read no AWS_DEFAULT_REGION).
                     "env": [{"name": "AWS_ENDPOINT_URL_STS", "value": STS_URL},
                             {"name": "AWS_CA_BUNDLE", "value": POD_CA_BUNDLE},
                             {"name": "NODE_EXTRA_CA_CERTS", "value": POD_CA_BUNDLE},
                             {"name": "AWS_REGION", "value": "us-east-1"},
                             {"name": "AWS_DEFAULT_REGION", "value": "us-east-1"}],
                     "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                     "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True},
                 }],
                 "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}]}}


def sdk_report(kubectl: Kubectl, namespace: str, pod: str, timeout: float = 150) -> dict:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = kubectl("-n", namespace, "logs", pod, check=False)
        for line in out.splitlines():
            if line.startswith("SDK "):
                return json.loads(line[4:])
        time.sleep(1)
    status = kubectl("-n", namespace, "get", "pod", pod, "-o", "jsonpath={.status}", check=False)
    raise AssertionError(f"{namespace}/{pod}: no SDK report: {out!r} {status}")
