"""Workload shapes as real running pods: every container that should get credentials reads a
kubelet-projected token, and what must stay untouched does."""

from __future__ import annotations

import pytest

from .conftest import RELEASE_NAMESPACE, Kubectl
from .workloads import ROLE_ARN, UID, container, pod_spec, pods_of, reports, service_account, wait_phase

TOKEN_PATH = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"


def assert_credentials(report: dict, namespace: str, service_account_name: str = "app") -> None:
    assert report["env"]["AWS_ROLE_ARN"] == ROLE_ARN
    assert report["env"]["AWS_WEB_IDENTITY_TOKEN_FILE"] == TOKEN_PATH
    assert report["aud"] == ["sts.amazonaws.com"]
    assert report["sub"] == f"system:serviceaccount:{namespace}:{service_account_name}"
    assert (report["uid"], report["owner"], report["mode"]) == (UID, UID, "0o600")


def test_init_containers_and_native_sidecars_get_credentials(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(service_account(namespace, "app"), {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "shapes", "namespace": namespace},
        "spec": pod_spec("app", [container("main")], initContainers=[
            container("init", exit_after=True),
            container("sidecar", restartPolicy="Always"),
        ])})
    wait_phase(kubectl, namespace, "shapes", ("Running",))
    for name, report in reports(kubectl, namespace, "shapes", ["init", "sidecar", "main"]).items():
        assert report["container"] == name
        assert_credentials(report, namespace)


def test_a_job_completes_with_credentials(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(service_account(namespace, "app"), {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once", "namespace": namespace},
        "spec": {"backoffLimit": 0, "template": {"spec": pod_spec(
            "app", [container("job", exit_after=True)], restartPolicy="Never")}}})
    kubectl("-n", namespace, "wait", "--for=condition=complete", "job/once", "--timeout=120s", timeout=130)
    pod = pods_of(kubectl, namespace, "job-name=once")[0]["metadata"]["name"]
    assert_credentials(reports(kubectl, namespace, pod, ["job"])["job"], namespace)


def test_a_statefulset_pod_gets_credentials(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(service_account(namespace, "app"), {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": namespace},
        "spec": {"serviceName": "db", "replicas": 1, "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}},
                              "spec": pod_spec("app", [container("db")])}}})
    kubectl("-n", namespace, "rollout", "status", "statefulset/db", "--timeout=120s", timeout=130)
    assert_credentials(reports(kubectl, namespace, "db-0", ["db"])["db"], namespace)


def test_a_pod_without_the_kubernetes_token_or_any_volume_still_gets_ours(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(service_account(namespace, "app"), {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", "namespace": namespace},
        "spec": pod_spec("app", [container("main")], automountServiceAccountToken=False)})
    pod = wait_phase(kubectl, namespace, "bare", ("Running",))
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["aws-iam-token"]
    assert_credentials(reports(kubectl, namespace, "bare", ["main"])["main"], namespace)


def test_skip_containers_are_left_alone(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(service_account(namespace, "app"), {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "skip", "namespace": namespace,
                     "annotations": {"eks.amazonaws.com/skip-containers": "proxy"}},
        "spec": pod_spec("app", [container("main"), container("proxy")])})
    wait_phase(kubectl, namespace, "skip", ("Running",))
    found = reports(kubectl, namespace, "skip", ["main", "proxy"])
    assert_credentials(found["main"], namespace)
    assert found["proxy"]["env"] == {} and "aud" not in found["proxy"]


def test_an_add_on_in_kube_system_gets_credentials_as_with_the_go_webhook(kubectl: Kubectl) -> None:
    """IRSA add-ons (aws-load-balancer-controller, Karpenter, ...) run in kube-system; the Go
    webhook and EKS mutate them, and so does the chart by default (docs/migrate.md#kube-system)."""
    namespace, name = "kube-system", "irsa-add-on-check"
    kubectl.apply(service_account(namespace, name), {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
        "spec": pod_spec(name, [container("main")])})
    try:
        wait_phase(kubectl, namespace, name, ("Running",))
        assert_credentials(reports(kubectl, namespace, name, ["main"])["main"], namespace, name)
    finally:
        kubectl("-n", namespace, "delete", "pod", name, "--wait=false", check=False)
        kubectl("-n", namespace, "delete", "serviceaccount", name, check=False)


@pytest.mark.parametrize("excluded", [RELEASE_NAMESPACE])
def test_pods_in_excluded_namespaces_stay_untouched(kubectl: Kubectl, excluded: str) -> None:
    name = "excluded-check"
    kubectl.apply(service_account(excluded, name), {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": excluded},
        "spec": pod_spec(name, [container("main")])})
    try:
        pod = wait_phase(kubectl, excluded, name, ("Running",))
        assert "env" not in pod["spec"]["containers"][0] or all(
            not e["name"].startswith("AWS_") for e in pod["spec"]["containers"][0]["env"])
        assert reports(kubectl, excluded, name, ["main"])["main"]["env"] == {}
    finally:
        kubectl("-n", excluded, "delete", "pod", name, "--wait=false", check=False)
        kubectl("-n", excluded, "delete", "serviceaccount", name, check=False)
