"""The `pod-identity-injector` command: flags → settings → the server, the planner or certs.

The `serve` and mutation flags are generated from the settings dataclasses, where each is
declared once (`settings.flag`); only command options that are not settings (`mutate -f`,
`certs --out-dir`, the Go compatibility flags) are registered here, through the same helper.
Flag names, defaults and syntax follow the Go webhook (`--flag=value`, `--flag value`,
`--flag` / `--flag=false` for booleans) so a Deployment can switch by changing the image;
invoked with flags and no subcommand, the command serves, exactly like the Go binary.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from injector import __version__
from injector.core.identity import parse_go_bool
from injector.core.settings import SERVER, SOURCES, MutationSettings, ServeSettings, SettingsError

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_bool(text: str) -> bool:
    value = parse_go_bool(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"invalid boolean {text!r}")
    return value


def go_duration(text: str) -> float:
    """Go's `time.ParseDuration` (e.g. `100ms`, `1m30s`, `0`), in seconds."""
    sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.lstrip("+"))
    if body == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if not match:
            raise argparse.ArgumentTypeError(f"invalid duration {text!r} (examples: 500ms, 2s, 1m30s)")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not body:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}")
    return sign * total


def add_flag(group: Any, *names: str, **kwargs: Any) -> None:
    """Register one flag; booleans take an optional value like pflag's (`--x`, `--x=false`)."""
    if kwargs.get("type") is go_bool:
        kwargs.setdefault("nargs", "?")
        kwargs.setdefault("const", True)
        kwargs.setdefault("metavar", "BOOL")
    group.add_argument(*names, **kwargs)


# How a settings field's annotation is read from the command line; floats are Go durations.
_PARSERS: dict[str, dict[str, Any]] = {
    "str": {}, "int": {"type": int}, "bool": {"type": go_bool}, "float": {"type": go_duration},
    "tuple[str, ...]": {"action": "append"},
}


def add_settings_flags(groups: dict[str, Any], settings_class: type, only: tuple[str, ...] = ()) -> None:
    """Register a flag for every field of `settings_class` declared with `settings.flag`
    (or only for the fields named in `only`).

    The field's name is the flag's `dest`, so `settings_from_args` can read them all back.
    """
    for f in fields(settings_class):
        spec = f.metadata.get("flag")
        if spec is None or (only and f.name not in only):
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "help": spec.help or None, **_PARSERS[str(f.type)]}
        kwargs["default"] = list(f.default) if kwargs.get("action") == "append" else f.default
        if spec.choices:
            kwargs["choices"] = spec.choices
        if spec.metavar:
            kwargs["metavar"] = spec.metavar
        add_flag(groups[spec.group], "--" + (spec.name or f.name.replace("_", "-")), **kwargs)


def settings_from_args(settings_class: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """Build a settings object from the flags `add_settings_flags` registered for it."""
    values = {}
    for f in fields(settings_class):
        if "flag" in f.metadata:
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return settings_class(**{**values, **overrides})


def add_mutation_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("mutation (same meaning as the Go webhook's flags)")
    add_settings_flags({"": group}, MutationSettings)


def mutation_settings(args: argparse.Namespace) -> MutationSettings:
    return settings_from_args(MutationSettings, args, **account_from_instance_metadata(args))


def account_from_instance_metadata(args: argparse.Namespace) -> dict[str, str]:
    """--compose-role-arn without --aws-account-id: this EC2 instance's account, and its partition
    unless --aws-partition was given (docs/reference.md#instance-metadata). Otherwise nothing is asked."""
    if not args.compose_role_arn or args.aws_account_id:
        return {}
    from injector.sources.instance_metadata import MetadataError, lookup

    try:
        found = lookup()
    except MetadataError as exc:
        raise SettingsError(f"--compose-role-arn needs --aws-account-id, and {exc}") from None
    return {"aws_account_id": found.account_id, "aws_partition": args.aws_partition or found.partition}


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the admission webhook (the default when only flags are given)",
                       description="Run the mutating admission webhook over TLS.")
    add_mutation_flags(p)
    server, sources = p.add_argument_group(SERVER), p.add_argument_group(SOURCES)
    add_settings_flags({SERVER: server, SOURCES: sources}, ServeSettings)
    # Accepted for compatibility with the Go webhook; not settings of their own.
    add_flag(server, "--in-cluster", type=go_bool, default=False,
             help="accepted for compatibility; only false is supported (the CSR mode is broken upstream)")
    add_flag(server, "-v", "--v", dest="verbosity", type=lambda s: int(s.lstrip("=")), default=0,
             help="klog-style verbosity; 4 or more logs every decision at debug detail")
    add_flag(server, "--logtostderr", type=go_bool, default=True, help="accepted for compatibility; logs go to stderr")


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
                            description="SHA-1 of the last CA certificate in the chain the host serves.")
    add_flag(q, "url", metavar="https://HOST[/PATH]")
    add_flag(q, "--audience", default="sts.amazonaws.com", help="client id for the printed aws iam command")
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
    """`doctor`, `trust-policy`, `audit` (docs/doctor.md); run by `injector.cli.doctor`."""
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
    add_flag(p, "service_accounts", nargs="+", metavar="NAMESPACE:SERVICEACCOUNT")
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
    parser = argparse.ArgumentParser(
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


def _fail(message: str) -> int:
    print(f"pod-identity-injector: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "serve")  # the Go binary's calling convention: flags only
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            from injector.server.processes import run

            return run(serve_settings(args))
        if args.command == "mutate":
            from injector.cli.mutate import run_mutate

            return run_mutate(args, mutation_settings(args))
        if args.command == "certs":
            return run_certs(args)
        if args.command == "oidc":
            from injector.cli.oidc import run_oidc

            return run_oidc(args)
        if args.command in ("doctor", "trust-policy", "audit"):
            from injector.cli import doctor as doctor_cli

            if args.command == "trust-policy":
                return doctor_cli.run_trust_policy(args)
            run_command = doctor_cli.run_doctor if args.command == "doctor" else doctor_cli.run_audit
            return run_command(args, mutation_settings(args))
        if args.command == "version":
            import injector

            print(f"{__version__} (commit {injector.__commit__})" if injector.__commit__ else __version__)
            return 0
    except SettingsError as exc:
        return _fail(str(exc))
    parser.print_help()
    return 2


def run_certs(args: argparse.Namespace) -> int:
    from injector.certificates.authority import ensure_certs, service_names

    dns = list(args.dns)
    if args.service:
        name, _, namespace = args.service.partition(".")
        if not name or not namespace:
            return _fail(f"--service {args.service!r} must be NAME.NAMESPACE")
        dns += service_names(name, namespace)
    ips = list(args.ip)
    if not dns and not ips:
        dns, ips = ["localhost"], ["127.0.0.1", "::1"]
    try:
        result = ensure_certs(Path(args.out_dir), dns, ips, days=args.days, force=args.force)
    except (ValueError, OSError) as exc:
        return _fail(f"certs: {exc}")
    ca = "created" if result.ca_created else "reused"
    serving = f"issued ({result.reason})" if result.issued else "kept (still valid)"
    print(f"CA {ca}: {result.paths['ca.crt']}")
    print(f"serving certificate {serving}: {result.paths['tls.crt']}, valid until {result.not_after:%Y-%m-%d}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
