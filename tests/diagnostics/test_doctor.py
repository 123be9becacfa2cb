"""`doctor` offline, one failure cause per test: the finding's code, its status and the exit
code (docs/doctor.md). Pods, ServiceAccounts and policies are files, as a user passes them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from injector.cli import main as cli
from injector.diagnostics.trust_policy import generate

ROLE = "arn:aws:iam::111122223333:role/app"
ISSUER = "https://oidc.example.com/cluster-a"
TOKEN_FILE = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"


def sa(annotations: dict | None = None, name: str = "app", **metadata) -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": "team", "annotations": annotations or {}, **metadata}}


def pod(*, containers: list[dict] | None = None, labels=None, annotations=None, volumes=None, **metadata) -> dict:
    spec: dict = {"serviceAccountName": "app", "containers": containers or [{"name": "app", "image": "x"}]}
    if volumes is not None:
        spec["volumes"] = volumes
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "team", "labels": labels or {}, "annotations": annotations or {},
                         **metadata}, "spec": spec}


class Doctor:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp_path, self.capsys = tmp_path, capsys

    def write(self, name: str, document) -> str:
        path = self.tmp_path / name
        path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
        return str(path)

    def __call__(self, the_pod: dict, *service_accounts: dict, args: tuple[str, ...] = (),
                 policy: dict | None = None) -> tuple[int, dict]:
        argv = ["doctor", "-f", self.write("pod.yaml", the_pod), "-o", "json", *args]
        if service_accounts:
            argv += ["--service-account", self.write("sa.yaml", yaml.safe_dump_all(service_accounts))]
        if policy is not None:
            argv += ["--trust-policy", self.write("policy.json", json.dumps(policy)), "--issuer", ISSUER]
        code = cli.main(argv)
        out = self.capsys.readouterr().out
        report = json.loads(out) if code != 2 else {}
        if report:
            assert report["exitCode"] == code
        return code, report


@pytest.fixture
def doctor(tmp_path, capsys) -> Doctor:
    return Doctor(tmp_path, capsys)


def codes(report: dict, status: str | None = None) -> list[str]:
    return [f["code"] for f in report["findings"] if status is None or f["status"] == status]


def finding(report: dict, code: str) -> dict:
    return next(f for f in report["findings"] if f["code"] == code)


# -- the working case -------------------------------------------------------------------------------
def test_an_annotated_service_account_gives_the_pod_credentials(doctor):
    code, report = doctor(pod(), sa({"eks.amazonaws.com/role-arn": ROLE}), args=("--aws-default-region", "eu-west-1"))
    assert code == 0 and report["credentials"] and report["roleArn"] == ROLE
    assert codes(report, "fail") == [] and codes(report, "warn") == []
    assert {"sa-found", "role-arn-present", "pod-would-be-injected", "sdk-web-identity", "sdk-region",
            "token-projection"} <= set(codes(report))


def test_the_text_form_is_one_line_per_check_with_the_fix(doctor, capsys):
    path = doctor.write("pod.yaml", pod())
    sa_path = doctor.write("sa.yaml", sa({"eks.amazon.com/role-arn": ROLE}))
    assert cli.main(["doctor", "-f", path, "--service-account", sa_path]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "[near-miss-annotation]" in x)
    assert line.startswith("  ✗ annotation 'eks.amazon.com/role-arn' is not read") and "→ fix: rename it" in line
    assert out.splitlines()[-1].startswith("result: no working credentials")


# -- ServiceAccount -----------------------------------------------------------------------------------
def test_a_service_account_not_given_is_not_found(doctor):
    code, report = doctor(pod(), sa(name="other"))
    assert code == 1 and "sa-not-found" in codes(report, "fail")


def test_a_service_account_without_role_arn(doctor):
    code, report = doctor(pod(), sa())
    assert code == 1 and codes(report, "fail") == ["role-arn-missing"]
    assert "kubectl -n team annotate serviceaccount app eks.amazonaws.com/role-arn=" in finding(
        report, "role-arn-missing")["fix"]


def test_other_annotations_of_ours_without_role_arn(doctor):
    code, report = doctor(pod(), sa({"eks.amazonaws.com/audience": "sts.amazonaws.com"}))
    assert code == 1 and codes(report, "fail") == ["annotations-without-role-arn"]


@pytest.mark.parametrize(("key", "why"), [
    ("eks.amazon.com/role-arn", "wrong domain"),
    ("eks.amazonaws.com/Role-Arn", "wrong case"),
    ("eks.amazonaws.com/role_arn", "'role_arn' is not 'role-arn'"),
    ("role-arn", "no prefix"),
    ("eks.amazonaws.com/rolearn", "'rolearn' is not 'role-arn'"),
])
def test_a_near_miss_key_is_named_with_the_key_meant(doctor, key, why):
    code, report = doctor(pod(), sa({key: ROLE}))
    assert code == 1 and codes(report, "fail") == ["near-miss-annotation"]
    found = finding(report, "near-miss-annotation")
    assert why in found["message"] and found["details"] == {"key": key, "expected": "eks.amazonaws.com/role-arn"}


def test_a_near_miss_of_another_key_beside_a_role_is_a_warning(doctor):
    code, report = doctor(pod(), sa({"eks.amazonaws.com/role-arn": ROLE, "eks.amazonaws.com/token_expiration": "1"}))
    assert code == 0 and "near-miss-annotation" in codes(report, "warn")


def test_a_custom_prefix_makes_the_default_one_a_near_miss(doctor):
    code, report = doctor(pod(), sa({"eks.amazonaws.com/role-arn": ROLE}), args=("--annotation-prefix", "example.com"))
    assert code == 1 and "wrong domain" in finding(report, "near-miss-annotation")["message"]


def test_a_role_arn_annotation_on_the_pod_is_pointed_at_the_service_account(doctor):
    code, report = doctor(pod(annotations={"eks.amazonaws.com/role-arn": ROLE}), sa())
    assert code == 1 and "annotation-on-pod" in codes(report, "warn")


@pytest.mark.parametrize(("value", "code"), [
    (ROLE + " ", "role-arn-whitespace"),
    (" " + ROLE, "role-arn-whitespace"),
    ("arn:aws-moon:iam::111122223333:role/app", "role-arn-partition"),
    ("arn:aws:iam::11112222333:role/app", "role-arn-account"),
    ("arn:aws:iam::111122223333:user/app", "role-arn-not-a-role"),
    ("arn:aws:iam:eu-west-1:111122223333:role/app", "role-arn-not-a-role"),
    ("arn:aws:s3:::bucket/role", "role-arn-not-a-role"),
    ("arn:aws:iam::111122223333:role/" + "x" * 65, "role-arn-name"),
    ("arn:aws:iam::111122223333:role/bad name!", "role-arn-whitespace"),
    ("arn:aws:iam::111122223333:role/a$b", "role-arn-name"),
    ("my-app", "role-arn-not-an-arn"),
])
def test_a_malformed_role_arn(doctor, value, code):
    exit_code, report = doctor(pod(), sa({"eks.amazonaws.com/role-arn": value}))
    assert exit_code == 1 and code in codes(report, "fail")


@pytest.mark.parametrize("value", [
    "arn:aws:iam::111122223333:role/app", "arn:aws-cn:iam::111122223333:role/team/a/app",
    "arn:aws-us-gov:iam::111122223333:role/a+b=c,d.e@f_g-h", "arn:aws-iso-b:iam::111122223333:role/app",
])
def test_well_formed_role_arns_pass(doctor, value):
    assert doctor(pod(), sa({"eks.amazonaws.com/role-arn": value}))[0] == 0


def test_a_bare_role_name_is_composed_as_the_webhook_does(doctor):
    code, report = doctor(pod(), sa({"eks.amazonaws.com/role-arn": "app"}),
                          args=("--compose-role-arn", "--aws-account-id", "111122223333"))
    assert code == 0 and report["roleArn"] == ROLE


def test_an_invalid_annotation_value_is_a_warning(doctor):
    code, report = doctor(pod(), sa({"eks.amazonaws.com/role-arn": ROLE, "eks.amazonaws.com/token-expiration": "1h"}))
    assert code == 0 and "annotation-invalid" in codes(report, "warn")


def test_the_config_map_and_pod_identity_count_as_identities(doctor, tmp_path):
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pod-identity-webhook"},
                  "data": {"config": json.dumps({"team/app": {"RoleARN": ROLE}})}}
    code, report = doctor(pod(), sa(), args=("--config-map", doctor.write("cm.yaml", config_map)))
    assert code == 0 and "identity-from-config-map" in codes(report, "ok")
    identities = doctor.write("ids.json", json.dumps({"identities": [{"namespace": "team", "serviceAccount": "app"}]}))
    code, report = doctor(pod(), sa(), args=("--container-credentials-config", identities))
    assert code == 0 and {"identity-pod-identity", "sdk-container-credentials"} <= set(codes(report, "ok"))


# -- the pod ----------------------------------------------------------------------------------------
ANNOTATED = sa({"eks.amazonaws.com/role-arn": ROLE})


def test_the_skip_label_keeps_the_webhook_away(doctor):
    code, report = doctor(pod(labels={"eks.amazonaws.com/skip-pod-identity-webhook": "true"}), ANNOTATED)
    assert code == 1 and codes(report, "fail") == ["pod-skip-label"]


def test_a_stored_pod_created_before_the_annotation(doctor):
    annotated_at = {"manager": "kubectl-annotate", "operation": "Update", "time": "2024-05-02T10:00:00Z",
                    "fieldsV1": {"f:metadata": {"f:annotations": {"f:eks.amazonaws.com/role-arn": {}}}}}
    account = sa({"eks.amazonaws.com/role-arn": ROLE}, managedFields=[
        {"manager": "kubectl-create", "operation": "Update", "time": "2024-05-01T09:00:00Z",
         "fieldsV1": {"f:metadata": {"f:name": {}}}}, annotated_at])
    stored = pod(uid="0c5e…", creationTimestamp="2024-05-01T12:00:00Z")
    code, report = doctor(stored, account)
    assert code == 1 and codes(report, "fail") == ["pod-created-before-annotation", "pod-not-injected"]
    assert "2024-05-02T10:00:00Z" in finding(report, "pod-created-before-annotation")["message"]


def test_a_stored_pod_not_mutated_for_no_visible_reason_was_missed_by_the_webhook(doctor):
    code, report = doctor(pod(uid="u", creationTimestamp="2024-05-03T12:00:00Z"), ANNOTATED)
    assert code == 1 and codes(report, "fail") == ["pod-missed-by-webhook", "pod-not-injected"]


def test_a_stored_pod_that_was_mutated(doctor, tmp_path):
    import subprocess

    mutated = subprocess.run([sys.executable, "-m", "injector", "mutate", "-f", doctor.write("p.yaml", pod()),
                              "--service-account", doctor.write("s.yaml", ANNOTATED), "-o", "yaml"],
                             capture_output=True, text=True, check=True).stdout
    stored = yaml.safe_load(mutated)
    stored["metadata"]["uid"] = "u"
    code, report = doctor(stored, ANNOTATED)
    assert code == 0 and "pod-injected" in codes(report, "ok")


def test_a_volume_named_like_the_token_volume(doctor):
    the_pod = pod(volumes=[{"name": "aws-iam-token", "emptyDir": {}}])
    code, report = doctor(the_pod, ANNOTATED)
    assert code == 1 and codes(report, "fail") == ["volume-name-collision"]  # not repeated per container
    assert "emptyDir" in finding(report, "volume-name-collision")["message"]


def test_a_volume_named_like_the_token_volume_is_not_called_injected(doctor):
    """Offline and stored alike: the collision is the reason, never an OK that the pod is (or
    would be) injected."""
    volumes = [{"name": "aws-iam-token", "emptyDir": {}}]
    code, report = doctor(pod(volumes=volumes), ANNOTATED)
    assert code == 1 and "pod-already-injected" not in codes(report)
    code, report = doctor(pod(uid="u", creationTimestamp="2024-05-03T12:00:00Z", volumes=volumes), ANNOTATED)
    assert code == 1 and codes(report, "fail") == ["volume-name-collision", "pod-not-injected"]
    assert finding(report, "pod-not-injected")["details"]["causes"] == ["volume-name-collision"]
    assert "pod-injected" not in codes(report)


def test_a_pod_pinned_to_windows_by_node_affinity_reads_the_windows_token_path(doctor):
    """doctor plans with the planner, so it sees the C: path the webhook injects (§windows)."""
    the_pod = pod()
    the_pod["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]}]}}}
    code, report = doctor(the_pod, ANNOTATED)
    assert code == 0 and codes(report, "fail") == []
    assert "C:\\var\\run\\secrets\\eks.amazonaws.com\\serviceaccount\\token" in \
        finding(report, "sdk-web-identity")["message"]


def test_a_preset_role_arn_blocks_the_pair(doctor):
    the_pod = pod(containers=[{"name": "app", "env": [{"name": "AWS_ROLE_ARN", "value": ROLE}]}])
    code, report = doctor(the_pod, ANNOTATED)
    assert code == 1 and codes(report, "fail") == ["env-preset"]


def test_everything_preset_gets_the_mount_go_would_leave_out_with_a_warning(doctor):
    """§env (ours): the early exit no longer leaves the env naming a file that is not there."""
    env = [{"name": "AWS_ROLE_ARN", "value": ROLE}, {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": TOKEN_FILE},
           {"name": "AWS_REGION", "value": "eu-west-1"}, {"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"}]
    code, report = doctor(pod(containers=[{"name": "app", "env": env}]), ANNOTATED)
    assert code == 0 and codes(report, "warn") == ["token-mount-added"]
    assert "sdk-web-identity" in codes(report, "ok")


def test_a_preset_token_file_that_nothing_mounts_fails(doctor):
    env = [{"name": "AWS_ROLE_ARN", "value": ROLE}, {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/mine/token"},
           {"name": "AWS_REGION", "value": "eu-west-1"}, {"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"}]
    code, report = doctor(pod(containers=[{"name": "app", "env": env}]), ANNOTATED)
    assert code == 1 and codes(report, "fail") == ["env-preset"]
    assert "no volume is mounted" in finding(report, "env-preset")["message"]


def test_a_host_network_pod_is_warned_about(doctor):
    the_pod = pod()
    the_pod["spec"]["hostNetwork"] = True
    code, report = doctor(the_pod, ANNOTATED)
    assert code == 0 and "host-network" in codes(report, "warn")


def test_a_skipped_container_has_no_credentials_and_a_misspelt_name_is_reported(doctor):
    the_pod = pod(containers=[{"name": "app"}, {"name": "proxy"}],
                  annotations={"eks.amazonaws.com/skip-containers": "proxy,prxy"})
    code, report = doctor(the_pod, ANNOTATED)
    assert code == 0 and {"container-skipped", "skip-containers-unknown"} <= set(codes(report, "warn"))
    every = pod(annotations={"eks.amazonaws.com/skip-containers": "app"})
    code, report = doctor(every, ANNOTATED)
    assert code == 1 and codes(report, "fail") == ["no-container-has-credentials"]


def test_include_containers_leaves_out_every_other_container_as_the_webhook_does(doctor):
    """§include-containers: doctor runs the same choice as the planner; skip wins."""
    the_pod = pod(containers=[{"name": "app"}, {"name": "proxy"}, {"name": "logger"}],
                  annotations={"eks.amazonaws.com/include-containers": "app,proxy,ghost",
                               "eks.amazonaws.com/skip-containers": "proxy"})
    code, report = doctor(the_pod, ANNOTATED)
    assert code == 0 and "include-containers-unknown" in codes(report, "warn")
    left_out = {f["details"]["container"]: f["message"] for f in report["findings"] if f["code"] == "container-skipped"}
    assert set(left_out) == {"proxy", "logger"}
    assert "is in skip-containers" in left_out["proxy"] and "is not in include-containers" in left_out["logger"]
    nobody = pod(annotations={"eks.amazonaws.com/include-containers": "ghost"})
    code, report = doctor(nobody, ANNOTATED)
    assert code == 1 and codes(report, "fail") == ["no-container-has-credentials"]


def test_static_keys_beat_web_identity(doctor):
    the_pod = pod(containers=[{"name": "app", "env": [{"name": "AWS_ACCESS_KEY_ID", "value": "AKIA…"}]}])
    code, report = doctor(the_pod, ANNOTATED)
    assert code == 1 and "sdk-static-keys" in codes(report, "fail")


def test_a_profile_may_beat_web_identity(doctor):
    the_pod = pod(containers=[{"name": "app", "env": [{"name": "AWS_PROFILE", "value": "dev"}],
                               "envFrom": [{"secretRef": {"name": "aws"}}]}])
    code, report = doctor(the_pod, ANNOTATED)
    assert code == 0 and {"sdk-profile", "env-from", "sdk-no-region"} <= set(codes(report, "warn"))


# -- the token --------------------------------------------------------------------------------------
def test_an_unusual_audience_is_a_warning_and_an_empty_one_a_failure(doctor):
    code, report = doctor(pod(), sa({"eks.amazonaws.com/role-arn": ROLE, "eks.amazonaws.com/audience": "mine"}))
    assert code == 0 and "token-audience-unusual" in codes(report, "warn")
    code, report = doctor(pod(), sa({"eks.amazonaws.com/role-arn": ROLE, "eks.amazonaws.com/audience": ""}))
    assert code == 1 and "token-audience-empty" in codes(report, "fail")


@pytest.mark.parametrize(("issuer", "code", "status"), [
    ("http://oidc.example.com", "issuer-not-https", "fail"),
    ("https://kubernetes.default.svc.cluster.local", "issuer-private", "warn"),
    ("https://10.0.0.1:6443", "issuer-private", "warn"),
    ("https://127.0.0.1:6443", "issuer-private", "warn"),
    ("https://oidc.eks.eu-west-1.amazonaws.com/id/ABCDEF0123456789", "issuer-ok", "ok"),
    (ISSUER, "issuer-ok", "ok"),
])
def test_the_issuer(doctor, issuer, code, status):
    exit_code, report = doctor(pod(), ANNOTATED, args=("--issuer", issuer))
    assert finding(report, code)["status"] == status
    assert exit_code == (1 if status == "fail" else 0)


# -- the trust policy -------------------------------------------------------------------------------
def test_a_generated_trust_policy_is_accepted_round_trip(doctor, capsys):
    assert cli.main(["trust-policy", "--issuer", ISSUER, "--account", "111122223333", "team:app", "x:y"]) == 0
    generated = json.loads(capsys.readouterr().out)
    assert generated == generate(ISSUER, "111122223333", [("team", "app"), ("x", "y")])
    code, report = doctor(pod(), ANNOTATED, policy=generated)
    assert code == 0 and "trust-policy-allows" in codes(report, "ok")


def _policy(sub: str = "system:serviceaccount:team:app", **statement) -> dict:
    body = {"Effect": "Allow", "Principal": {"Federated": "arn:aws:iam::111122223333:oidc-provider/"
                                                          "oidc.example.com/cluster-a"},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {"oidc.example.com/cluster-a:sub": sub}}, **statement}
    return {"Statement": [body]}


@pytest.mark.parametrize(("policy", "code", "error"), [
    (_policy("system:serviceaccount:team:other"), "trust-policy-condition", "Not authorized"),
    (_policy(Principal={"Federated": "arn:aws:iam::999999999999:oidc-provider/oidc.example.com/cluster-a"}),
     "trust-policy-principal", "No OpenIDConnect provider found"),
    (_policy(Action="sts:AssumeRole"), "trust-policy-action", "Not authorized"),
    ({"Statement": [*_policy()["Statement"], {**_policy()["Statement"][0], "Effect": "Deny"}]},
     "trust-policy-explicit-deny", "Not authorized"),
    ({"Statement": []}, "trust-policy-no-statement", "Not authorized"),
])
def test_a_trust_policy_that_refuses(doctor, policy, code, error):
    exit_code, report = doctor(pod(), ANNOTATED, policy=policy)
    assert exit_code == 1 and codes(report, "fail") == [code]
    assert error in finding(report, code)["message"]


def pod_identity(doctor: Doctor, policy: dict) -> tuple[int, dict]:
    """A container-credentials (EKS Pod Identity) pod checked against `policy`."""
    identities = doctor.write("ids.json", json.dumps({"identities": [{"namespace": "team", "serviceAccount": "app"}]}))
    return doctor(pod(), sa(), args=("--container-credentials-config", identities), policy=policy)


def test_a_generated_pod_identity_trust_policy_is_accepted_round_trip(doctor, capsys):
    assert cli.main(["trust-policy", "--pod-identity", "--account", "111122223333"]) == 0
    generated = json.loads(capsys.readouterr().out)
    assert generated["Statement"] == [{
        "Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
        "Action": ["sts:AssumeRole", "sts:TagSession"],
        "Condition": {"StringEquals": {"aws:SourceAccount": "111122223333"}}}]
    code, report = pod_identity(doctor, generated)
    assert code == 0 and "trust-policy-pod-identity-allows" in codes(report, "ok")


def _service_policy(**statement) -> dict:
    return {"Statement": [{"Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
                           "Action": ["sts:AssumeRole", "sts:TagSession"], **statement}]}


@pytest.mark.parametrize(("policy", "code"), [
    (_service_policy(Action="sts:AssumeRole"), "trust-policy-tag-session"),  # eks-pod-identity-agent #80
    (_service_policy(Action="sts:TagSession"), "trust-policy-action"),
    (_service_policy(Principal={"Service": "ec2.amazonaws.com"}), "trust-policy-pod-identity-principal"),
    ({"Statement": [*_service_policy()["Statement"], {**_service_policy()["Statement"][0], "Effect": "Deny",
                                                       "Action": "sts:TagSession"}]}, "trust-policy-explicit-deny"),
])
def test_a_pod_identity_trust_policy_that_refuses(doctor, policy, code):
    exit_code, report = pod_identity(doctor, policy)
    assert exit_code == 1 and codes(report, "fail") == [code]
    assert "trust-policy --pod-identity" in finding(report, code)["fix"]


def test_a_wildcard_action_covers_both(doctor):
    code, report = pod_identity(doctor, _service_policy(Action="sts:*"))
    assert code == 0 and "trust-policy-pod-identity-allows" in codes(report, "ok")


SOURCE_ROLE = "arn:aws:iam::111122223333:role/pod-identity-app"


def chained(doctor: Doctor, target: dict, *, role: str = SOURCE_ROLE) -> tuple[int, dict]:
    """A Pod Identity pod whose association chains from `role` to a target role trusting `target`."""
    identities = doctor.write("ids.json", json.dumps({"identities": [{"namespace": "team", "serviceAccount": "app"}]}))
    args = ("--container-credentials-config", identities, "--target-trust-policy",
            doctor.write("target.json", json.dumps(target)), *(("--role-arn", role) if role else ()))
    return doctor(pod(), sa(), args=args)


def _target_policy(**statement) -> dict:
    return {"Statement": [{"Effect": "Allow", "Principal": {"AWS": SOURCE_ROLE},
                           "Action": ["sts:AssumeRole", "sts:TagSession"], **statement}]}


def test_a_generated_target_role_trust_policy_lets_the_chain_through(doctor, capsys):
    assert cli.main(["trust-policy", "--pod-identity", "--account", "444455556666",
                     "--chained-from", SOURCE_ROLE]) == 0
    generated = json.loads(capsys.readouterr().out)
    assert generated["Statement"] == [{"Effect": "Allow", "Principal": {"AWS": SOURCE_ROLE},
                                       "Action": ["sts:AssumeRole", "sts:TagSession"]}]
    code, report = chained(doctor, generated)
    assert code == 0 and "target-trust-policy-allows" in codes(report, "ok")


@pytest.mark.parametrize(("target", "code"), [
    # Role chaining passes the session tags EKS set on: without TagSession the agent's
    # AssumeRole is refused (eks-pod-identity-agent #80).
    (_target_policy(Action="sts:AssumeRole"), "target-trust-policy-tag-session"),
    (_target_policy(Action="sts:TagSession"), "target-trust-policy-action"),
    (_target_policy(Principal={"AWS": "arn:aws:iam::111122223333:role/someone-else"}),
     "target-trust-policy-principal"),
    (_target_policy(Principal={"Service": "pods.eks.amazonaws.com"}), "target-trust-policy-principal"),
    ({"Statement": [*_target_policy()["Statement"], {**_target_policy()["Statement"][0], "Effect": "Deny"}]},
     "target-trust-policy-explicit-deny"),
])
def test_a_target_role_that_refuses_the_chain(doctor, target, code):
    exit_code, report = chained(doctor, target)
    assert exit_code == 1 and codes(report, "fail") == [code]
    assert f"--chained-from {SOURCE_ROLE}" in finding(report, code)["fix"]


@pytest.mark.parametrize("principal", ["111122223333", "arn:aws:iam::111122223333:root", "*"])
def test_a_target_role_trusting_the_whole_source_account_allows_the_chain(doctor, principal):
    code, report = chained(doctor, _target_policy(Principal={"AWS": [principal]}))
    assert code == 0 and "target-trust-policy-allows" in codes(report, "ok")


def test_a_target_policy_without_the_association_role_is_a_warning_not_a_guess(doctor):
    code, report = chained(doctor, _target_policy(), role="")
    assert code == 0 and "target-chain-unchecked" in codes(report, "warn")


@pytest.mark.parametrize("argv, says", [
    (["--pod-identity", "--account", "111122223333", "--chained-from", "not-an-arn"], "is not an IAM role ARN"),
    (["--account", "111122223333", "--chained-from", SOURCE_ROLE, "team:app"], "goes with --pod-identity"),
    (["--pod-identity", "--account", "111122223333", "team:app"], "takes no NAMESPACE:SERVICEACCOUNT"),
    (["--account", "111122223333"], "name at least one NAMESPACE:SERVICEACCOUNT"),
])
def test_trust_policy_refuses_what_it_cannot_write(argv, says, capsys):
    assert cli.main(["trust-policy", *argv]) == 2
    assert says in capsys.readouterr().err


def test_the_failing_condition_shows_both_values(doctor):
    _, report = doctor(pod(), ANNOTATED, policy=_policy("system:serviceaccount:team:other"))
    message = finding(report, "trust-policy-condition")["message"]
    assert 'policy "system:serviceaccount:team:other", token "system:serviceaccount:team:app"' in message


def test_fetch_trust_policy_reads_the_role_through_iam(doctor, monkeypatch):
    moto = pytest.importorskip("moto")
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    with moto.mock_aws():
        import boto3

        boto3.client("iam").create_role(RoleName="app", AssumeRolePolicyDocument=json.dumps(
            generate(ISSUER, "123456789012", [("team", "app")])))
        role = boto3.client("iam").get_role(RoleName="app")["Role"]["Arn"]
        code, report = doctor(pod(), sa({"eks.amazonaws.com/role-arn": role}),
                              args=("--fetch-trust-policy", "--issuer", ISSUER))
    assert code == 0 and "trust-policy-allows" in codes(report, "ok")


# -- usage errors: exit 2 ---------------------------------------------------------------------------
def test_usage_errors_exit_2_with_one_line(doctor, capsys, monkeypatch):
    pod_file = doctor.write("pod.yaml", pod())
    sa_file = doctor.write("sa.yaml", ANNOTATED)
    cases = [
        ["doctor"],
        ["doctor", "-f", str(doctor.tmp_path / "missing.yaml")],
        ["doctor", "-f", doctor.write("cm.yaml", {"kind": "ConfigMap"})],
        ["doctor", "-f", pod_file, "--service-account", pod_file],
        ["doctor", "-f", pod_file, "--service-account", sa_file, "--trust-policy", doctor.write("p.json", "[]"),
         "--issuer", ISSUER],
        ["doctor", "-f", pod_file, "--service-account", sa_file, "--trust-policy", doctor.write("q.json", "{}")],
        ["trust-policy", "--account", "12", "--issuer", ISSUER, "team:app"],
        ["trust-policy", "--account", "111122223333", "--issuer", ISSUER, "team/app"],
        ["trust-policy", "--account", "111122223333", "--issuer", "http://x", "team:app"],
    ]
    for argv in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("pod-identity-injector "), (argv, err)
    monkeypatch.setitem(sys.modules, "boto3", None)
    assert cli.main(["doctor", "-f", pod_file, "--service-account", sa_file, "--fetch-trust-policy",
                     "--issuer", ISSUER]) == 2
    assert "pip install 'pod-identity-injector[doctor]'" in capsys.readouterr().err


# -- docs/doctor.md ---------------------------------------------------------------------------------
def test_every_code_doctor_can_emit_is_documented():
    import re

    root = Path(__file__).resolve().parents[2]
    source = "".join((root / "injector" / "diagnostics" / name).read_text() for name in ("doctor.py", "live.py"))
    emitted = set(re.findall(r'out\.add\(\s*"([a-z-]+)"', source))
    emitted |= set(re.findall(r'\("((?:role-arn|webhook)-[a-z-]+)",', source))
    emitted |= {"trust-policy-condition", "trust-policy-principal", "trust-policy-action"}
    assert len(emitted) > 50
    documented = set(re.findall(r"^\| `([a-z-]+)` \|", (root / "docs" / "doctor.md").read_text(), re.M))
    assert emitted - {"note"} <= documented, emitted - documented
