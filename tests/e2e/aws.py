"""Playing the kubelet and the AWS SDK for a mutated pod: its projected token written to a
file, botocore run with the pod's environment, JWT checks with the API server's keys."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .api import env_of, mounts_of, volume

# What an SDK in the pod does with its environment: find credentials, optionally ask STS who it is.
SDK_SCRIPT = """
import json, sys
import boto3
session = boto3.Session()
credentials = session.get_credentials()
frozen = credentials.get_frozen_credentials()
out = {"method": credentials.method, "access_key": frozen.access_key, "secret_key": frozen.secret_key,
       "token": frozen.token}
if "--caller-identity" in sys.argv:
    out["arn"] = session.client("sts").get_caller_identity()["Arn"]
print(json.dumps(out))
"""


def write_projected_token(root: Path, pod: dict, container: str, volume_name: str, token: str) -> Path:
    """Where the kubelet would put the token (under `root`): the container's mount of the
    volume, plus the path of the projection's serviceAccountToken source."""
    mount = mounts_of(pod, container)[volume_name]
    [source] = volume(pod, volume_name)["projected"]["sources"]
    path = root / mount["mountPath"].lstrip("/") / source["serviceAccountToken"]["path"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token)
    return path


def sdk_environment(pod: dict, container: str, root: Path, **extra: str) -> dict[str, str]:
    """The container's injected env with file paths moved under `root`, plus isolation from the
    host: no config files, no instance metadata, nothing but loopback."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name, value in env_of(pod, container).items():
        env[name] = str(root / value.lstrip("/")) if name.endswith("_TOKEN_FILE") else value
    env.update(extra)
    return env


async def run_sdk(env: dict[str, str], *, caller_identity: bool = False, timeout: float = 60) -> dict[str, Any]:
    args = [sys.executable, "-c", SDK_SCRIPT, *(["--caller-identity"] if caller_identity else [])]
    proc = await asyncio.create_subprocess_exec(*args, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"botocore failed ({proc.returncode}):\n{err.decode(errors='replace')[-3000:]}"
    return json.loads(out)


# -- JWT (RS256) with the API server's published keys -----------------------------------------
def b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwk_public_key(jwk: dict) -> rsa.RSAPublicKey:
    assert jwk["kty"] == "RSA", jwk
    n, e = (int.from_bytes(b64url(jwk[k]), "big") for k in ("n", "e"))
    return rsa.RSAPublicNumbers(e, n).public_key()


def verify_jwt(token: str, jwks: dict) -> tuple[dict, dict]:
    """Header and claims of an RS256 JWT whose signature one of the JWKS keys verifies (else
    cryptography's InvalidSignature, or AssertionError when no key matches the `kid`)."""
    header_b64, claims_b64, signature_b64 = token.split(".")
    header = json.loads(b64url(header_b64))
    assert header["alg"] == "RS256", header
    keys = [k for k in jwks["keys"] if k.get("kid") == header.get("kid")]
    assert keys, f"no key with kid {header.get('kid')!r} in the JWKS"
    jwk_public_key(keys[0]).verify(b64url(signature_b64), f"{header_b64}.{claims_b64}".encode(),
                                   padding.PKCS1v15(), hashes.SHA256())
    return header, json.loads(b64url(claims_b64))
