"""`serve --workers 2` against a real kube-apiserver: one replica, one watch (issue #11).

A control plane of this module's own, with an audit log of every ServiceAccount request, so
that every request with our client's user agent is the replica's. The supervisor syncs, forks
one worker, then serves beside it as worker 0 and keeps watching for both (injector/server/processes.py,
injector/server/table_feed.py):

- the API server sees one sync (a watch-list, or one LIST where WatchList is off) and the watch
  resumed once by the supervisor after its fork, one watch open at a time, no other LIST, and
  nothing from the forked worker;
- a ServiceAccount annotated after start reaches both serving processes;
- a lookup that misses in the forked worker is fetched by the supervisor, once;
- in self-managed mode the supervisor alone issues the certificate and registers the caBundle,
  and both processes serve that certificate.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import api
from .plane import (
    SERVICE_ACCOUNT_AUDIT_POLICY,
    ControlPlane,
    Proc,
    binary_for_tests,
    external_kubeconfig,
    start_control_plane,
    webhook_audit_entries,
)
from .server_features import server_features
from .webhooks import spawn_serve
from serving import Server, pod_review, wait_ready

pytestmark = pytest.mark.skipif(bool(external_kubeconfig()), reason="needs a control plane of its own to count on")

NAMESPACE = "workers"
ROLE = "arn:aws:iam::111122223333:role/workers-{}"


@dataclass
class Replica:
    plane: ControlPlane
    proc: Proc
    server: Server
    audit_log: Path

    def post(self, path: str, body: dict) -> None:
        status, answer = self.plane.call("POST", path, body, timeout=30)
        assert status in (201, 409), answer

    def service_account(self, name: str, role: str | None = None) -> None:
        annotations = {"eks.amazonaws.com/role-arn": role} if role else {}
        self.post(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts",
                  {"metadata": {"name": name, "annotations": annotations}})

    def requests(self) -> dict[str, list[dict]]:
        """The replica's ServiceAccount requests (its client's user agent) by audit ID, each
        with the stages logged so far (ResponseStarted for a watch still open)."""
        found: dict[str, list[dict]] = {}
        for entry in webhook_audit_entries(self.audit_log):
            found.setdefault(entry["auditID"], []).append(entry)
        return found

    def answering_workers(self, service_account: str, uid: str) -> dict[int, bool]:
        """worker index → whether it mutated, from the admission log lines for `uid`."""
        seen = {}
        for line in self.proc.logs().splitlines():
            if uid in line:
                entry = json.loads(line)
                if entry.get("event") == "admission" and entry.get("service_account") == service_account:
                    seen[entry["worker"]] = entry["mutated"]
        return seen


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    tmp = tmp_path_factory.mktemp("workers")
    (tmp / "audit-policy.yaml").write_text(SERVICE_ACCOUNT_AUDIT_POLICY)
    plane = start_control_plane(binary_for_tests(), tmp / "plane", extra_flags=(
        f"--audit-policy-file={tmp / 'audit-policy.yaml'}", f"--audit-log-path={tmp / 'audit.log'}",
        "--audit-log-maxsize=0"))
    try:
        assert plane.call("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}}, timeout=30)[0] in (201, 409)
        proc, server = spawn_serve(plane, tmp, "workers-webhook", plane.kubeconfig, "--workers", "2",
                                   "--enable-debugging-handlers")
        replica = Replica(plane, proc, server, tmp / "audit.log")
        for index in range(50):
            replica.service_account(f"sa-{index}", ROLE.format(index) if index % 10 == 0 else None)
        wait_ready(server, 60)
        try:
            yield replica
        finally:
            assert proc.stop() == 0
            assert "Traceback" not in proc.logs()
    finally:
        plane.stop()


def admit_until_both_workers_mutated(replica: Replica, service_account: str, timeout: float = 20) -> set[int]:
    """Admit through the port (a fresh uid each round) until both workers have answered with
    a patch; returns the workers that did."""
    mutated: set[int] = set()
    deadline = time.monotonic() + timeout
    while mutated != {0, 1} and time.monotonic() < deadline:
        uid = f"workers-{service_account}-{time.monotonic_ns()}"
        for _ in range(10):
            status, _ = replica.server.review(pod_review(service_account=service_account, namespace=NAMESPACE,
                                                         uid=uid))
            assert status == 200
        time.sleep(0.1)  # the log lines of this round
        mutated |= {worker for worker, patched in replica.answering_workers(service_account, uid).items() if patched}
    return mutated


def test_the_api_server_sees_one_sync_and_one_watch_from_the_replica(replica):
    """One sync, as the server offers it (WatchList is on by default in 1.32 and from 1.34), then the
    supervisor's watch after its fork, resumed from a version: no get, nothing from a worker."""
    time.sleep(2)
    requests = replica.requests()
    open_watches = [entries for entries in requests.values()
                    if not any(entry["stage"] == "ResponseComplete" for entry in entries)]
    ordered = sorted(requests.values(), key=lambda entries: entries[0]["requestReceivedTimestamp"])
    uris = [entries[0]["requestURI"].replace("True", "true") for entries in ordered]
    assert len(open_watches) == 1, uris
    verbs = [entries[0]["verb"] for entries in ordered]
    if server_features(replica.plane.get).enabled("WatchList"):
        # The sync is a watch with initial events.
        assert verbs == ["watch", "watch"], uris
        assert "sendInitialEvents=true" in uris[0]
    else:
        # Asked for a watch with initial events once, refused; the sync is one LIST from the cache.
        # The watch the sync goes on to may have started before the fork stopped it.
        assert verbs[:2] == ["watch", "list"] and verbs[2:] in (["watch"], ["watch", "watch"]), uris
        assert "sendInitialEvents=true" in uris[0] and ordered[0][-1]["responseStatus"]["code"] == 422
        assert "resourceVersion=0" in uris[1]
    assert "resourceVersion=" in uris[-1] and "sendInitialEvents" not in uris[-1]


