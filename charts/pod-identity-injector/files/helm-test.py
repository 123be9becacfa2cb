"""`helm test`: a server-side dry-run pod that uses an annotated ServiceAccount must come back
mutated (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE and the projected token volume).

The same request as `kubectl create --dry-run=server -f pod.yaml`: the API server runs the
whole admission chain, this webhook included, and returns the pod without storing it.
Standard library only, so any image with python3 runs it. Configured by environment:
TARGET_NAMESPACE, TARGET_SERVICE_ACCOUNT, EXPECTED_ROLE_ARN, EXPECTED_AUDIENCE, IMAGE,
CHECKS (JSON list of {"name", "labels"}), TIMEOUT_SECONDS.
"""

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def api_url(path):
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{os.environ['KUBERNETES_SERVICE_PORT']}{path}"


def opener():
    context = ssl.create_default_context(cafile=f"{SA_DIR}/ca.crt")
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))


def probe_pod(labels):
    restricted = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "pod-identity-injector-test-", "labels": labels},
        "spec": {
            "serviceAccountName": os.environ["TARGET_SERVICE_ACCOUNT"],
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "probe", "image": os.environ["IMAGE"], "command": ["true"],
                            "securityContext": restricted}],
        },
    }


def dry_run(labels):
    namespace = os.environ["TARGET_NAMESPACE"]
    with open(f"{SA_DIR}/token") as handle:
        token = handle.read().strip()
    request = urllib.request.Request(
        api_url(f"/api/v1/namespaces/{namespace}/pods?dryRun=All&fieldManager=pod-identity-injector-test"),
        data=json.dumps(probe_pod(labels)).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                 "Accept": "application/json"},
    )
    with opener().open(request, timeout=30) as response:
        return json.load(response)


def problems(pod):
    found = []
    role, audience = os.environ["EXPECTED_ROLE_ARN"], os.environ["EXPECTED_AUDIENCE"]
    for container in pod["spec"]["containers"]:
        env = {item["name"]: item.get("value") for item in container.get("env") or []}
        if env.get("AWS_ROLE_ARN") != role:
            found.append(f"container {container['name']}: AWS_ROLE_ARN is {env.get('AWS_ROLE_ARN')!r}, want {role!r}")
        if not env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
            found.append(f"container {container['name']}: no AWS_WEB_IDENTITY_TOKEN_FILE")
    audiences = [
        source["serviceAccountToken"].get("audience")
        for volume in pod["spec"].get("volumes") or []
        for source in (volume.get("projected") or {}).get("sources") or []
        if "serviceAccountToken" in source
    ]
    if audience not in audiences:
        found.append(f"no projected token with audience {audience!r} (audiences: {audiences})")
    return found


def run_check(name, labels, deadline):
    attempt = 0
    while True:
        attempt += 1
        try:
            found = problems(dry_run(labels))
        except urllib.error.HTTPError as exc:
            found = [f"HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}"]
        except (OSError, ValueError, KeyError) as exc:
            found = [f"{type(exc).__name__}: {exc}"]
        if not found:
            print(f"ok: {name}: dry-run pod mutated (attempt {attempt})", flush=True)
            return True
        print(f"{name}: attempt {attempt}: " + "; ".join(found), flush=True)
        if time.monotonic() >= deadline:
            return False
        time.sleep(2)


def main():
    deadline = time.monotonic() + float(os.environ.get("TIMEOUT_SECONDS", "60"))
    checks = json.loads(os.environ.get("CHECKS") or '[{"name": "default", "labels": {}}]')
    results = [run_check(check["name"], check.get("labels") or {}, deadline) for check in checks]
    if all(results):
        print("PASS: the webhook injects credentials")
        return 0
    print("FAIL: the webhook did not inject credentials; see `kubectl logs` of the webhook pods")
    return 1


if __name__ == "__main__":
    sys.exit(main())
