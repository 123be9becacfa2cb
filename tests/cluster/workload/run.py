"""The entry point of the workload pods: `run.py SDK`, SDK one of PROGRAMS.

Prints what the pod was given (its AWS_* environment, the claims of the token the webhook
pointed it at) and the SDK program's report, merged into one line `SDK {json}`; then sleeps, so
that the pod stays for inspection (doctor). The program runs again, up to ATTEMPTS times, while it
has neither credentials nor an answer from AWS (an error code or HTTP status: a stand-in not
listening yet, say)."""

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
JAVA = HERE / "java" / "jre" / "bin" / "java"
PROGRAMS = {
    "boto3": [sys.executable, str(HERE / "python" / "main.py")],
    "go": [str(HERE / "go" / "aws-sdk-go-workload")],
    "java": [str(JAVA) if JAVA.exists() else "java", "-XX:-UsePerfData", "-Xshare:auto",
             "-cp", f"{HERE / 'java' / 'classes'}:{HERE / 'java' / 'lib'}/*", "Main"],
    "js": ["node", str(HERE / "js" / "main.mjs")],
}
ATTEMPTS = 30


def token_claims() -> dict | None:
    path = os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE") or os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
    if not path:
        return None
    part = Path(path).read_text().strip().split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return {k: claims.get(k) for k in ("aud", "sub", "iss", "exp", "iat")}


def run_program(sdk: str) -> dict:
    result = subprocess.run(PROGRAMS[sdk], capture_output=True, text=True, timeout=120, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"sdk": sdk, "ok": False, "error": f"exit {result.returncode}: {result.stderr[-2000:]}"}
    return json.loads(lines[-1])


def main(sdk: str) -> None:
    out = {"env": {k: v for k, v in os.environ.items() if k.startswith("AWS_")}, "token": token_claims()}
    for attempt in range(1, ATTEMPTS + 1):
        report = run_program(sdk) | {"attempts": attempt}
        if report.get("ok") or report.get("code") or report.get("status"):
            break
        time.sleep(1)
    print("SDK " + json.dumps(out | report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
    if "--exit" not in sys.argv:
        time.sleep(86400)
