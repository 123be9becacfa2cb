"""The `pod-identity-injector` command line: every subcommand's flags, and the settings
they make.
Flags are declared on the settings (`core.settings`), not here; this module only registers them.

`serve`'s flags and the mutation flags come from the settings declarations (`core.flags`);
only command options that are not settings (`mutate -f`, `certs --out-dir`) are registered
here, through the same helper. Flag names, defaults and syntax follow the Go webhook
(`--flag=value`, `--flag value`, `--flag` / `--flag=false` for booleans). A bad value exits 2
with one line naming the flag.
"""

from __future__ import annotations

import argparse
from typing import Any

from injector import __version__
from injector.core.flags import (
    FlagParser,
    add_flag,
    add_mutation_flags,
    add_serve_flags,
    add_settings_flags,
    settings_from_args,
)
from injector.core.settings import SOURCES, MutationSettings, ServeSettings, SettingsError
from injector.sources.instance_metadata import MetadataError, lookup


def mutation_settings(args: argparse.Namespace) -> MutationSettings:
    return settings_from_args(MutationSettings, args, **account_from_instance_metadata(args))


def account_from_instance_metadata(args: argparse.Namespace) -> dict[str, str]:
    """--compose-role-arn without --aws-account-id: this EC2 instance's account, and its partition
    unless --aws-partition was given (docs/reference.md#instance-metadata). Otherwise nothing is asked."""
    if not args.compose_role_arn or args.aws_account_id:
        return {}
    try:
        found = lookup()
    except MetadataError as exc:
        raise SettingsError(f"--compose-role-arn needs --aws-account-id, and {exc}") from None
    return {"aws_account_id": found.account_id, "aws_partition": args.aws_partition or found.partition}


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the admission webhook (the default when only flags are given)",
                       description="Run the mutating admission webhook over TLS.")
    add_serve_flags(p)


def _add_mutate(sub: Any) -> None:
    p = sub.add_parser("mutate", help="run the planner offline on a Pod or AdmissionReview file",
                       description="Print what the webhook would do to a pod, without a cluster or server.")
    add_flag(p, "-f", "--filename", required=True, metavar="FILE",
                   help="a Pod or an AdmissionReview (YAML or JSON); - for standard input")
    add_flag(p, "-o", "--output", choices=("patch", "pod", "yaml", "review"), default="patch")
    add_flag(p, "--service-account", dest="service_account_files", action="append", default=[],
                   metavar="FILE", help="ServiceAccount manifests (repeatable, multi-document)")
    add_flag(p, "--config-map", dest="config_map_file", default="", metavar="FILE",
                   help="the pod-identity-webhook ConfigMap manifest")
    add_flag(p, "--container-credentials-config", default="", metavar="FILE",
                   help="the EKS Pod Identity identities file (JSON)")
    add_flag(p, "--namespace", default="default", help="namespace when the pod or review names none")
    add_flag(p, "--jitter-seed", type=int, default=None,
                   help="seed the container-credentials expiration jitter for reproducible output")
    add_mutation_flags(p)


def _add_certs(sub: Any) -> None:
    p = sub.add_parser("certs", help="generate a CA and a serving certificate",
                       description="Write ca.crt/ca.key and tls.crt/tls.key into a directory. An existing "
                                   "CA there is reused; the serving certificate is reissued when it is "
                                   "missing, near expiry or has other names.")
    add_flag(p, "--out-dir", default="certs", help="directory to write into (default: certs)")
    add_flag(p, "--dns", action="append", default=[], metavar="NAME", help="DNS name (repeatable)")
    add_flag(p, "--ip", action="append", default=[], metavar="ADDR", help="IP address (repeatable)")
    add_flag(p, "--service", metavar="NAME.NAMESPACE",
                   help="add the in-cluster DNS names of this Service (name, name.ns, name.ns.svc, …)")
    add_flag(p, "--days", type=int, default=365, help="serving certificate validity")
    add_flag(p, "--force", action="store_true", help="reissue the serving certificate")


