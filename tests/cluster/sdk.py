"""The SDK side of the IRSA and Pod Identity scenarios: a pod running boto3's default chain."""

from __future__ import annotations

import json
import time

from .conftest import Kubectl
from .standin_fixtures import POD_CA_BUNDLE, SDK_IMAGE, STS_URL

# In the pod: which credential provider boto3's default chain picked, and what STS says we are.
PROGRAM = r"""
import base64, json, os, time
import boto3, botocore.exceptions
out = {"env": {k: v for k, v in os.environ.items() if k.startswith("AWS_")}}
path = os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE") or os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
if path:
    part = open(path).read().strip().split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    out["token"] = {k: claims[k] for k in ("aud", "sub", "iss", "exp", "iat")}
for attempt in range(30):
    try:
        session = boto3.Session()
        credentials = session.get_credentials()
        out["method"] = credentials.method if credentials else None
        identity = session.client("sts").get_caller_identity()
        out.update(ok=True, arn=identity["Arn"], account=identity["Account"])
        break
    except botocore.exceptions.ClientError as exc:
        out.update(ok=False, code=exc.response["Error"]["Code"], message=exc.response["Error"]["Message"])
        break
    except Exception as exc:  # the stand-in not up yet, say: try again
        out.update(ok=False, error=repr(exc))
        time.sleep(1)
print("SDK " + json.dumps(out), flush=True)
time.sleep(86400)
"""


def sdk_pod(namespace: str, name: str, service_account: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
        "spec": {"serviceAccountName": service_account, "terminationGracePeriodSeconds": 1,
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000},
                 "containers": [{
                     "name": "sdk", "image": SDK_IMAGE, "imagePullPolicy": "Never",
                     "command": ["python3", "-c", PROGRAM],
                     # Only what points the SDK at the stand-ins; the credentials come from the webhook.
                     "env": [{"name": "AWS_ENDPOINT_URL_STS", "value": STS_URL},
                             {"name": "AWS_CA_BUNDLE", "value": POD_CA_BUNDLE},
                             {"name": "AWS_DEFAULT_REGION", "value": "us-east-1"}],
                     "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True},
                 }]}}


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
