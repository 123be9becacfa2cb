#!/usr/bin/env python3
"""An EKS Pod Identity Agent stand-in (the agent and the EKS Auth service behind it) for the
in-cluster scenarios. Test-only.

`GET /v1/credentials` with the pod's projected token as the raw `Authorization` header (what
botocore's container provider sends from AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE). Like the agent it
checks the address it was called on and that the token is a parseable, unexpired JWT; like EKS Auth
it has the token reviewed by the cluster (a real TokenReview with audience pods.eks.amazonaws.com,
as the cluster admin of --kubeconfig), requires `authenticated`, the audience and a
`system:serviceaccount:NS:SA` user, and looks (NS, SA) up in the associations file. Then it answers
like the agent: 200 JSON {"AccessKeyId", "SecretAccessKey", "Token", "AccountId", "Expiration"}.

Errors are shaped like the agent's (it answers with Go's http.Error: a text/plain body, one line):
the agent's own checks give "Access Denied. …" (403) or "Service account token …" (400); failures
of the service behind it give "[REQUEST-ID]: (Code): message, fault: client" with EKS Auth's status
for that code (InvalidTokenException 400, ExpiredTokenException 400, ResourceNotFoundException 404;
InternalServerException 500, fault: server).

Credentials are minted with the --secret shared with the STS stand-in (scheme in standin_common.py),
so GetCallerIdentity at the STS stand-in accepts them. Every decision is one JSON line on stderr
and an entry of GET /_standin/decisions.

    python tests/cluster/standins/pod_identity_agent.py [--listen 169.254.170.23:80]
        --kubeconfig ADMIN.kubeconfig --associations ASSOCIATIONS.json [--secret S]
        [--cluster-name local] [--duration 21600] [--allowed-host H ...]

ASSOCIATIONS: [{"namespace": "demo", "serviceAccount": "app",
                "roleArn": "arn:aws:iam::111122223333:role/app"}]  (read again when it changes)
"""

from __future__ import annotations

import argparse
import atexit
import base64
import json
import os
import re
import ssl
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin_common import (
    CredentialIssuer,
    DecisionLog,
    WatchedJSON,
    b64url_decode,
    host_port,
    iso8601,
    log_line,
    serve,
    stable_id,
)

AUDIENCE = "pods.eks.amazonaws.com"
AGENT_HOSTS = ["169.254.170.23", "fd00:ec2::23"]
SERVICE_ACCOUNT_USER = re.compile(r"system:serviceaccount:([^:]+):([^:]+)")
ROLE_ARN = re.compile(r"arn:aws:iam::(\d{12}):role/(?:[^/]+/)*([\w+=,.@-]+)")


class AgentError(Exception):
    def __init__(self, status: int, body: str, reason: str | None = None) -> None:
        super().__init__(body)
        self.status, self.body, self.reason = status, body, reason or body


def service_error(code: str, message: str, status: int, fault: str = "client") -> AgentError:
    """How the agent passes on an error of the EKS Auth service."""
    return AgentError(status, f"[{uuid.uuid4()}]: ({code}): {message}, fault: {fault}", message)


def text_error(err: AgentError) -> web.Response:
    """Go's http.Error: the message and a newline, as text/plain."""
    return web.Response(status=err.status, text=err.body + "\n", charset="utf-8", content_type="text/plain",
                        headers={"X-Content-Type-Options": "nosniff"})


def parse_associations(raw: Any) -> dict[tuple[str, str], str]:
    if not isinstance(raw, list):
        raise ValueError("associations must be a JSON list")
    table: dict[tuple[str, str], str] = {}
    for item in raw:
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str)
                                                 for k in ("namespace", "serviceAccount", "roleArn")):
            raise ValueError(f"an association needs namespace, serviceAccount and roleArn strings: {item!r}")
        if not ROLE_ARN.fullmatch(item["roleArn"]):
            raise ValueError(f"not a role ARN: {item['roleArn']!r}")
        table[(item["namespace"], item["serviceAccount"])] = item["roleArn"]
    return table


