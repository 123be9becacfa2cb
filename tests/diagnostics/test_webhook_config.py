"""The webhook-side checks of `doctor` on plain values: label selectors, which registration is
ours, the flags read from a Deployment, the caBundle against a serving certificate, and the
findings they lead to (injector/diagnostics/webhook_config.py, live.py and doctor.py)."""

from __future__ import annotations

import base64

import pytest

from injector.certificates.authority import cert_to_pem, generate_ca, generate_serving_cert
from injector.core.settings import MutationSettings
from injector.diagnostics.doctor import Case, WebhookView, diagnose
from injector.diagnostics.live import choose_webhook, parse_webhook_args
from injector.diagnostics.webhook_config import ca_bundle_problem, intercepts_pod_creation, selector_matches

SELECTOR = {"matchLabels": {"team": "a"},
            "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]},
                                 {"key": "eks.amazonaws.com/skip-pod-identity-webhook", "operator": "DoesNotExist"}]}


@pytest.mark.parametrize(("selector", "labels", "matches"), [
    (None, {}, True), ({}, {"x": "y"}, True),
    (SELECTOR, {"team": "a", "kubernetes.io/metadata.name": "web"}, True),
    (SELECTOR, {"team": "b"}, False),
    (SELECTOR, {"team": "a", "kubernetes.io/metadata.name": "kube-system"}, False),
    (SELECTOR, {"team": "a", "eks.amazonaws.com/skip-pod-identity-webhook": "true"}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]}, {"tier": "web"}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]}, {}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {"tier": ""}, True),
])
def test_label_selectors(selector, labels, matches):
    assert selector_matches(selector, labels)[0] is matches


def test_a_failing_requirement_is_said_in_words():
    assert selector_matches(SELECTOR, {"team": "b"})[1] == "matchLabels team=a (the object has team=b)"


HOOK = {"name": "pod-identity-webhook.amazonaws.com",
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]}


def test_only_webhooks_for_pod_creation_count():
    assert intercepts_pod_creation(HOOK)
    assert not intercepts_pod_creation({"rules": [{"operations": ["UPDATE"], "apiGroups": [""],
                                                   "resources": ["pods"]}]})
    assert not intercepts_pod_creation({"rules": [{"operations": ["*"], "apiGroups": ["apps"],
                                                   "resources": ["deployments"]}]})


def test_ours_is_the_one_selecting_the_namespace_then_the_default_name():
    def configuration(name: str, team: str) -> dict:
        hook = {**HOOK, "name": f"{name}.example.com", "namespaceSelector": {"matchLabels": {"t": team}}}
        return {"metadata": {"name": name}, "webhooks": [hook]}

    listed = [configuration("other-admission", "a"), configuration("pod-identity-webhook", "a"),
              configuration("pod-identity-canary", "b")]
    assert choose_webhook(listed, "", {"t": "b"})[0] == "pod-identity-canary"
    assert choose_webhook(listed, "", {"t": "z"})[0] == "pod-identity-webhook"
    assert choose_webhook(listed, "other-admission", {"t": "z"})[0] == "other-admission"
    assert choose_webhook(listed[:1], "", {}) is None


@pytest.mark.parametrize("command", [
    ["serve", "--aws-default-region=eu-west-1", "--token-audience", "x"],
    ["--aws-default-region", "eu-west-1", "--token-audience=x", "--port=443", "--in-cluster=false"],
    ["/webhook", "--aws-default-region=eu-west-1", "--token-audience=x", "--logtostderr"],
])
def test_the_webhooks_flags_from_its_container(command):
    from injector.cli.parser import mutation_settings

    settings = mutation_settings(parse_webhook_args(command))
    assert (settings.aws_default_region, settings.token_audience) == ("eu-west-1", "x")


def test_a_ca_bundle_against_the_serving_certificate():
    ca, ca_key = generate_ca("webhook-ca", key_size=2048)
    other_ca, _ = generate_ca("someone-else", key_size=2048)
    cert, _ = generate_serving_cert(ca, ca_key, ["pod-identity-webhook.ns.svc"], [])
    bundle = base64.b64encode(cert_to_pem(ca)).decode()
    names = ("pod-identity-webhook.ns.svc",)
    assert ca_bundle_problem(bundle, cert_to_pem(cert), names) == ""
    assert "not signed by any CA of the caBundle" in ca_bundle_problem(
        base64.b64encode(cert_to_pem(other_ca)).decode(), cert_to_pem(cert), names)
    assert "not other.ns.svc" in ca_bundle_problem(bundle, cert_to_pem(cert), ("other.ns.svc",))


def test_webhook_findings_explain_a_pod_the_webhook_never_saw():
    settings = MutationSettings()
    account = {"metadata": {"name": "app", "annotations": {"eks.amazonaws.com/role-arn":
                                                          "arn:aws:iam::111122223333:role/app"}}}
    the_pod = {"metadata": {"name": "p", "labels": {"tier": "web"}}, "spec": {"serviceAccountName": "app",
                                                                             "containers": [{"name": "a"}]}}
    hook = {**HOOK, "namespaceSelector": {"matchLabels": {"iam": "on"}},
            "objectSelector": {"matchLabels": {"tier": "api"}}}
    view = WebhookView("pod-identity-webhook", hook, (("webhook-no-endpoints", "no endpoints"),))
    report = diagnose(Case(the_pod, "team", account, settings, live=True, namespace_labels={}, webhook=view,
                           webhook_searched=True))
    failed = [f.code for f in report.findings if f.status == "fail"]
    assert failed == ["pod-not-selected", "namespace-not-selected", "webhook-no-endpoints", "pod-not-injected"]
    assert report.exit_code == 1
    report = diagnose(Case(the_pod, "team", account, settings, live=True, webhook=None, webhook_searched=True))
    assert [f.code for f in report.findings if f.status == "fail"] == ["webhook-not-registered", "pod-not-injected"]


def test_ca_bundle_problem_is_empty_when_the_bundle_signed_it():
    assert "no caBundle" in ca_bundle_problem("", b"")
    assert "not base64 PEM" in ca_bundle_problem(base64.b64encode(b"junk").decode(), b"")


def test_a_namespace_excluded_by_name_is_fixed_by_the_list_not_by_a_label():
    account = {"metadata": {"name": "lbc", "annotations": {"eks.amazonaws.com/role-arn":
                                                          "arn:aws:iam::111122223333:role/lbc"}}}
    the_pod = {"metadata": {"name": "p"}, "spec": {"serviceAccountName": "lbc", "containers": [{"name": "a"}]}}
    hook = {**HOOK, "namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["webhook-system", "kube-system"]}]}}
    view = WebhookView("pod-identity-webhook", hook, ())
    report = diagnose(Case(the_pod, "kube-system", account, MutationSettings(), live=True,
                           namespace_labels={"kubernetes.io/metadata.name": "kube-system"}, webhook=view,
                           webhook_searched=True))
    (finding,) = [f for f in report.findings if f.code == "namespace-not-selected"]
    assert "take kube-system out of the webhook's namespaceSelector" in finding.fix
    assert "The Go webhook and EKS mutate kube-system" in finding.fix
