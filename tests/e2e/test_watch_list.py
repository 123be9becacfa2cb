"""Sync once, then only watch, counted on a real kube-apiserver (docs/reference.md#watches).

A control plane of this module's own, with an audit log of every ServiceAccount request and
`--min-request-timeout=5` (the server ends each watch after 5–10 s, so resumption happens
several times). E2E_WATCH_LIST_SERVICE_ACCOUNTS ServiceAccounts (10,000 by default) exist before
`serve` starts with `--resync-period=2s`; over E2E_WATCH_LIST_SECONDS (30 s by default) the
webhook's requests are read from the audit log and `apiserver_request_total`:

- with the WatchList feature gate on (the default in 1.32 and from 1.34) the sync is one watch
  with initial events, and there is no LIST at all;
- with it off (the default in 1.30, 1.31 and 1.33), the watch with initial events is refused
  once and the sync is one LIST at resourceVersion "0", which the server answers from its watch
  cache in one response, and there is no LIST after.

Both sides run on every minor: the server's default, whichever it is, and the gate forced off
and on (`--feature-gates`; server_features.py reads back what the server runs with).

Either way the period passes with watches resumed from a resourceVersion and nothing else,
whatever `--resync-period` says. The issue (#11) asks for 10 minutes; set
E2E_WATCH_LIST_SECONDS=600 for that.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from .plane import ControlPlane, binary_for_tests, external_kubeconfig, start_control_plane, webhook_audit_entries
from .server_features import server_features
from .webhooks import spawn_serve
from serving import Server, pod_review, wait_ready

pytestmark = pytest.mark.skipif(bool(external_kubeconfig()), reason="needs a control plane of its own to count on")

COUNT = int(os.environ.get("E2E_WATCH_LIST_SERVICE_ACCOUNTS", "10000"))
SECONDS = float(os.environ.get("E2E_WATCH_LIST_SECONDS", "30"))
NAMESPACES = 50
ROLE = "arn:aws:iam::111122223333:role/watch-list-{}"
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: Metadata
  resources: [{group: "", resources: [serviceaccounts]}]
- level: None
"""


def create_service_accounts(plane: ControlPlane, count: int) -> None:
    """`count` ServiceAccounts over NAMESPACES namespaces, one in a hundred with a role, created
    through the API by 16 keep-alive connections."""
    local = threading.local()

    def post(path: str, body: dict) -> None:
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPSConnection("127.0.0.1", plane.port, context=plane.admin_context(), timeout=30)
        local.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = local.conn.getresponse()
        data = response.read()
        assert response.status in (201, 409), data[:300]

    def one(index: int) -> None:
        annotations = {"eks.amazonaws.com/role-arn": ROLE.format(index)} if index % 100 == 0 else {}
        post(f"/api/v1/namespaces/wl-{index % NAMESPACES}/serviceaccounts",
             {"metadata": {"name": f"sa-{index}", "annotations": annotations}})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: post("/api/v1/namespaces", {"metadata": {"name": f"wl-{n}"}}), range(NAMESPACES)))
        list(pool.map(one, range(count)))


def requests_by_webhook(audit_log: Path) -> list[tuple[str, dict]]:
    """(verb, query) of every ServiceAccount request the webhook made (its client's user agent)."""
    found = []
    for entry in webhook_audit_entries(audit_log):
        if entry.get("stage") == "ResponseComplete":
            url = urlsplit(entry["requestURI"])
            # kubernetes-asyncio sends booleans as "True"; the server parses them as Go's ParseBool does.
            found.append((entry["verb"], {k: v[0].replace("True", "true") for k, v in parse_qs(url.query).items()}))
    return found


def start_plane(tmp: Path, *flags: str) -> ControlPlane:
    policy = tmp / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    return start_control_plane(binary_for_tests(), tmp / "plane", extra_flags=(
        "--min-request-timeout=5", f"--audit-policy-file={policy}", f"--audit-log-path={tmp / 'audit.log'}",
        "--audit-log-maxsize=0", *flags))


