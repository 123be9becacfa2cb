"""`audit`'s pure parts: the object to restart and how (injector/diagnostics/audit.py); the live listing is
tested on the API-server tier (tests/e2e/test_doctor.py)."""

from injector.diagnostics.audit import Entry, controller_of, render_audit, restart_hint


def test_the_restart_hint_per_owner_kind():
    assert restart_hint("team", "Deployment", "web") == "kubectl -n team rollout restart deployment/web"
    assert restart_hint("team", "StatefulSet", "db") == "kubectl -n team rollout restart statefulset/db"
    assert restart_hint("team", "Pod", "p").startswith("kubectl -n team delete pod p")
    assert restart_hint("team", "CronJob", "nightly") == "recreate cronjob team/nightly"


def test_only_the_controlling_owner_counts():
    pod = {"metadata": {"ownerReferences": [{"kind": "ConfigMap", "name": "x"},
                                            {"kind": "ReplicaSet", "name": "web-1", "controller": True}]}}
    assert controller_of(pod) == ("ReplicaSet", "web-1")
    assert controller_of({"metadata": {}}) is None


def test_the_listing_names_pod_owner_reason_and_restart():
    entry = Entry("team", "web-1-abc", "app", "arn:aws:iam::111122223333:role/app", "Deployment", "web",
                  ("pod-created-before-annotation",), ("the pod was created at …",))
    text = render_audit([entry])
    assert text.splitlines()[1].split() == ["team", "web-1-abc", "app", "Deployment/web",
                                            "pod-created-before-annotation"]
    assert "restart: kubectl -n team rollout restart deployment/web" in text
    assert entry.as_json()["owner"] == {"kind": "Deployment", "name": "web"}
    assert render_audit([]).startswith("every pod")


def test_an_excluded_kube_system_is_said_first_with_the_add_ons_it_leaves_without_credentials():
    entry = Entry("kube-system", "aws-load-balancer-controller-7d-x", "aws-load-balancer-controller",
                  "arn:aws:iam::111122223333:role/lbc", "Deployment", "aws-load-balancer-controller",
                  ("namespace-not-selected",), ("the webhook's namespaceSelector excludes namespace kube-system: …",))
    first = render_audit([entry]).splitlines()[0]
    assert first.startswith("namespace kube-system is not sent to the webhook")
    assert "the Go webhook and EKS mutate kube-system" in first and "aws-load-balancer-controller" in first
