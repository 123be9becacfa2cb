"""`pod-identity-injector doctor`, `trust-policy` and `audit`: inputs in, findings out.

Exit codes (docs/doctor.md#exit-codes): 0 the pod gets working credentials (audit: no pod
missed out), 1 it does not, 2 the command could not run (bad flags, unreadable input, an
unreachable API server, boto3 missing). Imported only when one of these subcommands runs, so
`serve` never loads any of it; boto3 is imported only for `--fetch-trust-policy`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

from injector.core.settings import PARTITIONS, MutationSettings
from injector.diagnostics import trust_policy
from injector.diagnostics.doctor import Case, diagnose, render
from injector.sources.manifests import InputError, load_config_map, load_documents, load_pod_identities

OK, FAILED, UNUSABLE = 0, 1, 2


class UsageError(Exception):
    """The command cannot run; the message names the flag or file."""


def _say(command: str, message: str) -> int:
    print(f"pod-identity-injector {command}: {message}", file=sys.stderr)
    return UNUSABLE


# -- doctor ----------------------------------------------------------------------------------------
def run_doctor(args: argparse.Namespace, settings: MutationSettings) -> int:
    try:
        if args.filename:
            if args.pod:
                raise UsageError("give either POD (live) or -f FILE (offline), not both")
            case = offline_case(args, settings)
        elif args.pod:
            from injector.diagnostics.live import LiveError, live_case

            try:
                case = asyncio.run(live_case(args, settings))
            except LiveError as exc:
                raise UsageError(str(exc)) from None
        else:
            raise UsageError("name a pod (doctor POD -n NAMESPACE) or a file (doctor -f POD.yaml)")
        case = _with_policy(case, args)
    except (UsageError, InputError) as exc:
        return _say("doctor", str(exc))
    report = diagnose(case)
    if args.output == "json":
        print(json.dumps({**report.as_json(), "exitCode": report.exit_code}, indent=2, ensure_ascii=False))
    else:
        print(render(report))
    return report.exit_code


def _pod_from_file(path: str, namespace: str) -> tuple[dict[str, Any], str]:
    text = sys.stdin.read() if path == "-" else None
    if text is not None:
        from injector.sources.manifests import parse_documents

        docs = parse_documents(text, "<stdin>")
    else:
        docs = load_documents(path)
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
    identities = load_pod_identities(args.container_credentials_config) if args.container_credentials_config \
        else frozenset()
    kwargs: dict[str, Any] = {"config_map": config_map} if config_map is not None else {}
    return Case(pod, namespace, found, settings, pod_identities=identities, issuer=args.issuer or "", **kwargs)


def _with_policy(case: Case, args: argparse.Namespace) -> Case:
    from dataclasses import replace

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
    from injector.diagnostics.doctor import _resolve

    identity, _ = _resolve(case)
    if identity is None or not identity.role_arn:
        raise UsageError("--fetch-trust-policy: the pod has no role to look up")
    return identity.role_arn


def fetch_trust_policy(role_arn: str) -> str:
    """The role's trust policy through IAM GetRole, with the caller's AWS credentials."""
    try:
        import boto3
        import botocore.exceptions
    except ImportError:
        raise UsageError("--fetch-trust-policy needs boto3: pip install 'pod-identity-injector[doctor]' "
                         "(or save `aws iam get-role` output and pass --trust-policy FILE)") from None
    name = role_arn.rsplit("/", 1)[-1]
    try:
        answer = boto3.client("iam").get_role(RoleName=name)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise UsageError(f"--fetch-trust-policy: IAM GetRole {name}: {exc}") from None
    return json.dumps(answer["Role"]["AssumeRolePolicyDocument"], default=str)


# -- trust-policy ----------------------------------------------------------------------------------
_PAIR = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?):([a-z0-9]([-a-z0-9.]*[a-z0-9])?)\Z")


def run_trust_policy(args: argparse.Namespace) -> int:
    from injector.oidc.documents import OidcError, check_issuer

    pairs = []
    for item in args.service_accounts:
        match = _PAIR.match(item)
        if not match:
            return _say("trust-policy", f"{item!r} is not NAMESPACE:SERVICEACCOUNT")
        pairs.append((match.group(1), match.group(3)))
    if not re.fullmatch(r"\d{12}", args.account):
        return _say("trust-policy", f"--account {args.account!r} is not a 12-digit AWS account id")
    if args.partition not in PARTITIONS:
        return _say("trust-policy", f"--partition {args.partition!r} is not one of {', '.join(PARTITIONS)}")
    issuer = args.issuer
    if not issuer:
        from injector.oidc.fetch import FetchError, cluster_documents

        try:
            discovery, _ = asyncio.run(cluster_documents(args.kubeconfig, args.kube_api))
        except FetchError as exc:
            return _say("trust-policy", f"{exc} (or pass --issuer URL)")
        issuer = str(discovery.get("issuer") or "")
    try:
        check_issuer(issuer)
    except OidcError as exc:
        return _say("trust-policy", str(exc))
    from injector.diagnostics.doctor import issuer_problems

    for _, status, message in issuer_problems(issuer):
        if status != "ok":
            print(f"warning: {message}", file=sys.stderr)
    document = trust_policy.generate(issuer, args.account, pairs, args.partition, args.audience)
    print(json.dumps(document, indent=2))
    return OK


# -- audit -----------------------------------------------------------------------------------------
def run_audit(args: argparse.Namespace, settings: MutationSettings) -> int:
    from injector.diagnostics.audit import render_audit, run
    from injector.diagnostics.live import LiveError

    try:
        entries = asyncio.run(run(args, settings))
    except LiveError as exc:
        return _say("audit", str(exc))
    if args.output == "json":
        print(json.dumps({"pods": [e.as_json() for e in entries]}, indent=2))
    else:
        print(render_audit(entries))
    return FAILED if entries else OK