def run_webhook(plane: ControlPlane, tmp: Path, count: int) -> tuple[list[tuple[str, dict]], float, Server]:
    """Start `serve`, let it run SECONDS past ready, check it knows all `count` ServiceAccounts;
    its requests, and the LISTs by anyone after it was ready."""
    proc, server = spawn_serve(plane, tmp, "watch-list-webhook", plane.kubeconfig,
                               "--resync-period=2s", "--enable-debugging-handlers")
    try:
        wait_ready(server, 120)
        lists_at_ready = plane.requests_served("LIST")
        status, answer = server.review(pod_review(service_account="sa-0", namespace="wl-0"))
        assert status == 200 and answer["response"].get("patch"), answer
        time.sleep(SECONDS)
        assert proc.running
        cache = json.loads(server.metrics("/debug/alpha/cache"))
        assert sum(1 for key in cache if key.startswith("wl-")) == count
        return requests_by_webhook(Path(str(plane.workdir.parent / "audit.log"))), \
            plane.requests_served("LIST") - lists_at_ready, server
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def watch_list_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    tmp = tmp_path_factory.mktemp("watch-list")
    plane = start_plane(tmp)
    try:
        create_service_accounts(plane, COUNT)
        yield plane
    finally:
        plane.stop()


def assert_one_watch_list_then_only_watches(requests: list[tuple[str, dict]], lists_after_ready: float) -> None:
    """WatchList on: the sync is one watch with initial events, then watches resumed from a
    version; no LIST at all."""
    verbs = [verb for verb, _ in requests]
    assert "list" not in verbs and lists_after_ready == 0, verbs
    first, *resumed = [query for verb, query in requests if verb == "watch"]
    assert first.get("sendInitialEvents") == "true" and first.get("resourceVersionMatch") == "NotOlderThan"
    assert first.get("allowWatchBookmarks") == "true" and "resourceVersion" not in first
    # Each watch the server ended (5-10 s) was resumed from a version, not started over.
    assert len(resumed) >= SECONDS / 10 - 1
    assert all(query.get("resourceVersion") and "sendInitialEvents" not in query for query in resumed)
    assert set(verbs) == {"watch"}


def assert_one_list_from_the_watch_cache_then_only_watches(requests: list[tuple[str, dict]],
                                                           lists_after_ready: float) -> None:
    """WatchList off: the watch with initial events is asked for once and refused, the sync is
    one LIST from the watch cache, then watches resumed from a version."""
    verbs = [verb for verb, _ in requests]
    refused, (verb, query), *rest = requests
    assert refused[0] == "watch" and refused[1].get("sendInitialEvents") == "true"  # asked once, refused
    # resourceVersion "0": from the watch cache, whatever the limit (a consistent LIST would be
    # count/500 pages read from etcd); the watch goes on from the version it answered at.
    assert verb == "list" and query["resourceVersion"] == "0" and query["limit"] == "500"
    assert [v for v, _ in rest] == ["watch"] * len(rest) and lists_after_ready == 0, verbs
    assert all(q.get("resourceVersion") not in (None, "", "0") for _, q in rest)


def test_with_the_servers_default_gates_the_sync_is_the_one_it_offers_and_then_there_is_no_list(
        watch_list_plane, tmp_path):
    watch_list = server_features(watch_list_plane.get).enabled("WatchList")
    requests, lists_after_ready, _ = run_webhook(watch_list_plane, tmp_path, COUNT)
    if watch_list:
        assert_one_watch_list_then_only_watches(requests, lists_after_ready)
    else:
        assert_one_list_from_the_watch_cache_then_only_watches(requests, lists_after_ready)


@pytest.mark.parametrize("gate", [False, True], ids=["WatchList-off", "WatchList-on"])
def test_with_the_gate_forced_each_way_the_sync_follows_it_and_there_is_no_list_after_it(tmp_path, gate):
    count = min(COUNT, 2000)
    plane = start_plane(tmp_path, f"--feature-gates=WatchList={str(gate).lower()}")
    try:
        assert server_features(plane.get).enabled("WatchList") is gate
        create_service_accounts(plane, count)
        requests, lists_after_ready, _ = run_webhook(plane, tmp_path, count)
    finally:
        plane.stop()
    if gate:
        assert_one_watch_list_then_only_watches(requests, lists_after_ready)
    else:
        assert_one_list_from_the_watch_cache_then_only_watches(requests, lists_after_ready)