def _add_oidc(sub: Any) -> None:
    p = sub.add_parser("oidc", help="publish, check and register the cluster's OIDC issuer (IRSA outside EKS)",
                       description="The issuer documents IAM and STS need for IRSA on a self-managed cluster; "
                                   "see docs/self-hosted.md.")
    commands = p.add_subparsers(dest="oidc_command", metavar="{publish,thumbprint,verify}", required=True)

    def cluster_flags(q: argparse.ArgumentParser) -> None:
        group = q.add_argument_group("cluster")
        add_settings_flags({SOURCES: group}, ServeSettings, only=("kubeconfig", "kube_api"))

    q = commands.add_parser("publish", help="write the discovery document and JWKS to upload at the issuer URL",
                            description="Write DIR/.well-known/openid-configuration and the JWKS it names, for "
                                        "the public issuer URL, from the live API server or from key files.")
    add_flag(q, "--issuer", required=True, metavar="URL", help="the public https issuer URL (no trailing /)")
    add_flag(q, "--out", required=True, metavar="DIR", help="directory to write the documents into")
    add_flag(q, "--key", dest="key_files", action="append", default=[], metavar="FILE",
             help="a signing public (or private) key PEM instead of the cluster's JWKS (repeatable)")
    cluster_flags(q)
    q = commands.add_parser("thumbprint", help="the certificate thumbprint IAM expects for the issuer's host",
                            description="SHA-1 of the last CA certificate in the chain the host serves, once that "
                                        "chain verifies against the system trust store (or --ca-file).")
    add_flag(q, "url", metavar="https://HOST[/PATH]")
    add_flag(q, "--audience", default="sts.amazonaws.com", help="client id for the printed aws iam command")
    add_flag(q, "--ca-file", default="", metavar="FILE",
             help="check the served chain against this CA instead of the system trust store (private CAs)")
    add_flag(q, "--insecure", action="store_true",
             help="take the thumbprint without checking the chain against any trust store (says so loudly)")
    q = commands.add_parser("verify", help="check a token against the published documents, as STS would",
                            description="Fetch the issuer's discovery document and JWKS and check a token's "
                                        "signature, iss, aud and exp against them.")
    add_flag(q, "--issuer", required=True, metavar="URL", help="the public issuer URL (the IAM provider's)")
    source = q.add_mutually_exclusive_group(required=True)
    add_flag(source, "--token", metavar="FILE", help="a token file (- for standard input)")
    add_flag(source, "--pod", metavar="NAME", help="request a token through TokenRequest as this pod would get it")
    add_flag(q, "-n", "--namespace", default="default", help="the pod's namespace")
    add_flag(q, "--audience", default="sts.amazonaws.com", help="the audience STS expects (the client id)")
    add_flag(q, "--ca-file", default="", metavar="FILE", help="trust this CA for the issuer URL (private CAs)")
    cluster_flags(q)


