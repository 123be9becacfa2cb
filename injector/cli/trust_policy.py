"""`pod-identity-injector trust-policy`: a role trust policy that lets these ServiceAccounts
assume the role with web identity, for the cluster's issuer.
Printing and the exit code only; the document is `diagnostics.trust_policy`'s."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys

from injector.cli.exits import OK, say
from injector.core.role_arn import role_arn_problems
from injector.core.settings import PARTITIONS
from injector.diagnostics import trust_policy
from injector.diagnostics.doctor import issuer_problems
from injector.oidc.documents import OidcError, check_issuer
from injector.oidc.fetch import FetchError, cluster_documents

_PAIR = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?):([a-z0-9]([-a-z0-9.]*[a-z0-9])?)\Z")


def run_trust_policy(args: argparse.Namespace) -> int:
    if args.pod_identity:
        return _pod_identity(args)
    if args.chained_from:
        return say("trust-policy", "--chained-from goes with --pod-identity (a target role of an EKS Pod Identity "
                   "association)")
    if not args.service_accounts:
        return say("trust-policy", "name at least one NAMESPACE:SERVICEACCOUNT (or --pod-identity)")
    pairs = []
    for item in args.service_accounts:
        match = _PAIR.match(item)
        if not match:
            return say("trust-policy", f"{item!r} is not NAMESPACE:SERVICEACCOUNT")
        pairs.append((match.group(1), match.group(3)))
    if not re.fullmatch(r"\d{12}", args.account):
        return say("trust-policy", f"--account {args.account!r} is not a 12-digit AWS account id")
    if args.partition not in PARTITIONS:
        return say("trust-policy", f"--partition {args.partition!r} is not one of {', '.join(PARTITIONS)}")
    issuer = args.issuer
    if not issuer:
        try:
            discovery, _ = asyncio.run(cluster_documents(args.kubeconfig, args.kube_api))
        except FetchError as exc:
            return say("trust-policy", f"{exc} (or pass --issuer URL)")
        issuer = str(discovery.get("issuer") or "")
    try:
        check_issuer(issuer)
    except OidcError as exc:
        return say("trust-policy", str(exc))
    for _, status, message in issuer_problems(issuer):
        if status != "ok":
            print(f"warning: {message}", file=sys.stderr)
    document = trust_policy.generate(issuer, args.account, pairs, args.partition, args.audience)
    print(json.dumps(document, indent=2))
    return OK


def _pod_identity(args: argparse.Namespace) -> int:
    """EKS Pod Identity: the association names the ServiceAccount, the role trusts the service."""
    if args.service_accounts:
        return say("trust-policy", "--pod-identity takes no NAMESPACE:SERVICEACCOUNT: an EKS Pod Identity "
                   "association names them (aws eks create-pod-identity-association)")
    if not re.fullmatch(r"\d{12}", args.account):
        return say("trust-policy", f"--account {args.account!r} is not a 12-digit AWS account id")
    if args.chained_from:
        if role_arn_problems(args.chained_from):
            return say("trust-policy", f"--chained-from {args.chained_from!r} is not an IAM role ARN")
        print(json.dumps(trust_policy.generate_chain_target(args.chained_from), indent=2))
        return OK
    print(json.dumps(trust_policy.generate_pod_identity(args.account, args.partition), indent=2))
    return OK
