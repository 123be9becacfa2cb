"""Pod specs for the in-cluster scenarios: containers that report what the SDK would see."""

from __future__ import annotations

import json
import time

from .conftest import IMAGE, Kubectl

ROLE_ARN = "arn:aws:iam::111122223333:role/workload"
UID = 1000

# Prints one JSON line (token claims, file mode and owner, the AWS_* env), then sleeps unless
# told to exit: the same report from init containers, sidecars, Jobs and long-running pods.
REPORT = r"""
import base64, json, os, stat, sys, time
out = {"container": os.environ.get("CONTAINER_NAME"), "uid": os.getuid(),
       "env": {k: v for k, v in os.environ.items() if k.startswith("AWS_")}}
path = os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE")
if path:
    token = open(path).read().strip()
    part = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    info = os.stat(path)
    out.update(aud=claims["aud"], sub=claims["sub"], exp=claims["exp"], iat=claims["iat"],
               mode=oct(stat.S_IMODE(info.st_mode)), owner=info.st_uid)
print("REPORT " + json.dumps(out), flush=True)
if sys.argv[-1] != "exit":
    time.sleep(86400)
"""


def container(name: str, *, exit_after: bool = False, **extra: object) -> dict:
    return {"name": name, "image": IMAGE, "imagePullPolicy": "Never",
            "command": ["python3", "-c", REPORT, "exit" if exit_after else "stay"],
            "env": [{"name": "CONTAINER_NAME", "value": name}],
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}, **extra}


def pod_spec(service_account: str, containers: list[dict], **extra: object) -> dict:
    return {"serviceAccountName": service_account, "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID},
            "containers": containers, **extra}


def service_account(namespace: str, name: str, annotations: dict[str, str] | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
        "name": name, "namespace": namespace,
        "annotations": {"eks.amazonaws.com/role-arn": ROLE_ARN, **(annotations or {})}}}


def reports(kubectl: Kubectl, namespace: str, pod: str, containers: list[str], timeout: float = 120) -> dict[str, dict]:
    """Container name → its REPORT line, read through the API server's log endpoint."""
    found: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in containers:
            if name in found:
                continue
            for line in kubectl("-n", namespace, "logs", pod, "-c", name, check=False).splitlines():
                if line.startswith("REPORT "):
                    found[name] = json.loads(line[len("REPORT "):])
        if len(found) == len(containers):
            return found
        time.sleep(1)
    raise AssertionError(f"{namespace}/{pod}: no report from {sorted(set(containers) - set(found))}")


def wait_phase(kubectl: Kubectl, namespace: str, pod: str, phases: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = kubectl.json("-n", namespace, "get", "pod", pod)
        if obj["status"].get("phase") in phases:
            return obj
        time.sleep(1)
    raise AssertionError(f"{namespace}/{pod} not {phases} after {timeout:.0f} s: {obj['status']}")


def pods_of(kubectl: Kubectl, namespace: str, selector: str) -> list[dict]:
    return kubectl.json("-n", namespace, "get", "pods", "-l", selector)["items"]
