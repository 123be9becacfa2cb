"""Trust policies judged as IAM judges AssumeRoleWithWebIdentity (injector/diagnostics/trust_policy.py),
and the verdicts compared with the STS stand-in's over one shared table."""

from __future__ import annotations

import json
import sys
import urllib.parse
from pathlib import Path

import pytest

from injector.diagnostics.trust_policy import (
    NOT_AUTHORIZED,
    PolicyError,
    condition_holds,
    evaluate,
    generate,
    parse_policy,
    provider_arn,
    web_identity_request,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster" / "standins"))
import sts as sts_standin

ISSUER = "https://oidc.example.com/cluster-a"
HOST = "oidc.example.com/cluster-a"
ACCOUNT = "111122223333"
FEDERATED = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{HOST}"
SUB = "system:serviceaccount:team:app"
SUB_KEY, AUD_KEY = f"{HOST}:sub", f"{HOST}:aud"


def request(sub: str = SUB, aud: tuple[str, ...] = ("sts.amazonaws.com",)):
    return web_identity_request(ISSUER, "aws", ACCOUNT, sub, aud)


def statement(condition: dict | None = None, *, effect: str = "Allow", principal=None, action=None, sid="") -> dict:
    body = {"Effect": effect, "Principal": principal or {"Federated": FEDERATED},
            "Action": action or "sts:AssumeRoleWithWebIdentity"}
    if condition is not None:
        body["Condition"] = condition
    if sid:
        body["Sid"] = sid
    return body


def policy(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


# -- each operator: (operator, policy value, token values or None for absent, holds) ----------------
OPERATOR_TABLE = [
    ("StringEquals", SUB, (SUB,), True),
    ("StringEquals", "system:serviceaccount:team:other", (SUB,), False),
    ("StringEquals", ["x", SUB], (SUB,), True),  # several policy values: any
    ("StringEquals", SUB.upper(), (SUB,), False),  # values are case-sensitive
    ("StringEquals", SUB, None, False),
    ("StringEqualsIgnoreCase", SUB.upper(), (SUB,), True),
    ("StringNotEquals", "system:serviceaccount:team:other", (SUB,), True),
    ("StringNotEquals", SUB, (SUB,), False),
    ("StringNotEquals", SUB, None, True),  # negated on an absent key holds
    ("StringNotEqualsIgnoreCase", SUB.upper(), (SUB,), False),
    ("StringLike", "system:serviceaccount:team:*", (SUB,), True),
    ("StringLike", "system:serviceaccount:team:ap?", (SUB,), True),
    ("StringLike", "system:serviceaccount:other:*", (SUB,), False),
    ("StringLike", "system:serviceaccount:team:*", None, False),
    ("StringNotLike", "system:serviceaccount:other:*", (SUB,), True),
    ("StringNotLike", "system:serviceaccount:*", (SUB,), False),
    ("StringEqualsIfExists", "nope", None, True),
    ("StringEqualsIfExists", "nope", (SUB,), False),
    ("StringLikeIfExists", "system:*", (SUB,), True),
    ("ForAnyValue:StringEquals", "sts.amazonaws.com", ("other", "sts.amazonaws.com"), True),
    ("ForAnyValue:StringEquals", "sts.amazonaws.com", ("other",), False),
    ("ForAnyValue:StringEquals", "sts.amazonaws.com", None, False),
    ("ForAnyValue:StringLike", "sts.*", ("other", "sts.amazonaws.com"), True),
    ("ForAnyValue:StringNotEquals", "sts.amazonaws.com", ("sts.amazonaws.com", "other"), True),
    ("ForAnyValue:StringNotEquals", "sts.amazonaws.com", None, False),
    ("ForAllValues:StringEquals", ["sts.amazonaws.com", "other"], ("other", "sts.amazonaws.com"), True),
    ("ForAllValues:StringEquals", "sts.amazonaws.com", ("other", "sts.amazonaws.com"), False),
    ("ForAllValues:StringEquals", "sts.amazonaws.com", None, True),  # vacuously true
    ("ForAllValues:StringLike", "*.amazonaws.com", ("sts.amazonaws.com", "x.amazonaws.com"), True),
    ("ForAllValues:StringNotEquals", "bad", ("sts.amazonaws.com",), True),
    ("ForAllValues:StringNotLike", "sts.*", ("sts.amazonaws.com",), False),
    ("StringEquals", "sts.amazonaws.com", ("other", "sts.amazonaws.com"), True),  # a list aud: any value
    ("StringNotEquals", "sts.amazonaws.com", ("other", "sts.amazonaws.com"), False),
    ("Null", "true", None, True),
    ("Null", "false", None, False),
    ("Null", "false", (SUB,), True),
]


@pytest.mark.parametrize(("operator", "wanted", "got", "holds"), OPERATOR_TABLE)
def test_each_condition_operator_has_iams_meaning(operator, wanted, got, holds):
    context = {} if got is None else {"k": got}
    result = condition_holds(operator, "K", wanted, context)  # keys are case-insensitive
    assert result.holds is holds
    assert result.got == got


def test_an_operator_this_module_does_not_know_never_holds_and_says_so():
    result = condition_holds("NumericLessThan", SUB_KEY, "3", {SUB_KEY.lower(): (SUB,)})
    assert not result.holds and not result.supported
    assert "not evaluated" in result.describe()


# -- whole policies ---------------------------------------------------------------------------------
EXACT = {"StringEquals": {SUB_KEY: SUB, AUD_KEY: "sts.amazonaws.com"}}


def test_the_documented_policy_allows_the_service_account_and_names_the_statement():
    verdict = evaluate(policy(statement(EXACT, sid="irsa")), request())
    assert verdict.allowed and verdict.decided_by == "irsa" and verdict.error == ""


def test_another_service_account_is_refused_with_both_values_side_by_side():
    verdict = evaluate(policy(statement(EXACT)), request(sub="system:serviceaccount:team:other"))
    assert not verdict.allowed and verdict.error == f"AccessDenied: {NOT_AUTHORIZED}"
    closest = verdict.closest
    assert closest is not None and closest.miss == "condition"
    [failed] = [c for c in closest.conditions if not c.holds]
    assert (failed.key, failed.wanted, failed.got) == (SUB_KEY, (SUB,), ("system:serviceaccount:team:other",))
    assert f'policy "{SUB}", token "system:serviceaccount:team:other"' in closest.detail


def test_a_wrong_audience_is_a_failed_aud_condition():
    verdict = evaluate(policy(statement(EXACT)), request(aud=("https://kubernetes.default.svc",)))
    [failed] = [c for c in verdict.closest.conditions if not c.holds]
    assert failed.key == AUD_KEY


@pytest.mark.parametrize("federated", [
    f"arn:aws:iam::444455556666:oidc-provider/{HOST}",  # another account
    f"arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.example.com/cluster-b",  # another issuer
    f"arn:aws-cn:iam::{ACCOUNT}:oidc-provider/{HOST}",  # another partition
])
def test_a_principal_naming_another_provider_is_refused(federated):
    verdict = evaluate(policy(statement(EXACT, principal={"Federated": federated})), request())
    assert not verdict.allowed and verdict.closest.miss == "principal"
    assert federated in verdict.closest.detail and FEDERATED in verdict.closest.detail


@pytest.mark.parametrize(("action", "allowed"), [
    ("sts:AssumeRoleWithWebIdentity", True), ("sts:assumerolewithwebidentity", True), ("sts:*", True),
    ("*", True), ("sts:AssumeRole*", True), (["sts:AssumeRole", "sts:TagSession"], False), ("sts:AssumeRole", False),
])
def test_the_action_with_wildcards(action, allowed):
    verdict = evaluate(policy(statement(EXACT, action=action)), request())
    assert verdict.allowed is allowed
    if not allowed:
        assert verdict.closest.miss == "action"


def test_not_action_excluding_the_call_does_not_cover_it():
    stmt = statement(EXACT)
    stmt["NotAction"] = stmt.pop("Action")
    assert not evaluate(policy(stmt), request()).allowed
    stmt["NotAction"] = "sts:AssumeRole"
    assert evaluate(policy(stmt), request()).allowed


def test_an_explicit_deny_wins_over_an_allow_before_it():
    deny = statement({"StringLike": {SUB_KEY: "system:serviceaccount:team:*"}}, effect="Deny", sid="no-team")
    verdict = evaluate(policy(statement(EXACT, sid="irsa"), deny), request())
    assert not verdict.allowed and verdict.explicit_deny and verdict.decided_by == "no-team"


def test_a_deny_whose_condition_fails_does_not_apply():
    deny = statement({"StringEquals": {SUB_KEY: "system:serviceaccount:x:y"}}, effect="Deny")
    assert evaluate(policy(statement(EXACT), deny), request()).allowed


def test_the_first_allowing_statement_is_named_when_several_allow():
    verdict = evaluate(policy(statement({"StringEquals": {SUB_KEY: "nope"}}, sid="a"), statement(EXACT, sid="b"),
                              statement(None, sid="c")), request())
    assert verdict.decided_by == "b"


def test_condition_keys_are_case_insensitive_and_every_key_must_hold():
    upper = {"StringEquals": {SUB_KEY.upper(): SUB}}
    assert evaluate(policy(statement(upper)), request()).allowed
    both = {"StringEquals": {SUB_KEY: SUB}, "StringLike": {AUD_KEY: "other"}}
    assert not evaluate(policy(statement(both)), request()).allowed


def test_principal_star_and_aws_star_cover_every_provider():
    assert evaluate(policy(statement(EXACT, principal="*")), request()).allowed
    assert evaluate(policy(statement(EXACT, principal={"AWS": "*"})), request()).allowed


def test_no_statement_at_all_denies():
    verdict = evaluate({"Statement": []}, request())
    assert not verdict.allowed and verdict.closest is None


# -- the document as IAM returns it -----------------------------------------------------------------
DOCUMENT = policy(statement(EXACT))


@pytest.mark.parametrize("text", [
    json.dumps(DOCUMENT),
    urllib.parse.quote(json.dumps(DOCUMENT)),
    json.dumps({"Role": {"RoleName": "app", "AssumeRolePolicyDocument": DOCUMENT}}),
    json.dumps({"Role": {"AssumeRolePolicyDocument": urllib.parse.quote(json.dumps(DOCUMENT))}}),
    json.dumps({"AssumeRolePolicyDocument": json.dumps(DOCUMENT)}),
])
def test_every_form_iam_gives_is_read(text):
    assert parse_policy(text) == DOCUMENT


@pytest.mark.parametrize(("text", "problem"), [
    ("not json", "not JSON"), ("[]", "JSON object"), ('{"Version": "2012-10-17"}', "no Statement"),
    ('{"Statement": [{"Effect": "Maybe"}]}', "Effect"),
    ('{"Statement": {"Effect": "Allow", "Condition": {"StringEquals": "x"}}}', "Condition"),
])
def test_what_is_not_a_trust_policy_is_refused(text, problem):
    with pytest.raises(PolicyError, match=problem):
        parse_policy(text)


# -- generate ---------------------------------------------------------------------------------------
def test_a_generated_policy_allows_exactly_its_service_accounts():
    pairs = [("team", "app"), ("batch", "worker")]
    generated = generate(ISSUER, ACCOUNT, pairs, partition="aws-us-gov")
    assert generated["Statement"][0]["Principal"]["Federated"] == provider_arn("aws-us-gov", ACCOUNT, ISSUER)
    for namespace, name in pairs:
        sub = f"system:serviceaccount:{namespace}:{name}"
        assert evaluate(generated, web_identity_request(ISSUER, "aws-us-gov", ACCOUNT, sub,
                                                        ("sts.amazonaws.com",))).allowed
    assert not evaluate(generated, web_identity_request(ISSUER, "aws-us-gov", ACCOUNT,
                                                        "system:serviceaccount:team:other",
                                                        ("sts.amazonaws.com",))).allowed
    assert not evaluate(generated, web_identity_request(ISSUER, "aws", ACCOUNT, "system:serviceaccount:team:app",
                                                        ("sts.amazonaws.com",))).allowed


def test_a_generated_policy_for_one_service_account_uses_a_plain_string():
    condition = generate(ISSUER, ACCOUNT, [("team", "app")])["Statement"][0]["Condition"]["StringEquals"]
    assert condition == {SUB_KEY: SUB, AUD_KEY: "sts.amazonaws.com"}


# -- the same verdicts as the STS stand-in of the cluster tier --------------------------------------
SHARED_TABLE = [
    policy(statement(EXACT)),
    policy(statement({"StringLike": {SUB_KEY: "system:serviceaccount:team:*"}})),
    policy(statement({"StringNotEquals": {SUB_KEY: SUB}})),
    policy(statement({"StringNotLike": {SUB_KEY: "system:serviceaccount:other:*"}})),
    policy(statement({"ForAnyValue:StringEquals": {AUD_KEY: ["sts.amazonaws.com", "x"]}})),
    policy(statement({"ForAllValues:StringEquals": {AUD_KEY: "sts.amazonaws.com"}})),
    policy(statement({"ForAllValues:StringLike": {AUD_KEY: "nope*"}})),
    policy(statement({"StringEqualsIfExists": {f"{HOST}:amr": "x"}})),
    policy(statement({"Null": {f"{HOST}:amr": "true"}})),
    policy(statement({"StringEqualsIgnoreCase": {SUB_KEY: SUB.upper()}})),
    policy(statement(EXACT, principal={"Federated": f"arn:aws:iam::444455556666:oidc-provider/{HOST}"})),
    policy(statement(EXACT, principal="*")),
    policy(statement(EXACT, action="sts:AssumeRole")),
    policy(statement(EXACT, action=["sts:*"])),
    policy(statement(EXACT), statement({"StringLike": {SUB_KEY: "*:team:*"}}, effect="Deny")),
    policy(statement(EXACT), statement({"StringLike": {SUB_KEY: "*:other:*"}}, effect="Deny")),
    policy(statement({"StringEquals": {SUB_KEY: "nope"}}), statement(EXACT)),
    {"Statement": []},
]
REQUESTS = [request(), request(sub="system:serviceaccount:other:app"), request(aud=("sts.amazonaws.com", "x")),
            request(aud=("https://kubernetes.default.svc",))]


@pytest.mark.parametrize("document", SHARED_TABLE, ids=lambda d: json.dumps(d)[:90])
def test_verdicts_match_the_sts_standin(document):
    for req in REQUESTS:
        ours = evaluate(document, req).allowed
        context = {key: list(values) for key, values in req.context.items()}
        theirs, reason = sts_standin.evaluate_trust(document, req.federated, context)
        assert ours is theirs, (req, reason)
    assert sts_standin.provider_arn(ACCOUNT, ISSUER) == FEDERATED
