"""Kubernetes Events on misannotated ServiceAccounts (injector/kube/events.py,
docs/reference.md#service-account-events, docs/mutation.md#service-account-events): what each
finding says, the Event as sent, and the queue, dedup, rate limit and failure handling, with
the API server replaced by a recorder and time by a fake clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from injector.core.identity import service_account_entry
from injector.core.settings import MutationSettings
from injector.kube import events as ev
from injector.kube.client import KubeError
from injector.server.metrics import SERVICE_ACCOUNT_EVENTS, Metrics, count_service_account_event
from injector.sources.serviceaccounts import ServiceAccountSource
from injector.sources.store import IdentityStore

SETTINGS = MutationSettings()
ROLE = "arn:aws:iam::111122223333:role/app"
KEY = "eks.amazonaws.com/role-arn"
NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


# -- findings: the reason and the message -------------------------------------------------------
def reasons(annotations, settings=SETTINGS) -> list[str]:
    return [reason for reason, _ in ev.findings(annotations, settings)]


def test_a_clean_or_unannotated_service_account_has_nothing_to_say():
    assert ev.findings({KEY: ROLE, "eks.amazonaws.com/token-expiration": "3600"}, SETTINGS) == []
    assert ev.findings({}, SETTINGS) == [] and ev.findings(None, SETTINGS) == []
    assert ev.findings({"team": "a", "kubectl.kubernetes.io/last-applied-configuration": "{}"}, SETTINGS) == []


@pytest.mark.parametrize(("annotations", "reason", "says"), [
    ({KEY: "not-an-arn"}, ev.INVALID_ROLE_ARN, ["'not-an-arn' is not an IAM role ARN", "arn:aws:iam::<account-id>"]),
    ({KEY: ROLE, "eks.amazonaws.com/sts-regional-endpoints": "yes"}, ev.INVALID_STS_REGIONAL_ENDPOINTS,
     ["'yes' is not a boolean", "global STS endpoint", '"true" or "false"']),
    ({KEY: ROLE, "eks.amazonaws.com/token-expiration": "2h"}, ev.INVALID_TOKEN_EXPIRATION,
     ["'2h' is not a whole number of seconds, so 86400 applies", "at least 600"]),
    ({"eks.amazon.com/role-arn": ROLE}, ev.NEAR_MISS_ANNOTATION,
     ["annotation 'eks.amazon.com/role-arn' is ignored: wrong domain", "rename it to eks.amazonaws.com/role-arn"]),
    ({"EKS.amazonaws.com/role-arn": ROLE}, ev.NEAR_MISS_ANNOTATION, ["wrong case"]),
    ({"eks.amazonaws.com/role_arn": ROLE}, ev.NEAR_MISS_ANNOTATION, ["'role_arn' is not 'role-arn'"]),
    ({"eks.amazonaws.com/audience": "other"}, ev.NO_ROLE_ARN,
     ["eks.amazonaws.com/audience set without eks.amazonaws.com/role-arn", "add eks.amazonaws.com/role-arn"]),
    (["not", "a", "map"], ev.INVALID_ANNOTATIONS, ["not a map"]),
])
def test_each_kind_of_finding_has_its_reason_and_names_the_fix(annotations, reason, says):
    [(got, message)] = ev.findings(annotations, SETTINGS)
    assert got == reason
    for part in says:
        assert part in message


def test_several_findings_come_in_a_stable_order_and_reasons_are_known():
    annotations = {"eks.amazon.com/role-arn": ROLE, "eks.amazonaws.com/token-expiration": "soon"}
    assert reasons(annotations) == [ev.INVALID_TOKEN_EXPIRATION, ev.NEAR_MISS_ANNOTATION, ev.NO_ROLE_ARN]
    assert set(reasons(annotations)) <= set(ev.REASONS)


def test_a_problem_without_a_reason_of_its_own_still_gets_an_event(monkeypatch):
    entry = service_account_entry({KEY: ROLE}, SETTINGS)
    from dataclasses import replace
    monkeypatch.setattr(ev, "service_account_entry", lambda *_: replace(entry, problems=("something new",)))
    assert ev.findings({KEY: ROLE}, SETTINGS) == [(ev.INVALID_ANNOTATION, "something new")]


def test_messages_stay_under_a_kib_and_long_values_are_cut():
    [(_, message)] = ev.findings({KEY: "x" * 300_000}, SETTINGS)
    assert len(message.encode()) < 1024 and "x" * 78 + "…" in message and "arn:aws:iam::" in message
    assert len(ev._cut("é" * 2000).encode()) <= 1024
    assert ev._cut("short") == "short"


def test_a_custom_prefix_is_what_the_messages_name():
    settings = MutationSettings(annotation_prefix="example.com")
    [(reason, message)] = ev.findings({"eks.amazonaws.com/role-arn": ROLE}, settings)
    assert reason == ev.NEAR_MISS_ANNOTATION and "rename it to example.com/role-arn" in message


# -- the Event ------------------------------------------------------------------------------------
SA = {"metadata": {"namespace": "team", "name": "app", "uid": "1234-abcd", "resourceVersion": "77",
                   "annotations": {KEY: "not-an-arn"}}}


def test_the_event_names_the_service_account_by_uid_for_kubectl_describe():
    body = ev.event_body(SA, ev.INVALID_ROLE_ARN, "msg", "webhook-7d9c-abcde", NOW)
    assert body["involvedObject"] == {"apiVersion": "v1", "kind": "ServiceAccount", "namespace": "team",
                                      "name": "app", "uid": "1234-abcd", "resourceVersion": "77"}
    assert body["metadata"]["namespace"] == "team"
    assert body["type"] == "Warning" and body["reason"] == ev.INVALID_ROLE_ARN and body["message"] == "msg"
    assert body["source"] == {"component": "pod-identity-injector"}
    assert body["reportingComponent"] == "pod-identity-injector"
    assert body["reportingInstance"] == "webhook-7d9c-abcde"
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2026-12-01T12:00:00Z" and body["count"] == 1


def test_the_event_name_is_the_same_for_the_same_finding_on_the_same_object_only():
    name = ev.event_name("app", "uid-1", "R", "m")
    assert name == ev.event_name("app", "uid-1", "R", "m") and name.startswith("app.") and len(name) == 4 + 16
    assert len({name, ev.event_name("app", "uid-2", "R", "m"), ev.event_name("app", "uid-1", "S", "m"),
                ev.event_name("app", "uid-1", "R", "n")}) == 4
    long = ev.event_name("a" * 235 + "-" + "b" * 17, "u", "R", "m")
    assert len(long) <= 253 and "-." not in long


def test_the_reporting_instance_is_the_pod_name(monkeypatch):
    monkeypatch.setenv("POD_NAME", "pod-identity-injector-5f6d-x2x9q")
    assert ev.reporting_instance() == "pod-identity-injector-5f6d-x2x9q"
    monkeypatch.delenv("POD_NAME")
    assert ev.reporting_instance()  # the host name, which in a pod is the pod's name


# -- the job, against a recorder ----------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


class Api:
    """The two calls the job makes; `objects` by key; `fail` maps a call to an exception."""

    def __init__(self, objects: dict[str, dict]) -> None:
        self.objects = objects
        self.created: list[dict] = []
        self.reads: list[str] = []
        self.fail: dict[str, BaseException] = {}
        self.names: set[str] = set()

    async def get(self, namespace: str, name: str):
        self.reads.append(f"{namespace}/{name}")
        if "get" in self.fail:
            raise self.fail["get"]
        return self.objects.get(f"{namespace}/{name}")

    async def post(self, namespace: str, body: dict) -> None:
        if "post" in self.fail:
            raise self.fail["post"]
        if (namespace, body["metadata"]["name"]) in self.names:
            raise KubeError(409, f'events "{body["metadata"]["name"]}" already exists')
        self.names.add((namespace, body["metadata"]["name"]))
        self.created.append(body)


def sa(name: str, annotations: dict, uid: str | None = None, namespace: str = "team") -> dict:
    return {"metadata": {"namespace": namespace, "name": name, "uid": uid or f"uid-{name}",
                         "annotations": annotations}}


def emitter(api: Api, clock: Clock | None = None, **kwargs) -> ev.ServiceAccountEvents:
    clock = clock or Clock()
    job = ev.ServiceAccountEvents(None, SETTINGS, instance="webhook-0", clock=clock, sleep=clock.sleep,
                                  now=lambda: NOW, counted=count_service_account_event, **kwargs)
    job._get, job._post = api.get, api.post
    return job


async def drain(job: ev.ServiceAccountEvents) -> None:
    """Run the job until its queue is empty and it waits again."""
    task = asyncio.create_task(job.run())
    for _ in range(1000):
        await asyncio.sleep(0)
        if not job._pending and job._wake.is_set() is False:
            break
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


ENTRY = service_account_entry({KEY: "not-an-arn"}, SETTINGS)


async def test_a_noticed_service_account_gets_one_warning_event_per_finding():
    api = Api({"team/app": sa("app", {"eks.amazon.com/role-arn": ROLE, "eks.amazonaws.com/token-expiration": "x"}),
               "team/ok": sa("ok", {KEY: ROLE})})
    job = emitter(api)
    job.notice("team/app", ENTRY)
    job.notice("team/ok", ENTRY)  # fixed before its turn came: the job reads it as it is now
    await drain(job)
    assert [e["reason"] for e in api.created] == [ev.INVALID_TOKEN_EXPIRATION, ev.NEAR_MISS_ANNOTATION,
                                                  ev.NO_ROLE_ARN]
    assert {e["involvedObject"]["uid"] for e in api.created} == {"uid-app"}
    assert api.reads == ["team/app", "team/ok"]
    assert job.counts == {"created": 3}


async def test_the_same_finding_is_not_sent_again_within_the_window():
    api = Api({"team/app": sa("app", {KEY: "not-an-arn"})})
    clock = Clock()
    job = emitter(api, clock, window=600.0)
    job.notice("team/app", ENTRY)
    await drain(job)
    job.notice("team/app", ENTRY)  # e.g. the annotation flipped and came back
    await drain(job)
    assert len(api.created) == 1 and job.counts == {"created": 1, "suppressed": 1}
    clock.now += 601  # past the window: sent again, and the API server says it still has it
    job.notice("team/app", ENTRY)
    await drain(job)
    assert len(api.created) == 1 and job.counts["exists"] == 1


async def test_a_new_message_or_a_recreated_service_account_is_a_new_event():
    api = Api({"team/app": sa("app", {KEY: "not-an-arn"})})
    job = emitter(api)
    job.notice("team/app", ENTRY)
    await drain(job)
    api.objects["team/app"] = sa("app", {KEY: "still-not-an-arn"})
    job.notice("team/app", ENTRY)
    await drain(job)
    api.objects["team/app"] = sa("app", {KEY: "still-not-an-arn"}, uid="uid-recreated")
    job.notice("team/app", ENTRY)
    await drain(job)
    assert [e["involvedObject"]["uid"] for e in api.created] == ["uid-app", "uid-app", "uid-recreated"]


async def test_another_replica_or_process_finds_the_event_there_and_writes_nothing():
    api = Api({"team/app": sa("app", {KEY: "not-an-arn"})})
    first, second = emitter(api), emitter(api)
    first.notice("team/app", ENTRY)
    await drain(first)
    second.notice("team/app", ENTRY)
    await drain(second)
    assert len(api.created) == 1 and second.counts == {"exists": 1}


async def test_the_queue_is_bounded_coalesced_and_the_overflow_counted_and_logged_once():
    api = Api({f"team/sa-{i}": sa(f"sa-{i}", {KEY: "bad"}) for i in range(5)})
    job = emitter(api, queue_size=3)
    before = SERVICE_ACCOUNT_EVENTS.labels("dropped")._value.get()
    with capture_logs() as logs:
        for i in range(5):
            job.notice(f"team/sa-{i}", ENTRY)
        job.notice("team/sa-0", ENTRY)  # already waiting: not queued twice, not a drop
    assert list(job._pending) == ["team/sa-0", "team/sa-1", "team/sa-2"]
    assert job.counts == {"dropped": 2}
    assert SERVICE_ACCOUNT_EVENTS.labels("dropped")._value.get() - before == 2
    assert [entry["log_level"] for entry in logs if "queue full" in entry["event"]] == ["warning"]
    await drain(job)
    assert len(api.created) == 3
    with capture_logs() as logs:  # a later overflow is said again
        for i in range(5):
            job.notice(f"team/sa-{i}", ENTRY)
    assert len([entry for entry in logs if "queue full" in entry["event"]]) == 1


async def test_requests_are_rate_limited_burst_then_rate():
    api = Api({f"team/sa-{i}": sa(f"sa-{i}", {KEY: "bad"}) for i in range(4)})
    clock = Clock()
    job = emitter(api, clock, rate=2.0, burst=3)
    for i in range(4):
        job.notice(f"team/sa-{i}", ENTRY)
    await drain(job)
    # 8 requests (a GET and a POST each): 3 at once, then one every half second.
    assert len(api.created) == 4 and clock.slept == [0.5] * 5


async def test_the_rate_limit_refills_up_to_the_burst_only():
    clock = Clock()
    job = emitter(Api({}), clock)  # the defaults: burst 25, then 1 a second
    for _ in range(25):
        await job.limit.acquire()
    assert clock.slept == []
    await job.limit.acquire()
    await job.limit.acquire()  # one after the other: a second each
    assert clock.slept == [1.0, 1.0]
    clock.now += 3600
    for _ in range(25):
        await job.limit.acquire()
    assert clock.slept == [1.0, 1.0]
    await job.limit.acquire()
    assert clock.slept == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("failure", [KubeError(403, 'events is forbidden: User "x" cannot create resource'),
                                     KubeError(500, "etcd down"), ConnectionResetError("reset"),
                                     TimeoutError()])
async def test_a_failed_create_is_logged_at_warning_counted_and_not_retried(failure):
    api = Api({"team/app": sa("app", {KEY: "not-an-arn"}), "team/other": sa("other", {KEY: "bad"})})
    api.fail["post"] = failure
    job = emitter(api)
    with capture_logs() as logs:
        job.notice("team/app", ENTRY)
        job.notice("team/other", ENTRY)
        await drain(job)
    assert job.counts == {"failed": 2} and not api.created and api.reads == ["team/app", "team/other"]
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert warnings and all("exc_info" not in entry for entry in logs)
    if isinstance(failure, KubeError) and failure.status == 403:
        assert len(warnings) == 1 and "create on events" in warnings[0]["fix"]  # said once, with the fix
    else:
        assert len(warnings) == 2
    del api.fail["post"]  # the next change tries again
    job.notice("team/app", ENTRY)
    await drain(job)
    assert len(api.created) == 1


async def test_a_failed_or_empty_read_sends_nothing_and_the_job_goes_on():
    api = Api({"team/app": sa("app", {KEY: "not-an-arn"})})
    api.fail["get"] = KubeError(0, "connection refused")
    job = emitter(api)
    job.notice("team/app", ENTRY)
    job.notice("team/gone", ENTRY)
    await drain(job)
    del api.fail["get"]
    job.notice("team/gone", ENTRY)  # deleted before its turn: 404, nothing to say
    job.notice("team/app", ENTRY)
    await drain(job)
    assert [e["involvedObject"]["name"] for e in api.created] == ["app"] and job.counts["failed"] == 2


async def test_an_unexpected_error_is_logged_without_a_traceback_and_the_job_goes_on():
    api = Api({"team/app": sa("app", {KEY: "not-an-arn"}), "team/b": sa("b", {KEY: "bad"})})
    job = emitter(api)
    calls = []

    async def broken_then_fine(namespace, name):
        calls.append(name)
        if name == "app":
            raise ValueError("surprise")
        return await api.get(namespace, name)

    job._get = broken_then_fine
    with capture_logs() as logs:
        job.notice("team/app", ENTRY)
        job.notice("team/b", ENTRY)
        await drain(job)
    assert calls == ["app", "b"] and [e["involvedObject"]["name"] for e in api.created] == ["b"]
    [failed] = [entry for entry in logs if entry["event"] == "service account event failed"]
    assert failed["error"] == "surprise" and "exc_info" not in failed


async def test_a_cancelled_job_keeps_the_service_account_it_was_on():
    api = Api({"team/app": sa("app", {KEY: "not-an-arn"})})
    job = emitter(api)
    started = asyncio.Event()

    async def slow(namespace, name):
        started.set()
        await asyncio.sleep(3600)

    job._get = slow
    job.notice("team/app", ENTRY)
    task = asyncio.create_task(job.run())
    await started.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert list(job._pending) == ["team/app"]
    job._get = api.get
    await drain(job)
    assert len(api.created) == 1


def test_reconnect_keeps_the_queue_and_wakes_the_job_in_the_new_loop():
    api = Api({"team/app": sa("app", {KEY: "not-an-arn"})})
    job = emitter(api)

    async def first_loop():  # the job waits there, then that loop closes
        task = asyncio.create_task(job.run())
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(first_loop())
    job.notice("team/app", ENTRY)
    job.reconnect(object())  # the supervisor's new client, in the loop it serves from
    job._get, job._post = api.get, api.post

    async def second_loop():
        await drain(job)

    asyncio.run(second_loop())
    assert len(api.created) == 1


# -- wiring: the store's hook, the watch source, the metrics ---------------------------------------
def test_the_store_notifies_on_new_problems_only_and_the_listener_only_queues():
    store = IdentityStore(SETTINGS)
    job = emitter(Api({}))
    store.problem_listeners.append(job.notice)
    store.replace_service_accounts({"team/app": ENTRY, "team/ok": service_account_entry({KEY: ROLE}, SETTINGS)})
    assert list(job._pending) == ["team/app"]
    job._pending.clear()
    store.replace_service_accounts({"team/app": ENTRY})  # a relist with nothing new
    store.put_service_account("team", "app", ENTRY)  # an update with nothing new
    assert not job._pending


def test_our_annotations_without_role_arn_alone_reach_the_listener_once():
    store = IdentityStore(SETTINGS)
    job = emitter(Api({}))
    store.problem_listeners.append(job.notice)
    audience_only = service_account_entry({"eks.amazonaws.com/audience": "sts.amazonaws.com"}, SETTINGS)
    assert not audience_only.problems and not audience_only.role_arn
    store.put_service_account("team", "audience-only", audience_only)
    assert list(job._pending) == ["team/audience-only"]
    job._pending.clear()
    store.replace_service_accounts({"team/audience-only": audience_only})  # a relist: nothing new
    assert not job._pending


def test_a_near_miss_with_another_domain_reaches_the_listener_through_the_watch_source():
    """The source skips parsing ServiceAccounts without our annotations; a near miss under
    another domain must still be parsed, or neither the Event nor the admission warning happens."""
    store = IdentityStore(SETTINGS)
    source = ServiceAccountSource.__new__(ServiceAccountSource)  # no API client: only the callbacks
    source.store = store
    job = emitter(Api({}))
    store.problem_listeners.append(job.notice)
    source._event("ADDED", sa("typo", {"eks.amazon.com/role-arn": ROLE}))
    source._event("ADDED", sa("plain", {"team": "a"}))
    assert list(job._pending) == ["team/typo"]
    assert store.resolve("team", "typo").warnings == (
        "ServiceAccount key eks.amazon.com/role-arn is ignored; use eks.amazonaws.com/role-arn",)


def test_the_counter_is_in_every_metrics_registry():
    from prometheus_client import generate_latest

    SERVICE_ACCOUNT_EVENTS.labels("created").inc(0)
    text = generate_latest(Metrics().registry).decode()
    assert 'pod_identity_injector_service_account_events_total{outcome="created"}' in text
    assert "pod_identity_injector_service_account_events_created" not in text
    assert generate_latest(Metrics().registry)  # a second registry takes it too


def test_the_flag_is_on_by_default_and_can_be_turned_off():
    from injector.cli.parser import build_parser
    from injector.core.settings import ServeSettings

    assert ServeSettings().service_account_events is True
    parser = build_parser()
    assert parser.parse_args(["serve", "--service-account-events=false"]).service_account_events is False
    assert parser.parse_args(["serve"]).service_account_events is True