class Kubeconfig:
    """What a TokenReview needs from a kubeconfig: the server, its CA, the client certificate."""

    def __init__(self, path: Path) -> None:
        text = path.read_text()
        try:
            config = json.loads(text)
        except ValueError:
            import yaml  # a YAML kubeconfig; the project's venv has PyYAML

            config = yaml.safe_load(text)
        contexts = {c["name"]: c["context"] for c in config.get("contexts", [])}
        context = contexts[config["current-context"]]
        cluster = {c["name"]: c["cluster"] for c in config["clusters"]}[context["cluster"]]
        user = {u["name"]: u["user"] for u in config["users"]}[context["user"]]
        self.server = cluster["server"].rstrip("/")
        base = path.parent
        self.ssl = ssl.create_default_context(cafile=self._file(cluster, "certificate-authority", base))
        cert, key = self._file(user, "client-certificate", base), self._file(user, "client-key", base)
        if cert and key:
            self.ssl.load_cert_chain(cert, key)
        self.token = user.get("token")

    @staticmethod
    def _file(section: dict[str, Any], name: str, base: Path) -> str | None:
        if section.get(f"{name}-data"):
            fd, tmp = tempfile.mkstemp(prefix="standin-kubeconfig-")
            os.write(fd, base64.b64decode(section[f"{name}-data"]))
            os.close(fd)
            atexit.register(os.unlink, tmp)
            return tmp
        if section.get(name):
            return str(base / section[name])
        return None


