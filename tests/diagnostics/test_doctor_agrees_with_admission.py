"""`doctor` and the admission tell the same story (docs/mutation.md#warnings).

For every planner fixture whose pod has an identity, `doctor` diagnoses the pod as it arrives
(not yet admitted) with the same ServiceAccount, ConfigMap and identities, and the admission
plans it. The pod and the containers the admission warns about must be exactly those `doctor`
flags (warn or fail) in its pod and containers sections. A few of doctor's findings are
deliberately doctor-only (DOCTOR_ONLY, with why). And whatever a pod asked for, no container
leaves the admission with a token-file variable naming our file without our mount.
"""

from __future__ import annotations

import re

import jsonpatch
import pytest

from injector.core import identity, planner
from injector.diagnostics import doctor

from planner_cases import Case, load_cases, settings_for, tables_for

# doctor's findings that the admission does not warn about, on purpose:
DOCTOR_ONLY = {
    "sdk-no-region": "most nodes give SDKs their region through instance metadata; a warning on "
                     "every such pod would be noise",
    "env-from": "the referenced ConfigMaps and Secrets are not read at admission",
    "container-skipped": "the pod's own annotation asked for it",
    "sdk-global-sts": "the container chose the global STS endpoint itself, and it works",
}
# The pod-level warnings' openings; every other plan warning starts with `container NAME`.
_CONTAINER = re.compile(r"container ([^\s:]+)[\s:]")


def _cases_with_identity() -> list[tuple[Case, identity.Resolution]]:
    found = []
    for case in load_cases():
        settings = settings_for(case)
        resolution = identity.resolve(case.namespace, case.service_account_name, tables_for(case, settings),
                                      settings)
        if resolution.identity is not None:
            found.append((case, resolution))
    return found


CASES = _cases_with_identity()
IDS = [case.id for case, _ in CASES]


def _doctor_case(case: Case) -> doctor.Case:
    settings = settings_for(case)
    tables = tables_for(case, settings)
    service_account = None
    if "serviceAccount" in case.data:
        service_account = {"metadata": {"name": case.service_account_name, "namespace": case.namespace,
                                        **(case.data["serviceAccount"] or {})}}
    return doctor.Case(pod=case.pod, namespace=case.namespace, service_account=service_account, settings=settings,
                       config_map=tables.config_map, pod_identities=tables.pod_identities)


def _plan(case: Case, resolution: identity.Resolution) -> planner.Plan:
    return planner.plan_mutation(case.pod, resolution.identity, settings_for(case), jitter=lambda low, high: high)


def admission_subjects(plan: planner.Plan) -> set[str]:
    """"pod", or the container each of the plan's warnings is about."""
    return {match.group(1) if (match := _CONTAINER.match(w)) else "pod" for w in plan.warnings}


def doctor_subjects(report: doctor.Report) -> set[str]:
    return {str(f.details.get("container", "pod")) for f in report.findings
            if f.section in ("pod", "containers") and f.status in (doctor.WARN, doctor.FAIL)
            and f.code not in DOCTOR_ONLY}


@pytest.mark.parametrize(("case", "resolution"), CASES, ids=IDS)
def test_the_admission_warns_about_exactly_what_doctor_flags(case: Case, resolution: identity.Resolution):
    report = doctor.diagnose(_doctor_case(case))
    flagged = {f.code: f.message for f in report.findings if f.section in ("pod", "containers")
               and f.status in (doctor.WARN, doctor.FAIL) and f.code not in DOCTOR_ONLY}
    assert admission_subjects(_plan(case, resolution)) == doctor_subjects(report), (
        f"admission warnings: {_plan(case, resolution).warnings}; doctor: {flagged}")


@pytest.mark.parametrize(("case", "resolution"), CASES, ids=IDS)
def test_no_container_names_our_token_file_without_our_mount(case: Case, resolution: identity.Resolution):
    settings = settings_for(case)
    plan = _plan(case, resolution)
    pod = jsonpatch.apply_patch(case.pod, plan.operations) if plan.operations else case.pod
    if plan.blocked:
        return  # nothing injected, on purpose (§volume-collision); doctor fails it
    cc = resolution.identity.mode is identity.Mode.CONTAINER_CREDENTIALS
    variable = planner.AUTHORIZATION_TOKEN_FILE if cc else planner.WEB_IDENTITY_TOKEN_FILE
    volume = settings.cc_volume_name if cc else "aws-iam-token"
    for _, container in doctor.containers_of(pod["spec"]):
        env = doctor.env_of(container)
        mounts = {m.get("name") for m in container.get("volumeMounts") or ()}
        if env.get(variable, "").replace("\\", "/").removeprefix("C:").startswith(
                (settings.cc_mount_path if cc else settings.token_mount_path) + "/"):
            assert volume in mounts, f"container {container.get('name')}: {variable} without the {volume} mount"


def test_the_doctor_only_findings_say_why():
    assert all(len(why) > 20 for why in DOCTOR_ONLY.values())
