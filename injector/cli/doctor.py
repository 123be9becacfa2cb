"""`pod-identity-injector doctor`: one pod's case, from files or from the live cluster, and
its findings printed.
Gathering inputs, printing and the exit code only; every check is `diagnostics.doctor`'s.

Exit codes (docs/doctor.md#exit-codes): 0 the pod gets working credentials, 1 it does not,
2 the command could not run (bad flags, unreadable input, an unreachable API server, boto3
missing). The live reader and boto3 are imported only when a command needs them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from injector.cli.exits import say
from injector.core.settings import MutationSettings
from injector.diagnostics import trust_policy
from injector.diagnostics.doctor import Case, diagnose, render, resolve_identity
from injector.sources.manifests import (
    InputError,
    load_config_map,
    load_documents,
    load_pod_identities,
    parse_documents,
)


class UsageError(Exception):
    """The command cannot run; the message names the flag or file."""


def run_doctor(args: argparse.Namespace, settings: MutationSettings) -> int:
    try:
        if args.filename:
            if args.pod:
                raise UsageError("give either POD (live) or -f FILE (offline), not both")
            case = offline_case(args, settings)
        elif args.pod:
            # Only a live doctor pays for the API client's import (kubernetes_asyncio, aiohttp).
            from injector.diagnostics.live import LiveError, live_case  # noqa: PLC0415

            try:
                case = asyncio.run(live_case(args, settings))
            except LiveError as exc:
                raise UsageError(str(exc)) from None
        else:
            raise UsageError("name a pod (doctor POD -n NAMESPACE) or a file (doctor -f POD.yaml)")
        case = _with_policy(case, args)
    except (UsageError, InputError) as exc:
        return say("doctor", str(exc))
    report = diagnose(case)
    if args.output == "json":
        print(json.dumps({**report.as_json(), "exitCode": report.exit_code}, indent=2, ensure_ascii=False))
    else:
        print(render(report))
    return report.exit_code


def _pod_from_file(path: str, namespace: str) -> tuple[dict[str, Any], str]:
    docs = parse_documents(sys.stdin.read(), "<stdin>") if path == "-" else load_documents(path)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise InputError(path, f"expected one Pod, found {len(docs)} documents")
    pod = docs[0]
    if pod.get("kind") == "AdmissionReview":
        request = pod.get("request") or {}
        pod, namespace = request.get("object") or {}, request.get("namespace") or namespace
    if pod.get("kind") not in (None, "Pod") or not isinstance(pod.get("spec"), dict):
        raise InputError(path, f"expected a Pod with a spec, got kind {pod.get('kind')!r}")
    return pod, (pod.get("metadata") or {}).get("namespace") or namespace


def offline_case(args: argparse.Namespace, settings: MutationSettings) -> Case:
    pod, namespace = _pod_from_file(args.filename, args.namespace)
    name = (pod.get("spec") or {}).get("serviceAccountName") or "default"
    found = None
    for path in args.service_account_files:
        for doc in load_documents(path):
            if not isinstance(doc, dict) or doc.get("kind") != "ServiceAccount":
                raise InputError(path, f"expected ServiceAccount manifests, found kind {doc.get('kind')!r}"
                                 if isinstance(doc, dict) else "expected ServiceAccount manifests")
            meta = doc.get("metadata") or {}
            if meta.get("name") == name and (meta.get("namespace") or namespace) == namespace:
                found = doc
    config_map = load_config_map(args.config_map_file, settings) if args.config_map_file else None
    identities = load_pod_identities(args.container_credentials_config).pairs \
        if args.container_credentials_config else frozenset()
    kwargs: dict[str, Any] = {"config_map": config_map} if config_map is not None else {}
    return Case(pod, namespace, found, settings, pod_identities=identities, issuer=args.issuer or "", **kwargs)


def _with_chain(case: Case, args: argparse.Namespace) -> Case:
    """--role-arn and --target-trust-policy: the Pod Identity role chain to check."""
    if args.role_arn and not args.target_trust_policy:
        raise UsageError("--role-arn names the first link of a chain: give the target's --target-trust-policy FILE")
    if not args.target_trust_policy:
        return case
    try:
        text = Path(args.target_trust_policy).read_text()
        policy = trust_policy.parse_policy(text)
    except (OSError, UnicodeDecodeError, trust_policy.PolicyError) as exc:
        raise UsageError(f"--target-trust-policy {args.target_trust_policy}: {exc}") from None
    return replace(case, association_role=args.role_arn, target_policy=policy)


def _with_policy(case: Case, args: argparse.Namespace) -> Case:
    case = _with_chain(case, args)
    if not args.trust_policy and not args.fetch_trust_policy:
        return case
    if args.trust_policy and args.fetch_trust_policy:
        raise UsageError("give --trust-policy FILE or --fetch-trust-policy, not both")
    if not case.issuer:
        raise UsageError("checking a trust policy needs the issuer: pass --issuer URL")
    if args.trust_policy:
        try:
            text = sys.stdin.read() if args.trust_policy == "-" else Path(args.trust_policy).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--trust-policy {args.trust_policy}: {exc}") from None
        source = f"--trust-policy {args.trust_policy}"
    else:
        text, source = fetch_trust_policy(_role_of(case)), "IAM GetRole"
    try:
        policy = trust_policy.parse_policy(text)
    except trust_policy.PolicyError as exc:
        raise UsageError(f"{source}: {exc}") from None
    return replace(case, policy=policy)


def _role_of(case: Case) -> str:
    identity, _ = resolve_identity(case)
    if identity is None or not identity.role_arn:
        raise UsageError("--fetch-trust-policy: the pod has no role to look up")
    return identity.role_arn


def fetch_trust_policy(role_arn: str) -> str:
    """The role's trust policy through IAM GetRole, with the caller's AWS credentials."""
    try:  # an optional dependency (the `doctor` extra), needed by this flag alone
        import boto3  # noqa: PLC0415
        import botocore.exceptions  # noqa: PLC0415
    except ImportError:
        raise UsageError("--fetch-trust-policy needs boto3: pip install 'pod-identity-injector[doctor]' "
                         "(or save `aws iam get-role` output and pass --trust-policy FILE)") from None
    name = role_arn.rsplit("/", 1)[-1]
    try:
        answer = boto3.client("iam").get_role(RoleName=name)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise UsageError(f"--fetch-trust-policy: IAM GetRole {name}: {exc}") from None
    return json.dumps(answer["Role"]["AssumeRolePolicyDocument"], default=str)
