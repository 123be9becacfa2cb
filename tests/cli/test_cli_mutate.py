"""The offline `mutate` command (README, "See what the webhook would do, offline") on every planner fixture,
through the real console entry point: identity inputs are materialised as the files a user
would pass (ServiceAccount manifest, `pod-identity-webhook` ConfigMap, identities JSON).

Every output form must describe the same resulting pod as the fixture; bad input exits 2
with one line on stderr naming the file and nothing on stdout.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from planner_cases import JITTER_CEILING, JITTER_FLOOR, Case, load_cases

CASES = load_cases()
IDS = [case.id for case in CASES]
OUTPUTS = ("pod", "patch", "review")
# `-o yaml` renders the same pod as `-o pod`; a sample of the fixtures keeps the run short.
YAML_CASES = CASES[::6]


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str | Path, stdin: str | None = None) -> Run:
    proc = subprocess.run(
        [sys.executable, "-m", "injector", "mutate", *map(str, args)],
        capture_output=True, text=True, input=stdin, timeout=60, check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def run_main(*args: str | Path) -> Run:
    """The same command through `injector.cli.main.main` in this process: what the console entry
    point runs, without the interpreter start-up (about 0.5 s of CPU per call)."""
    from injector.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["mutate", *map(str, args)])
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return Run(code, out.getvalue(), err.getvalue())


def write_inputs(case: Case, directory: Path) -> list[str]:
    """The case's identity inputs as files; returns the identity-source arguments."""
    directory.mkdir(parents=True, exist_ok=True)
    args = ["--namespace", case.namespace]
    if "serviceAccount" in case.data:
        manifest = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": case.service_account_name, "namespace": case.namespace},
        }
        annotations = (case.data["serviceAccount"] or {}).get("annotations")
        if annotations:
            manifest["metadata"]["annotations"] = annotations
        path = directory / "serviceaccount.yaml"
        path.write_text(yaml.safe_dump(manifest), encoding="utf-8")
        args += ["--service-account", str(path)]
    if "configMap" in case.data:
        manifest = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "pod-identity-webhook", "namespace": "eks"},
            "data": {"config": json.dumps(case.data["configMap"])},
        }
        path = directory / "configmap.yaml"
        path.write_text(yaml.safe_dump(manifest), encoding="utf-8")
        args += ["--config-map", str(path)]
    if case.data.get("podIdentity"):
        path = directory / "identities.json"
        identities = [{"namespace": case.namespace, "serviceAccount": case.service_account_name}]
        path.write_text(json.dumps({"identities": identities}), encoding="utf-8")
        args += ["--container-credentials-config", str(path)]
    return args


def review_document(case: Case, api_version: str) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "request": {
            "uid": f"uid-{case.id}",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": case.namespace,
            "operation": "CREATE",
            "object": case.pod,
        },
    }


def review_version(case: Case) -> str:
    """Alternate v1 and v1beta1 AdmissionReviews across the fixtures."""
    return "admission.k8s.io/v1" if IDS.index(case.id) % 2 == 0 else "admission.k8s.io/v1beta1"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[tuple[str, str], Run]:
    """Every fixture through the output forms, once for the module. The `-o yaml` sample runs
    the real console entry point (subprocesses, concurrently); the other forms call its `main`
    in process, which keeps the module at seconds instead of a minute of CPU."""
    root = tmp_path_factory.mktemp("cli")
    jobs = {}
    for case in CASES:
        directory = root / case.id
        identity_args = write_inputs(case, directory)
        pod_file = directory / "pod.yaml"
        pod_file.write_text(yaml.safe_dump(case.pod, sort_keys=False), encoding="utf-8")
        review_file = directory / "review.json"
        review_file.write_text(json.dumps(review_document(case, review_version(case))), encoding="utf-8")
        outputs = (*OUTPUTS, "yaml") if case in YAML_CASES else OUTPUTS
        for output in outputs:
            source = review_file if output == "review" else pod_file
            jobs[(case.id, output)] = ["-f", source, *identity_args, *case.flags, "-o", output]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {key: pool.submit(run_cli, *args) for key, args in jobs.items() if key[1] == "yaml"}
        results = {key: run_main(*args) for key, args in jobs.items() if key[1] != "yaml"}
        return results | {key: future.result() for key, future in futures.items()}


def ok(run: Run) -> str:
    assert run.returncode == 0, run.stderr
    return run.stdout