def _add_doctor(sub: Any) -> None:
    """`doctor`, `trust-policy`, `audit` (docs/doctor.md)."""
    def cluster_flags(q: argparse.ArgumentParser) -> None:
        add_settings_flags({SOURCES: q.add_argument_group("cluster")}, ServeSettings, only=("kubeconfig", "kube_api"))

    p = sub.add_parser("doctor", help="say why a pod has (or has not) working AWS credentials",
                       description="Check a pod's ServiceAccount, the webhook, the pod, each container's SDK, "
                                   "the token and the role's trust policy; live (POD -n NS) or from files (-f).")
    add_flag(p, "pod", nargs="?", metavar="POD", help="the pod's name, live")
    add_flag(p, "-n", "--namespace", default="default", help="the pod's namespace (default: default)")
    add_flag(p, "-f", "--filename", metavar="FILE", help="offline: a Pod (YAML or JSON; - for stdin)")
    add_flag(p, "--service-account", dest="service_account_files", action="append", default=[], metavar="FILE",
             help="offline: ServiceAccount manifests (repeatable)")
    add_flag(p, "--config-map", dest="config_map_file", default="", metavar="FILE",
             help="offline: the pod-identity-webhook ConfigMap manifest")
    add_flag(p, "--container-credentials-config", default="", metavar="FILE",
             help="offline: the EKS Pod Identity identities file (JSON)")
    add_flag(p, "--trust-policy", default="", metavar="FILE", help="the role's trust policy (as IAM returns it)")
    add_flag(p, "--fetch-trust-policy", action="store_true", help="read the trust policy with IAM GetRole (boto3)")
    add_flag(p, "--role-arn", default="", metavar="ARN",
             help="EKS Pod Identity: the association's role, the first link of a chain to --target-trust-policy")
    add_flag(p, "--target-trust-policy", default="", metavar="FILE",
             help="EKS Pod Identity: the trust policy of the association's target role (role chaining)")
    add_flag(p, "--issuer", default="", metavar="URL", help="the OIDC issuer (live default: the cluster's)")
    add_flag(p, "--ca-file", default="", metavar="FILE", help="live: trust this CA when fetching the issuer's keys")
    add_flag(p, "--webhook-configuration", default="", metavar="NAME",
             help="live: the MutatingWebhookConfiguration (default: the one sending pods to pod-identity-webhook)")
    add_flag(p, "-o", "--output", choices=("text", "json"), default="text")
    cluster_flags(p)
    add_mutation_flags(p)

    p = sub.add_parser("trust-policy", help="print a trust policy for NAMESPACE:SERVICEACCOUNT pairs",
                       description="A role trust policy letting these ServiceAccounts assume the role with "
                                   "web identity (StringEquals on sub and aud).")
    add_flag(p, "service_accounts", nargs="*", metavar="NAMESPACE:SERVICEACCOUNT")
    add_flag(p, "--pod-identity", action="store_true",
             help="the trust policy EKS Pod Identity needs instead (pods.eks.amazonaws.com; no pairs, no issuer)")
    add_flag(p, "--chained-from", default="", metavar="ROLE_ARN",
             help="with --pod-identity: the trust policy of a target role that the association's role ROLE_ARN "
                  "chains to")
    add_flag(p, "--issuer", default="", metavar="URL", help="the OIDC issuer (default: the live cluster's)")
    add_flag(p, "--account", required=True, metavar="ID", help="the AWS account of the role and OIDC provider")
    add_flag(p, "--partition", default="aws", help="aws, aws-cn, aws-us-gov, …")
    add_flag(p, "--audience", default="sts.amazonaws.com", help="the token audience (the provider's client id)")
    cluster_flags(p)

    p = sub.add_parser("audit", help="list pods whose ServiceAccount has an identity but that lack credentials",
                       description="Live: every pod that maps to an identity today but was not mutated, with the "
                                   "likely reason and the owner to restart.")
    add_flag(p, "-n", "--namespace", default="", help="only this namespace (default: all)")
    add_flag(p, "--webhook-configuration", default="", metavar="NAME", help="as for doctor")
    add_flag(p, "-o", "--output", choices=("text", "json"), default="text")
    cluster_flags(p)
    add_mutation_flags(p)


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(
        prog="pod-identity-injector",
        description="Kubernetes admission webhook that gives pods AWS IAM credentials.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", metavar="{serve,mutate,certs,oidc,doctor,trust-policy,audit,version}")
    _add_serve(sub)
    _add_mutate(sub)
    _add_certs(sub)
    _add_oidc(sub)
    _add_doctor(sub)
    sub.add_parser("version", help="print the version")
    return parser


def serve_settings(args: argparse.Namespace) -> ServeSettings:
    if args.in_cluster:
        raise SettingsError(
            "--in-cluster=true (certificates from the CSR API) is not supported: it cannot obtain a "
            "certificate on current clusters. Use --in-cluster=false with --tls-cert/--tls-key."
        )
    return settings_from_args(ServeSettings, args, mutation=mutation_settings(args),
                              **({"log_level": "debug"} if args.verbosity >= 4 else {}))
