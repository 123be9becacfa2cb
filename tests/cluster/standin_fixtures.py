"""The AWS stand-ins (tests/cluster/standins) as processes on this host's addresses on kind's
network, which pods reach through their node, for the IRSA and Pod Identity scenarios."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .conftest import STATE, cluster

STANDINS = Path(__file__).resolve().parent / "standins"
_CLUSTER = cluster() if (STATE / "cluster.json").exists() else {}
# Where the STS stand-in listens: this host on kind's network (the name is the old harness's,
# whose stand-ins ran on its node's address).
NODE_IP = _CLUSTER.get("host_ip", "172.29.213.1")
AGENT_IP = _CLUSTER.get("agent_ip", "169.254.170.23")
ACCOUNT = "111122223333"
ISSUER = _CLUSTER.get("issuer", f"https://{NODE_IP}:6443")
ISSUER_HOST = ISSUER.removeprefix("https://")
STS_URL = f"https://{NODE_IP}:8443"
SDK_IMAGE = "localhost/aws-sdk-workload:dev"
# In every pod: the cluster CA, which signed the STS stand-in's certificate.
POD_CA_BUNDLE = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"


@dataclass
class Standin:
    """One stand-in process: its URL, config file and decision log."""

    proc: subprocess.Popen
    url: str
    config: Path
    log: Path

    def decisions(self) -> list[dict]:
        context = ssl.create_default_context(cafile=str(STATE / "pki" / "ca.crt"))
        with urllib.request.urlopen(f"{self.url}/_standin/decisions", context=context, timeout=5) as response:
            return json.loads(response.read())

    def write_config(self, data: object) -> None:
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.config)
        time.sleep(1.5)  # the stand-ins notice a changed file within a second

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def serving_pair(directory: Path, ip: str) -> tuple[Path, Path]:
    """A serving certificate for `ip`, signed by the cluster CA (which every pod trusts)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = x509.load_pem_x509_certificate((STATE / "pki" / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((STATE / "pki" / "ca.key").read_bytes(), None)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    crt, pem = directory / f"{ip}.crt", directory / f"{ip}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


def start(script: str, args: list[str], config: Path, log: Path, secret: str) -> Standin:
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, str(STANDINS / script), *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(os.environ, STANDIN_SECRET=secret))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if '"listening"' in line:
                return Standin(proc, json.loads(line)["url"], config, log)
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{script} did not start:\n{log.read_text(errors='replace')[-2000:]}")


def start_sts(directory: Path, secret: str, roles: dict) -> Standin:
    crt, key = serving_pair(directory, NODE_IP)
    config = directory / "sts.json"
    config.write_text(json.dumps({"account": ACCOUNT, "providers": {ISSUER: ["sts.amazonaws.com", "custom-audience"]},
                                  "roles": roles}))
    return start("sts.py", ["--listen", f"{NODE_IP}:8443", "--tls-cert", str(crt), "--tls-key", str(key),
                            "--ca-file", str(STATE / "pki" / "ca.crt"), "--config", str(config)],
                 config, directory / "sts.log", secret)


def start_agent(directory: Path, secret: str, associations: list[dict]) -> Standin:
    config = directory / "associations.json"
    config.write_text(json.dumps(associations))
    return start("pod_identity_agent.py", ["--listen", f"{AGENT_IP}:80", "--kubeconfig",
                                           str(STATE / "admin.kubeconfig"), "--associations", str(config)],
                 config, directory / "agent.log", secret)


def trust_policy(namespace: str, service_account: str, audience: str = "sts.amazonaws.com") -> dict:
    """What `pod-identity-injector trust-policy` would print: StringEquals on sub and aud."""
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow",
        "Principal": {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{ISSUER_HOST}"},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {"StringEquals": {f"{ISSUER_HOST}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                                       f"{ISSUER_HOST}:aud": audience}}}]}


def new_secret() -> str:
    return secrets.token_urlsafe(24)
