"""A structure-aware fuzzer of /mutate (docs/reliability.md#contract), shared by
tests/test_review_fuzz.py (bounded, in CI) and `make fuzz` (≥ 10^6 cases, prints counts).

Each case starts from a realistic AdmissionReview (a pod with init containers, env, mounts,
volumes, annotations, labels, a node selector) and is then broken the ways a hostile or
buggy client could: a value of a random JSON type at a random path (objects, arrays, deep
nesting, huge strings, unicode, integers far outside int64, floats), members deleted, the
text truncated, a duplicate member placed before or after the real one, not UTF-8, another
content type. Every answer is checked against the contract:

* the status is 200, 400, 413 or 415, never 5xx;
* a 200 is an AdmissionReview whose response echoes the uid, says allowed or denied and, when
  it carries a patch, a base64 JSON Patch that applies to the pod that was sent;
* nothing is logged above warning, and no log line carries a traceback.

    python tests/review_fuzz.py --cases 1000000     # what `make fuzz` runs
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import json
import logging
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jsonpatch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROLE = "arn:aws:iam::111122223333:role/my-app"
LIMIT = 64 * 1024  # --max-request-bytes of the app under test: bigger bodies must be 413
STATUSES = {200, 400, 413, 415}


def template() -> dict[str, Any]:
    """A well-formed review of a pod that touches every part the rules read."""
    container = {"name": "app", "image": "busybox", "env": [{"name": "HOME", "value": "/root"}],
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "3a1d2c4b-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "operation": "CREATE",
            "dryRun": False,
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "web-", "namespace": "default",
                             "annotations": {"eks.amazonaws.com/token-expiration": "3600",
                                             "eks.amazonaws.com/skip-containers": "sidecar"},
                             "labels": {"app": "web"}},
                "spec": {"serviceAccountName": "my-app", "nodeSelector": {"kubernetes.io/os": "linux"},
                         # Read defensively, not checked: the fuzzer breaks its parts too (docs/mutation.md#windows).
                         "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                             "nodeSelectorTerms": [{"matchExpressions": [
                                 {"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]}]}}},
                         "initContainers": [copy.deepcopy(container) | {"name": "setup"}],
                         "containers": [container, {"name": "sidecar", "image": "envoy"}],
                         "volumes": [{"name": "data", "emptyDir": {}}]},
            },
        },
    }


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into `value` (dict keys and list indexes), the root excluded."""
    found = []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return found
    for key, child in items:
        found.append((*prefix, key))
        found.extend(paths(child, (*prefix, key)))
    return found


TEMPLATE = template()
PATHS = paths(TEMPLATE)
DELETE = object()

# -- strategies -----------------------------------------------------------------------------------
words = st.sampled_from(["", "Pod", "CREATE", "UPDATE", "default", "my-app", "app", "aws-iam-token",
                         "AdmissionReview", "windows", "eks.amazonaws.com/role-arn", "~1/", "\u0000"])
huge_strings = st.integers(min_value=1, max_value=LIMIT + 1024).map(lambda n: "x" * n)
numbers = st.one_of(st.integers(), st.integers(min_value=2**63 - 2, max_value=2**63 + 2),
                    st.integers(min_value=-(2**80), max_value=2**80), st.floats(allow_nan=False))
leaves = st.one_of(st.none(), st.booleans(), numbers, words, st.text(max_size=16), huge_strings)
values = st.recursive(leaves, lambda children: st.lists(children, max_size=3)
                      | st.dictionaries(st.one_of(words, st.text(max_size=6)), children, max_size=3),
                      max_leaves=8)
mutations = st.lists(st.tuples(st.sampled_from(PATHS), st.one_of(values, st.just(DELETE))), min_size=1, max_size=4)


def apply(document: dict, changes: list[tuple[tuple, Any]]) -> dict:
    """The template with each (path, value) set, or the member deleted; a path that no longer
    exists (an earlier change replaced its parent) is skipped."""
    for path, value in changes:
        parent: Any = document
        for key in path[:-1]:
            try:
                parent = parent[key]
            except (KeyError, IndexError, TypeError):
                break
        else:
            key = path[-1]
            if isinstance(parent, dict) or (isinstance(parent, list) and isinstance(key, int) and key < len(parent)):
                if value is DELETE:
                    if key in parent or isinstance(parent, list):
                        del parent[key]
                else:
                    parent[key] = value
    return document


SHAPES = ["document"] * 6 + ["truncated", "duplicate", "deep", "bytes", "content-type"]
DUPLICATED = ['"request"', '"kind"', '"apiVersion"', '"uid"', '"object"', '"spec"', '"containers"', '"name"',
              '"namespace"']