def test_a_service_account_annotated_after_start_reaches_both_workers(replica):
    replica.service_account("late", ROLE.format("late"))
    assert admit_until_both_workers_mutated(replica, "late") == {0, 1}


def test_a_miss_in_a_worker_is_fetched_once_by_the_supervisor(replica):
    replica.service_account("fetched", ROLE.format("fetched"))
    assert admit_until_both_workers_mutated(replica, "fetched") == {0, 1}  # known to both from the watch
    gets_before = sum(1 for entries in replica.requests().values() if entries[0]["verb"] == "get")
    replica.server.metrics("/debug/alpha/cache/clear")  # the supervisor's tables, streamed to both workers
    # Both workers' tables are empty now, and the supervisor lists again to refill them
    # (docs/reference.md#debug-routes). An admission that reaches a worker before the refill
    # misses and waits for the fetch; the supervisor makes that one GET for both workers. One
    # that comes after the refill needs none: which happens first is the machine's timing.
    assert admit_until_both_workers_mutated(replica, "fetched") == {0, 1}
    gets = [entries[0] for entries in replica.requests().values() if entries[0]["verb"] == "get"]
    assert len(gets) - gets_before <= 1 and all(get["objectRef"]["name"] == "fetched" for get in gets[gets_before:])


def test_self_managed_certificates_are_the_supervisors_and_every_worker_serves_them(replica, tmp_path):
    from cryptography import x509

    from .plane import wait_until
    from .test_api_server_faults import Rest
    from .test_certificate_churn import CONFIGURATIONS, served_certificate

    plane, rest, name = replica.plane, Rest(replica.plane), "workers-certs"
    assert rest.call("POST", "/api/v1/namespaces", {"metadata": {"name": name}})[0] == 201
    configuration = api.webhook_configuration(name, f"{name}.e2e.pod-identity-injector.test",
                                              "https://127.0.0.1:1/mutate", plane.pki.ca_file,
                                              {"e2e-webhook": f"{name}-selects-nothing"})
    assert rest.call("POST", CONFIGURATIONS, configuration)[0] == 201
    proc, server = spawn_serve(plane, tmp_path, name, plane.kubeconfig, "--workers", "2",
                               "--cert-mode=self-managed", f"--namespace={name}", f"--tls-secret={name}-tls",
                               f"--webhook-configuration={name}", f"--service-name={name}", "--cert-san=127.0.0.1",
                               f"--cert-dir={tmp_path / 'certs'}")
    try:
        def secret() -> dict | None:
            status, body = rest.call("GET", f"/api/v1/namespaces/{name}/secrets/{name}-tls")
            return body.get("data") if status == 200 else None

        wait_until(lambda: secret() is not None, 30, "the Secret written by the supervisor")
        data = secret()
        assert data is not None
        server.ca_file = tmp_path / "ca.crt"
        server.ca_file.write_bytes(base64.b64decode(data["ca.crt"]))
        wait_ready(server, 60)
        wait_until(lambda: proc.logs().count('"event":"serving"') == 2, 20, "both processes serving")
        ours = x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"])).serial_number
        assert {served_certificate(server).serial_number for _ in range(20)} == {ours}
        entries = [json.loads(line) for line in proc.logs().splitlines() if line.startswith("{")]
        issued = [entry for entry in entries if entry["event"] in (
            "serving certificate issued", "caBundle written to the webhook configuration")]
        assert issued and all(entry.get("worker", 0) == 0 for entry in issued)  # the supervisor's work alone
    finally:
        assert proc.stop() == 0
        rest.call("DELETE", f"{CONFIGURATIONS}/{name}")
        rest.call("DELETE", f"/api/v1/namespaces/{name}")