def normalise_jitter(pod: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """Where the fixture pins the container-credentials jitter to 79200, accept any value in
    [79200, 86400] (§container-credentials) and substitute 79200 for the comparison."""
    pod = copy.deepcopy(pod)
    got_volumes = (pod.get("spec") or {}).get("volumes") or []
    want_volumes = (expected.get("spec") or {}).get("volumes") or []
    for got, want in zip(got_volumes, want_volumes, strict=False):
        got_sources = ((got.get("projected") or {}).get("sources")) or []
        want_sources = ((want.get("projected") or {}).get("sources")) or []
        for got_source, want_source in zip(got_sources, want_sources, strict=False):
            want_token = want_source.get("serviceAccountToken") or {}
            got_token = got_source.get("serviceAccountToken") or {}
            if want_token.get("expirationSeconds") == JITTER_FLOOR and "expirationSeconds" in got_token:
                assert JITTER_FLOOR <= got_token["expirationSeconds"] <= JITTER_CEILING
                got_token["expirationSeconds"] = JITTER_FLOOR
    return pod


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_pod_output_is_the_expected_pod(case: Case, runs):
    result = json.loads(ok(runs[(case.id, "pod")]))
    assert normalise_jitter(result, case.expected) == case.expected


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_patch_output_applies_to_the_expected_pod(case: Case, runs):
    """`-o patch` prints the JSON Patch array, `[]` when nothing changes."""
    operations = json.loads(ok(runs[(case.id, "patch")]))
    assert isinstance(operations, list)
    assert bool(operations) == case.changes
    result = jsonpatch.apply_patch(case.pod, operations)
    assert normalise_jitter(result, case.expected) == case.expected


@pytest.mark.parametrize("case", YAML_CASES, ids=[case.id for case in YAML_CASES])
def test_yaml_output_parses_to_the_expected_pod(case: Case, runs):
    result = yaml.safe_load(ok(runs[(case.id, "yaml")]))
    assert normalise_jitter(result, case.expected) == case.expected


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_review_output_echoes_the_request_and_carries_the_patch(case: Case, runs):
    """§answers: apiVersion and kind are echoed, response.uid = request.uid, allowed; the patch is
    base64 JSON Patch with patchType JSONPatch, and absent when nothing changes (§answers)."""
    review = json.loads(ok(runs[(case.id, "review")]))
    assert review["apiVersion"] == review_version(case)
    assert review["kind"] == "AdmissionReview"
    response = review["response"]
    assert response["uid"] == f"uid-{case.id}"
    assert response["allowed"] is True
    if case.changes:
        assert response["patchType"] == "JSONPatch"
        operations = json.loads(base64.b64decode(response["patch"]))
        result = jsonpatch.apply_patch(case.pod, operations)
        assert normalise_jitter(result, case.expected) == case.expected
    else:
        assert "patch" not in response
        assert "patchType" not in response


BASELINE = next(case for case in CASES if case.id == "wi-baseline-creates-volumes")


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_review_output_for_both_admission_versions(api_version: str, tmp_path: Path):
    identity_args = write_inputs(BASELINE, tmp_path)
    review_file = tmp_path / "review.yaml"
    review_file.write_text(yaml.safe_dump(review_document(BASELINE, api_version)), encoding="utf-8")
    review = json.loads(ok(run_cli("-f", review_file, *identity_args, "-o", "review")))
    assert (review["apiVersion"], review["kind"], review["response"]["uid"]) == (
        api_version, "AdmissionReview", "uid-wi-baseline-creates-volumes",
    )
    operations = json.loads(base64.b64decode(review["response"]["patch"]))
    assert jsonpatch.apply_patch(BASELINE.pod, operations) == BASELINE.expected


def test_pod_from_standard_input(tmp_path: Path):
    identity_args = write_inputs(BASELINE, tmp_path)
    run = run_cli("-f", "-", *identity_args, "-o", "pod", stdin=json.dumps(BASELINE.pod))
    assert json.loads(ok(run)) == BASELINE.expected


def test_json_pod_file(tmp_path: Path):
    identity_args = write_inputs(BASELINE, tmp_path)
    pod_file = tmp_path / "pod.json"
    pod_file.write_text(json.dumps(BASELINE.pod), encoding="utf-8")
    assert json.loads(ok(run_cli("-f", pod_file, *identity_args, "-o", "pod"))) == BASELINE.expected


def test_pod_output_keeps_unquoted_yaml_timestamps_as_written(tmp_path: Path):
    """§fine-grained: fields we do not own come back verbatim. An unquoted YAML
    timestamp is the string the API server would see ("...Z"), not a re-rendered datetime."""
    identity_args = write_inputs(BASELINE, tmp_path)
    pod_file = tmp_path / "pod.yaml"
    text = yaml.safe_dump(BASELINE.pod, sort_keys=False).replace(
        "metadata:\n", "metadata:\n  creationTimestamp: 2024-05-01T10:00:00Z\n", 1
    )
    pod_file.write_text(text, encoding="utf-8")
    result = json.loads(ok(run_cli("-f", pod_file, *identity_args, "-o", "pod")))
    assert result["metadata"]["creationTimestamp"] == "2024-05-01T10:00:00Z"


# --- bad input: exit 2, one line on stderr naming the file, nothing on stdout ------------------


def assert_rejected(run: Run, path: Path) -> None:
    assert run.returncode == 2
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert str(path) in lines[0]


POD_YAML = yaml.safe_dump(BASELINE.pod)


def test_missing_pod_file_is_rejected(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    assert_rejected(run_cli("-f", missing), missing)


def test_invalid_yaml_is_rejected(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nspec: [unclosed\n  containers: {\n", encoding="utf-8")
    assert_rejected(run_cli("-f", bad), bad)


def test_deployment_instead_of_pod_is_rejected(tmp_path: Path):
    deployment = tmp_path / "deployment.yaml"
    deployment.write_text(
        yaml.safe_dump({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"template": {"spec": BASELINE.pod["spec"]}},
        }),
        encoding="utf-8",
    )
    assert_rejected(run_cli("-f", deployment), deployment)


@pytest.mark.parametrize(
    "config",
    [
        '{"default/orders": {"RoleARN": ',
        '{"default/orders": {"RoleARN": 42}}',
        '{"default/orders": {"TokenExpiration": "3600"}}',
        '["default/orders"]',
    ],
    ids=["truncated-json", "role-not-a-string", "expiration-not-a-number", "not-an-object"],
)
def test_malformed_config_map_config_is_rejected(config: str, tmp_path: Path):
    pod = tmp_path / "pod.yaml"
    pod.write_text(POD_YAML, encoding="utf-8")
    config_map = tmp_path / "configmap.yaml"
    config_map.write_text(
        yaml.safe_dump({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "pod-identity-webhook"},
            "data": {"config": config},
        }),
        encoding="utf-8",
    )
    assert_rejected(run_cli("-f", pod, "--config-map", config_map), config_map)


def test_missing_service_account_file_is_rejected(tmp_path: Path):
    pod = tmp_path / "pod.yaml"
    pod.write_text(POD_YAML, encoding="utf-8")
    missing = tmp_path / "sa.yaml"
    assert_rejected(run_cli("-f", pod, "--service-account", missing), missing)


def test_malformed_identities_file_is_rejected(tmp_path: Path):
    pod = tmp_path / "pod.yaml"
    pod.write_text(POD_YAML, encoding="utf-8")
    identities = tmp_path / "identities.json"
    identities.write_text('{"identities": [', encoding="utf-8")
    assert_rejected(run_cli("-f", pod, "--container-credentials-config", identities), identities)


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_mutate_tells_everything_serve_tells(case: Case, runs, tmp_path: Path):
    """`mutate -o review` is `serve`'s answer to the same review (the webhook's routes, in
    process, fed the same inputs): the same uid, decision, warnings and resulting pod; and
    every warning is on standard error too."""
    from aiohttp.test_utils import TestClient

    from injector.cli.mutate import build_store
    from injector.cli.parser import build_parser, mutation_settings
    from injector.core.settings import ServeSettings
    from injector.server.metrics import Metrics
    from injector.server.routes import ServerState, webhook_routes

    from serving import RoutesTestServer

    run = runs[(case.id, "review")]
    told = json.loads(ok(run))["response"]
    args = build_parser().parse_args(["mutate", "-f", "-", *write_inputs(case, tmp_path), *case.flags])
    settings = mutation_settings(args)
    state = ServerState(ServeSettings(mutation=settings), build_store(args, settings), None, Metrics())
    async with TestClient(RoutesTestServer(webhook_routes(state))) as client:
        response = await client.post("/mutate", data=json.dumps(review_document(case, review_version(case))),
                                     headers={"Content-Type": "application/json"})
        served = (await response.json())["response"]
    assert {k: v for k, v in told.items() if k != "patch"} == {k: v for k, v in served.items() if k != "patch"}
    if case.changes:
        pods = [normalise_jitter(jsonpatch.apply_patch(case.pod, json.loads(base64.b64decode(r["patch"]))),
                                 case.expected) for r in (told, served)]
        assert pods[0] == pods[1] == case.expected
    assert [line for line in run.stderr.splitlines() if line.startswith("# warning: ")] == [
        f"# warning: {warning}" for warning in served.get("warnings", [])]


def test_a_bad_identities_entry_is_skipped_with_a_warning_and_the_rest_are_used(tmp_path: Path):
    """As `serve` does (docs/reference.md#identity-files), with the warning on stderr."""
    pod = tmp_path / "pod.yaml"
    pod.write_text(POD_YAML, encoding="utf-8")
    identities = tmp_path / "identities.json"
    identities.write_text(json.dumps({"Identities": [
        {"Namespace": BASELINE.namespace, "ServiceAccount": BASELINE.service_account_name},
        {"namespace": 7},
    ]}), encoding="utf-8")
    run = run_main("-f", pod, "--namespace", BASELINE.namespace, "--container-credentials-config", identities)
    assert run.returncode == 0, run.stderr
    assert "AWS_CONTAINER_CREDENTIALS_FULL_URI" in run.stdout
    warnings = [line for line in run.stderr.splitlines() if "warning" in line]
    assert warnings == [f'pod-identity-injector mutate: warning: {identities}: identities[1] {{"namespace":7}} '
                        'skipped: "namespace" must be a string']