CONTENT_TYPES = ["application/json; charset=utf-8", "APPLICATION/JSON", "text/plain", "",
                 "application/json-patch+json", "application/x-www-form-urlencoded"]
Case = tuple[str, bytes, str, "dict | None"]


def deep_text(rnd: random.Random) -> str:
    """Nesting around the decoder's depth limit (1024)."""
    depth, brackets = rnd.randint(500, 1100), rnd.random() < 0.5
    return ("[" if brackets else '{"a":') * depth + "0" + ("]" if brackets else "}") * depth


def make_case(rnd: random.Random, pool: list[Any], junk: bytes) -> Case:
    """One case: (how it was broken, body, content type, the document sent when it is one)."""
    changes = [(rnd.choice(PATHS), DELETE if rnd.random() < 0.2 else copy.deepcopy(rnd.choice(pool)))
               for _ in range(rnd.randint(1, 4))]
    document = apply(copy.deepcopy(TEMPLATE), changes)
    shape = rnd.choice(SHAPES)
    text = json.dumps(document, ensure_ascii=rnd.random() < 0.5)
    content_type = "application/json"
    sent: dict | None = document
    if shape == "truncated":
        text, sent = text[:rnd.randrange(max(1, len(text)))], None
    elif shape == "duplicate":  # a second member of the same name, before or after the real one
        member, extra = rnd.choice(DUPLICATED), json.dumps(rnd.choice(pool))
        index = text.find(member + ":")
        if index >= 0:
            second = f"{member}: {extra}, {member}:" if rnd.random() < 0.5 else f"{member}:"
            text = text[:index] + (f"{member}: {extra}, " if second == f"{member}:" else "") + \
                text[index:].replace(member + ":", second, 1)
        sent = None  # which one wins is the decoder's business; the answer must be well formed anyway
    elif shape == "deep":  # at a random path
        marker = "\u2063deep\u2063"
        document = apply(document, [(rnd.choice(PATHS), marker)])
        text, sent = json.dumps(document, ensure_ascii=False).replace(f'"{marker}"', deep_text(rnd), 1), None
    elif shape == "bytes":
        return shape, junk[:rnd.randrange(len(junk) + 1)] + text.encode()[:rnd.randrange(200)], content_type, None
    elif shape == "content-type":
        content_type = rnd.choice(CONTENT_TYPES)
    return shape, text.encode("utf-8", "surrogatepass"), content_type, sent


# Hypothesis draws the values (every JSON type, shrinkable) and a seed; the cases of one example
# are combinations of those, which keeps generation far cheaper than the request itself.
examples = st.tuples(st.lists(values, min_size=4, max_size=12), st.binary(max_size=64),
                     st.integers(min_value=0, max_value=2**32 - 1))


def batch_of(example: tuple[list[Any], bytes, int], size: int) -> list[Case]:
    pool, junk, seed = example
    rnd = random.Random(seed)
    return [make_case(rnd, pool, junk) for _ in range(size)]


# -- the contract ---------------------------------------------------------------------------------
class ContractBroken(AssertionError):
    pass


def check_answer(status: int, body: bytes, content_type: str, sent: dict | None) -> str:
    """The outcome's name for the counts; raises `ContractBroken` when the answer is not one
    the contract allows."""
    if status not in STATUSES:
        raise ContractBroken(f"HTTP {status}: {body[:300]!r}")
    if status != 200:
        return str(status)
    try:
        answer = json.loads(body)
        response = answer["response"]
        allowed = response["allowed"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ContractBroken(f"200 that is not an AdmissionReview ({exc}): {body[:300]!r}") from None
    if not isinstance(allowed, bool) or not isinstance(response.get("uid"), str):
        raise ContractBroken(f"response without a boolean allowed and a string uid: {response}")
    request = sent.get("request") if isinstance(sent, dict) else None
    if isinstance(request, dict) and isinstance(request.get("uid"), str) and response["uid"] != request["uid"]:
        raise ContractBroken(f"uid {response['uid']!r} does not echo {request['uid']!r}")
    if "patch" in response:
        if response.get("patchType") != "JSONPatch" or not allowed:
            raise ContractBroken(f"a patch without patchType JSONPatch, or on a denial: {response}")
        operations = json.loads(base64.b64decode(response["patch"]))
        if sent is not None:
            try:
                jsonpatch.apply_patch(sent["request"]["object"], operations)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError, TypeError) as exc:
                raise ContractBroken(f"the patch does not apply to the pod sent ({exc}): {operations}") from None
        return "200 patched"
    if not allowed:
        return "200 denied"
    message = (response.get("status") or {}).get("message", "")
    return "200 allowed, malformed" if message.startswith("malformed request") else "200 allowed"


