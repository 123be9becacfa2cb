"""`pod-identity-injector audit`: the pods that missed out, live.
Reads only; it changes nothing in the cluster and prints nothing (`cli.audit` does).

Every pod that is not finished, whose ServiceAccount maps to an identity today, but that lacks
the injected env or volume; per pod the likely reason (the failing findings of `doctor`'s
checks, which run on the same Case) and the owner to restart, found by walking
ownerReferences (ReplicaSet → Deployment, Job → CronJob).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from injector.core.pod import mapping
from injector.core.settings import MutationSettings
from injector.diagnostics.doctor import FAIL, diagnose, injected, resolve_identity
from injector.diagnostics.live import LiveCluster, LiveError, SharedReads, case_for, connect

# Findings that only restate that the pod was not mutated; the reason is in the others.
_RESTATING = frozenset({"pod-not-injected"})
_ROLLOUT_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet"})
# The add-ons most often missed after a migration run there (docs/migrate.md#kube-system).
KUBE_SYSTEM_NOTE = ("; the Go webhook and EKS mutate kube-system, where IRSA add-ons run "
                    "(aws-load-balancer-controller, aws-ebs-csi-driver, cluster-autoscaler, Karpenter): "
                    "take it out of the webhook's excluded namespaces")


@dataclass(frozen=True, slots=True)
class Entry:
    namespace: str
    pod: str
    service_account: str
    role_arn: str
    owner_kind: str
    owner_name: str
    reasons: tuple[str, ...]
    messages: tuple[str, ...]

    @property
    def restart(self) -> str:
        return restart_hint(self.namespace, self.owner_kind, self.owner_name)

    def as_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "pod": self.pod, "serviceAccount": self.service_account,
                "roleArn": self.role_arn, "owner": {"kind": self.owner_kind, "name": self.owner_name},
                "reasons": list(self.reasons), "messages": list(self.messages), "restart": self.restart}


def restart_hint(namespace: str, kind: str, name: str) -> str:
    if kind in _ROLLOUT_KINDS:
        return f"kubectl -n {namespace} rollout restart {kind.lower()}/{name}"
    if kind == "Pod":
        return f"kubectl -n {namespace} delete pod {name} (and create it again: it has no controller)"
    return f"recreate {kind.lower()} {namespace}/{name}"


def controller_of(obj: dict[str, Any]) -> tuple[str, str] | None:
    for reference in mapping(obj.get("metadata")).get("ownerReferences") or []:
        if reference.get("controller"):
            return str(reference.get("kind")), str(reference.get("name"))
    return None


async def owner(cluster: LiveCluster, shared: SharedReads, namespace: str, pod: dict[str, Any]) -> tuple[str, str]:
    """The object to restart: the pod's controller, and that one's controller for a ReplicaSet
    (a Deployment) or a Job (a CronJob). Each owner is read once per command (`shared`): the
    pods of one ReplicaSet share it."""
    current = ("Pod", str(mapping(pod.get("metadata")).get("name")))
    parent = controller_of(pod)
    readers = {"ReplicaSet": cluster.apps.read_namespaced_replica_set, "Job": cluster.batch.read_namespaced_job}
    while parent is not None:
        current = parent
        read = readers.get(parent[0])
        if read is None:
            break
        obj = await shared.get(cluster, f"{parent[0].lower()} {namespace}/{parent[1]}", read, parent[1], namespace)
        parent = controller_of(obj) if obj else None
    return current


async def run(args: argparse.Namespace, settings: MutationSettings) -> list[Entry]:
    api = await connect(args.kubeconfig, args.kube_api)
    async with api:
        cluster = LiveCluster(api)
        if args.namespace:
            pods = await cluster.get(cluster.core.list_namespaced_pod, args.namespace,
                                     what=f"pods in {args.namespace}")
        else:
            pods = await cluster.get(cluster.core.list_pod_for_all_namespaces, what="pods")
        if pods is None:
            raise LiveError("cannot list pods: " + "; ".join(cluster.notes))
        shared = SharedReads(settings, {}, args.webhook_configuration)
        entries = []
        for pod in pods.get("items") or []:
            if mapping(pod.get("status")).get("phase") in ("Succeeded", "Failed"):
                continue
            meta = mapping(pod.get("metadata"))
            namespace = str(meta.get("namespace"))
            case = await case_for(cluster, shared, pod, namespace)
            identity, _ = resolve_identity(case)
            if identity is None or injected(pod, identity, case.settings):
                continue
            report = diagnose(case)
            failing = [f for f in report.findings if f.status == FAIL and f.code not in _RESTATING]
            kind, name = await owner(cluster, shared, namespace, pod)
            entries.append(Entry(namespace, str(meta.get("name")), case.service_account_name, identity.role_arn,
                                 kind, name, tuple(f.code for f in failing), tuple(f.message for f in failing)))
    return entries


def render_audit(entries: list[Entry]) -> str:
    if not entries:
        return "every pod whose ServiceAccount has an identity carries its credentials"
    excluded = sorted({e.namespace for e in entries if "namespace-not-selected" in e.reasons})
    lines = [f"namespace {namespace} is not sent to the webhook (its namespaceSelector): no pod there gets credentials"
             + (KUBE_SYSTEM_NOTE if namespace == "kube-system" else "") for namespace in excluded]
    rows = [("NAMESPACE", "POD", "SERVICEACCOUNT", "OWNER", "REASON")]
    rows += [(e.namespace, e.pod, e.service_account, f"{e.owner_kind}/{e.owner_name}", ",".join(e.reasons))
             for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += ["  ".join(value.ljust(width) for value, width in zip(row[:4], widths, strict=True)) + "  " + row[4]
              for row in rows]
    lines.append("")
    lines += [f"{e.namespace}/{e.pod}: {m}" for e in entries for m in e.messages[:1]]
    lines += sorted({f"restart: {e.restart}" for e in entries})
    return "\n".join(lines)
