"""boto3 as a workload uses it: the default credential chain, configured only by the environment
(what the webhook injects, plus the endpoint, CA and region the test sets), then
sts:GetCallerIdentity. Prints one JSON line, the report tests/cluster/sdk.py reads."""

import json

import boto3
import botocore.exceptions

report = {"sdk": "boto3", "ok": False}
try:
    session = boto3.Session()
    credentials = session.get_credentials()
    report["provider"] = credentials.method if credentials else None
    identity = session.client("sts").get_caller_identity()
    report.update(ok=True, arn=identity["Arn"], account=identity["Account"])
except botocore.exceptions.ClientError as exc:
    error = exc.response["Error"]
    report.update(error=str(exc), code=error["Code"], message=error["Message"])
except Exception as exc:  # reported, and the runner tries again
    report["error"] = repr(exc)
print(json.dumps(report), flush=True)