class AgentStandin:
    def __init__(self, kubeconfig: Kubeconfig, associations: WatchedJSON, issuer: CredentialIssuer, *,
                 cluster_name: str, duration: int, allowed_hosts: list[str]) -> None:
        self.kube, self.associations, self.issuer = kubeconfig, associations, issuer
        self.cluster_name, self.duration, self.allowed_hosts = cluster_name, duration, allowed_hosts
        self.decisions = DecisionLog()

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([*self.decisions.routes(), web.get("/v1/credentials", self.credentials)])
        return app

    async def credentials(self, request: web.Request) -> web.Response:
        entry: dict[str, Any] = {"action": "GetCredentials", "client": request.remote}
        try:
            body = await self._credentials(request, entry)
        except AgentError as err:
            self.decisions.record(**entry, verdict="deny", status=err.status, reason=err.reason)
            return text_error(err)
        self.decisions.record(**entry, verdict="allow", access_key_id=body["AccessKeyId"])
        return web.json_response(body)

    async def _credentials(self, request: web.Request, entry: dict[str, Any]) -> dict[str, Any]:
        host = request.host  # the Host header: drop the port, and the brackets of an IPv6 address
        if host.startswith("[") and "]" in host:
            host = host[1:host.index("]")]
        elif host.count(":") == 1:
            host = host.split(":")[0]
        if host not in self.allowed_hosts:
            raise AgentError(403, "Access Denied. Called agent through invalid address, please use either "
                             f"[{' '.join(self.allowed_hosts)}] address not {host}")
        token = request.headers.get("Authorization", "")
        if not token:
            raise AgentError(400, "Service account token cannot be empty")
        self._basic_claims(token, entry)
        review = await self._review(token)
        status = review.get("status") or {}
        if not status.get("authenticated"):
            why = status.get("error") or "not authenticated"
            raise service_error("InvalidTokenException", f"Failed to validate the service account token: {why}", 400)
        if AUDIENCE not in (status.get("audiences") or []):
            raise service_error("InvalidTokenException",
                                f"Token audiences {status.get('audiences')!r} do not include {AUDIENCE}", 400)
        username = (status.get("user") or {}).get("username", "")
        entry["user"] = username
        match = SERVICE_ACCOUNT_USER.fullmatch(username)
        if not match:
            raise service_error("InvalidTokenException", f"{username!r} is not a service account", 400)
        namespace, service_account = match.groups()
        extra = (status.get("user") or {}).get("extra") or {}
        pod = (extra.get("authentication.kubernetes.io/pod-name") or [None])[0]
        entry.update(namespace=namespace, serviceAccount=service_account, pod=pod)
        role_arn = self.associations.current().get((namespace, service_account))
        if role_arn is None:
            raise service_error("ResourceNotFoundException",
                                f"No Pod Identity association found for service account {service_account} in "
                                f"namespace {namespace} of cluster {self.cluster_name}", 404)
        entry["role"] = role_arn
        account, role_name = ROLE_ARN.fullmatch(role_arn).groups()  # type: ignore[union-attr]
        session = f"eks-{self.cluster_name}-{pod or service_account}-{uuid.uuid4()}"[:64].rstrip("-")
        creds = self.issuer.mint(arn=f"arn:aws:sts::{account}:assumed-role/{role_name}/{session}",
                                 user_id=f"{stable_id('AROA', role_arn)}:{session}", account=account,
                                 lifetime=self.duration)
        return {"AccessKeyId": creds.access_key_id, "SecretAccessKey": creds.secret_access_key,
                "Token": creds.session_token, "AccountId": account, "Expiration": iso8601(creds.expiration)}

    @staticmethod
    def _basic_claims(token: str, entry: dict[str, Any]) -> None:
        """The agent's own look at the token before it goes to the service: three segments, JSON
        claims, not expired (nothing verified yet: the TokenReview does that)."""
        parts = token.split(".")
        if len(parts) != 3:
            raise AgentError(400, "Service account token cannot be parsed: token is malformed: "
                             "token contains an invalid number of segments")
        try:
            claims = json.loads(b64url_decode(parts[1]))
            if not isinstance(claims, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            raise AgentError(400, "Service account token cannot be parsed: token is malformed: "
                             "could not JSON decode claim") from None
        entry.update(sub=claims.get("sub"), aud=claims.get("aud"))
        exp = claims.get("exp")
        if isinstance(exp, int | float) and time.time() >= exp:
            raise AgentError(400, "Service account token failed basic claim validations: token has invalid "
                             "claims: token is expired")

    async def _review(self, token: str) -> dict[str, Any]:
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                  "spec": {"token": token, "audiences": [AUDIENCE]}}
        headers = {"Authorization": f"Bearer {self.kube.token}"} if self.kube.token else {}
        url = f"{self.kube.server}/apis/authentication.k8s.io/v1/tokenreviews"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
                    session.post(url, json=review, ssl=self.kube.ssl, headers=headers) as resp:
                if resp.status not in (200, 201):
                    raise service_error("InternalServerException",
                                        f"TokenReview answered {resp.status}: {(await resp.text())[:200]}", 500,
                                        fault="server")
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise service_error("InternalServerException", f"TokenReview failed: {type(exc).__name__}: {exc}",
                                500, fault="server") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=host_port, default=host_port("169.254.170.23:80"),
                        help="HOST:PORT (default 169.254.170.23:80; port 0: any free port)")
    parser.add_argument("--kubeconfig", type=Path, required=True, help="admin kubeconfig for the TokenReviews")
    parser.add_argument("--associations", type=Path, required=True,
                        help='JSON list of {"namespace", "serviceAccount", "roleArn"}')
    parser.add_argument("--secret", help="credentials secret shared with the STS stand-in (or STANDIN_SECRET)")
    parser.add_argument("--cluster-name", default="local")
    parser.add_argument("--duration", type=int, default=21600, help="credential lifetime, seconds (EKS: 6 h)")
    parser.add_argument("--allowed-host", action="append", default=None,
                        help="address the agent may be called on (default: the listen host, 169.254.170.23, "
                             "fd00:ec2::23)")
    args = parser.parse_args(argv)
    secret = args.secret or os.environ.get("STANDIN_SECRET")
    if not secret:
        parser.error("--secret (or STANDIN_SECRET) is needed: the STS stand-in verifies the credentials with it")
    try:
        kubeconfig = Kubeconfig(args.kubeconfig)
    except (OSError, ValueError, KeyError, ssl.SSLError) as exc:
        parser.error(f"--kubeconfig {args.kubeconfig}: {type(exc).__name__}: {exc}")
    try:
        associations = WatchedJSON(args.associations, parse_associations)
    except (OSError, ValueError) as exc:
        parser.error(f"--associations {args.associations}: {exc}")
    allowed = args.allowed_host or list(dict.fromkeys([args.listen[0], *AGENT_HOSTS]))
    standin = AgentStandin(kubeconfig, associations, CredentialIssuer(secret), cluster_name=args.cluster_name,
                           duration=args.duration, allowed_hosts=allowed)
    log_line({"event": "config", "standin": "pod-identity-agent", "api_server": kubeconfig.server,
              "allowed_hosts": allowed})
    return serve(standin.app(), args.listen, "pod-identity-agent")


if __name__ == "__main__":
    sys.exit(main())