class LogRecorder:
    """Stands in for the app's structlog logger: keeps the level and whether a traceback was attached."""

    def __init__(self) -> None:
        self.levels: Counter[str] = Counter()
        self.bad: list[str] = []

    def _record(self, level: str, event: str, **fields: Any) -> None:
        self.levels[level] += 1
        if level in ("error", "critical", "exception") or fields.get("exc_info"):
            self.bad.append(f"{level}: {event} {fields}")

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self._record(level, event, **fields)


class _Tracebacks(logging.Handler):
    """Python logging (aiohttp's own 'Error handling request'): anything at error or with exc_info."""

    def __init__(self, bad: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.bad = bad

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.bad.append(f"{record.name}: {record.getMessage()}")


# -- the run ------------------------------------------------------------------------------------
BATCH = 32  # bodies per hypothesis example, sent concurrently


def make_routes() -> Any:
    from injector.core.identity import service_account_entry
    from injector.core.settings import ServeSettings
    from injector.server.metrics import Metrics
    from injector.server.routes import ServerState, webhook_routes
    from injector.sources.store import IdentityStore

    serve = ServeSettings(max_request_bytes=LIMIT)
    store = IdentityStore(serve.mutation)
    store.replace_service_accounts({
        "default/my-app": service_account_entry({"eks.amazonaws.com/role-arn": ROLE}, serve.mutation),
        "default/default": service_account_entry({}, serve.mutation)})
    store.replace_pod_identities(frozenset({("default", "cc")}))
    return webhook_routes(ServerState(serve, store, None, Metrics()))


def run(total: int, *, seed: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Send `total` fuzzed bodies (rounded up to a whole batch) through the app in process;
    returns the counts. A broken contract raises (after hypothesis has shrunk the case)."""
    from aiohttp.test_utils import TestClient

    import injector.server.routes

    from serving import RoutesTestServer

    recorder = LogRecorder()
    handler = _Tracebacks(recorder.bad)
    outcomes: Counter[str] = Counter()
    shapes: Counter[str] = Counter()
    loop = asyncio.new_event_loop()

    async def start() -> TestClient:
        test_client = TestClient(RoutesTestServer(make_routes()))
        await test_client.start_server()
        return test_client

    client = loop.run_until_complete(start())
    saved_log, injector.server.routes.log = injector.server.routes.log, recorder
    logging.getLogger().addHandler(handler)
    started = time.monotonic()

    async def send(case: Case) -> str:
        _, body, content_type, sent = case
        response = await client.post("/mutate", data=body, headers={"Content-Type": content_type})
        return check_answer(response.status, await response.read(), content_type, sent)

    @settings(max_examples=-(-total // BATCH), deadline=None, database=None, derandomize=seed is not None,
              phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))
    @given(examples)
    def fuzz(example: tuple[list[Any], bytes, int]) -> None:
        batch = batch_of(example, BATCH)
        bad_before = len(recorder.bad)
        async def send_all() -> list[str]:
            return await asyncio.gather(*(send(case) for case in batch))

        results = loop.run_until_complete(send_all())
        if len(recorder.bad) > bad_before:
            raise ContractBroken(f"logged above warning or with a traceback: {recorder.bad[bad_before:]}")
        outcomes.update(results)
        shapes.update(case[0] for case in batch)
        done = sum(outcomes.values())
        if progress and done % 50_000 < BATCH:
            print(f"  {done} cases, {done / (time.monotonic() - started):.0f}/s", file=sys.stderr, flush=True)

    try:
        fuzz()
    finally:
        injector.server.routes.log = saved_log
        logging.getLogger().removeHandler(handler)
        loop.run_until_complete(client.close())
        loop.close()
    cases_sent = sum(outcomes.values())
    return {"cases": cases_sent, "seconds": round(time.monotonic() - started, 1),
            "outcomes": dict(sorted(outcomes.items())), "shapes": dict(sorted(shapes.items())),
            "log_levels": dict(sorted(recorder.levels.items())),
            "5xx": sum(n for k, n in outcomes.items() if k.startswith("5")), "tracebacks": len(recorder.bad)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=None, help="derandomize (same cases every run)")
    args = parser.parse_args()
    result = run(args.cases, seed=args.seed, progress=True)
    print(json.dumps(result, indent=2))
    return 0 if result["5xx"] == 0 and result["tracebacks"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
