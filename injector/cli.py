"""The `pod-identity-injector` command: flags → settings → the server, the planner or certs.

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

from . import __version__
from .identity import parse_go_bool
from .settings import (
    DEFAULT_ANNOTATION_PREFIX,
    DEFAULT_CC_AUDIENCE,
    DEFAULT_CC_FULL_URI,
    DEFAULT_CC_MOUNT_PATH,
    DEFAULT_CC_TOKEN_PATH,
    DEFAULT_CC_VOLUME_NAME,
    DEFAULT_TOKEN_AUDIENCE,
    DEFAULT_TOKEN_EXPIRATION,
    DEFAULT_TOKEN_MOUNT_PATH,
    MutationSettings,
    ServeSettings,
    SettingsError,
)

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


def _flag(group: Any, *names: str, **kwargs: Any) -> None:
    """Register a flag; booleans take an optional value like pflag's."""
    if kwargs.get("type") is go_bool:
        kwargs.setdefault("nargs", "?")
        kwargs.setdefault("const", True)
        kwargs.setdefault("metavar", "BOOL")
    group.add_argument(*names, **kwargs)


def add_mutation_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("mutation (same meaning as the Go webhook's flags)")
    _flag(g, "--annotation-prefix", default=DEFAULT_ANNOTATION_PREFIX,
          help="domain of the ServiceAccount and pod annotation keys")
    _flag(g, "--token-audience", default=DEFAULT_TOKEN_AUDIENCE, help="default audience of the projected token")
    _flag(g, "--token-mount-path", default=DEFAULT_TOKEN_MOUNT_PATH, help="mount path of the token volume")
    _flag(g, "--token-expiration", type=int, default=DEFAULT_TOKEN_EXPIRATION,
          help="default token lifetime in seconds (raised to 600 if lower)")
    _flag(g, "--aws-default-region", default="", help="inject AWS_DEFAULT_REGION and AWS_REGION with this value")
    _flag(g, "--sts-regional-endpoint", type=go_bool, default=False,
          help="inject AWS_STS_REGIONAL_ENDPOINTS=regional unless a ServiceAccount annotation says otherwise")
    _flag(g, "--compose-role-arn", type=go_bool, default=False,
          help="allow role-arn annotations holding only a role name; needs --aws-account-id")
    _flag(g, "--aws-account-id", default="", help="account id for --compose-role-arn")
    _flag(g, "--aws-partition", default="aws", help="partition for --compose-role-arn (aws, aws-cn, aws-us-gov, …)")
    _flag(g, "--container-credentials-audience", default=DEFAULT_CC_AUDIENCE)
    _flag(g, "--container-credentials-token-mount-path", default=DEFAULT_CC_MOUNT_PATH)
    _flag(g, "--container-credentials-token-volume-name", default=DEFAULT_CC_VOLUME_NAME)
    _flag(g, "--container-credentials-token-path", default=DEFAULT_CC_TOKEN_PATH)
    _flag(g, "--container-credentials-full-uri", default=DEFAULT_CC_FULL_URI)


def mutation_settings(args: argparse.Namespace) -> MutationSettings:
    return MutationSettings(
        annotation_prefix=args.annotation_prefix,
        token_audience=args.token_audience,
        token_mount_path=args.token_mount_path,
        token_expiration=args.token_expiration,
        aws_default_region=args.aws_default_region,
        sts_regional_endpoint=args.sts_regional_endpoint,
        compose_role_arn=args.compose_role_arn,
        aws_account_id=args.aws_account_id,
        aws_partition=args.aws_partition,
        cc_audience=args.container_credentials_audience,
        cc_mount_path=args.container_credentials_token_mount_path,
        cc_volume_name=args.container_credentials_token_volume_name,
        cc_token_path=args.container_credentials_token_path,
        cc_full_uri=args.container_credentials_full_uri,
    )


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the admission webhook (the default when only flags are given)",
                       description="Run the mutating admission webhook over TLS.")
    add_mutation_flags(p)
    g = p.add_argument_group("server")
    _flag(g, "--port", type=int, default=443, help="TLS port for /mutate, /healthz, /readyz")
    _flag(g, "--metrics-port", type=int, default=9999, help="plain-HTTP port for /metrics (0 disables)")
    _flag(g, "--bind-address", default="", help="address to listen on (default: all interfaces)")
    _flag(g, "--tls-cert", default="/etc/webhook/certs/tls.crt", help="serving certificate (reloaded on change)")
    _flag(g, "--tls-key", default="/etc/webhook/certs/tls.key", help="serving key (reloaded on change)")
    _flag(g, "--tls-min-version", default="", help="1.0, 1.1, 1.2, 1.3 or VersionTLS10…VersionTLS13")
    _flag(g, "--tls-cipher-suites", default="", help="comma-separated Go/IANA cipher suite names")
    _flag(g, "--in-cluster", type=go_bool, default=False,
          help="accepted for compatibility; only false is supported (the CSR mode is broken upstream)")
    _flag(g, "--cert-mode", choices=("files", "self-managed"), default="files",
          help="files: read --tls-cert/--tls-key; self-managed: keep a CA and serving certificate in the "
               "Secret --tls-secret and the caBundle of --webhook-configuration up to date")
    _flag(g, "--service-name", default="pod-identity-webhook",
          help="self-managed: the Service whose DNS names the certificate carries")
    _flag(g, "--tls-secret", default="pod-identity-webhook", help="self-managed: Secret holding CA and certificate")
    _flag(g, "--webhook-configuration", default="pod-identity-webhook",
          help="self-managed: MutatingWebhookConfiguration whose caBundle is kept in step")
    _flag(g, "--cert-validity", type=go_duration, default=90 * 24 * 3600.0,
          help="self-managed: serving certificate lifetime (default 2160h)")
    _flag(g, "--cert-renew-before", type=go_duration, default=30 * 24 * 3600.0,
          help="self-managed: renew this long before expiry (default 720h)")
    _flag(g, "--cert-check-interval", type=go_duration, default=60.0,
          help="self-managed: how often to re-check the Secret and the caBundle (repairs a wiped one)")
    _flag(g, "--cert-dir", default="", help="self-managed: where to write the serving pair (default: a temp dir)")
    _flag(g, "--cert-san", dest="cert_extra_sans", action="append", default=[], metavar="NAME_OR_IP",
          help="self-managed: extra DNS name or IP for the certificate (repeatable)")
    _flag(g, "--namespace", default="eks",
          help="the webhook's namespace: where the pod-identity-webhook ConfigMap and --tls-secret live")
    _flag(g, "--enable-debugging-handlers", type=go_bool, default=False, help="serve /debug/alpha/* routes")
    _flag(g, "--workers", type=int, default=0,
          help="serving processes sharing the port (0: one per available CPU)")
    _flag(g, "--max-request-bytes", type=int, default=3 * 1024 * 1024,
          help="larger AdmissionReview bodies get HTTP 413")
    _flag(g, "--shutdown-delay", type=go_duration, default=0.0,
          help="on SIGTERM, report not-ready and keep serving this long before draining (e.g. 5s)")
    _flag(g, "--shutdown-timeout", type=go_duration, default=10.0,
          help="longest wait for in-flight requests on shutdown")
    _flag(g, "--log-format", choices=("auto", "json", "console"), default="auto",
          help="auto: console on a terminal, JSON otherwise")
    _flag(g, "--log-level", choices=("debug", "info", "warning", "error"), default="info")
    _flag(g, "-v", "--v", dest="verbosity", type=lambda s: int(s.lstrip("=")), default=0,
          help="klog-style verbosity; 4 or more logs every decision at debug detail")
    _flag(g, "--logtostderr", type=go_bool, default=True, help="accepted for compatibility; logs go to stderr")

    s = p.add_argument_group("identity sources")
    _flag(s, "--service-account", dest="service_account_files", action="append", default=[], metavar="FILE",
          help="serve ServiceAccounts from manifests instead of watching the cluster (repeatable; YAML/JSON, List)")
    _flag(s, "--config-map", dest="config_map_file", default="", metavar="FILE",
          help="a pod-identity-webhook ConfigMap manifest to serve from, without a cluster")
    _flag(s, "--watch-container-credentials-config", default="", metavar="FILE",
          help="EKS Pod Identity identities file (JSON), reloaded when it changes")
    _flag(s, "--kubeconfig", default="",
          help="kubeconfig for the API server (default: in-cluster config, then ~/.kube/config)")
    _flag(s, "--kube-api", default="", help="API server URL override")
    _flag(s, "--watch-config-map", type=go_bool, default=False,
          help="watch the pod-identity-webhook ConfigMap in --namespace (needs a cluster)")
    _flag(s, "--service-account-lookup-grace-period", type=go_duration, default=1.0,
          help="on a cache miss, wait this long for the ServiceAccount (0 disables)")
    _flag(s, "--resync-period", type=go_duration, default=60.0, help="ServiceAccount watch resync period")


def _add_mutate(sub: Any) -> None:
    p = sub.add_parser("mutate", help="run the planner offline on a Pod or AdmissionReview file",
                       description="Print what the webhook would do to a pod, without a cluster or server.")
    p.add_argument("-f", "--filename", required=True, metavar="FILE",
                   help="a Pod or an AdmissionReview (YAML or JSON); - for standard input")
    p.add_argument("-o", "--output", choices=("patch", "pod", "yaml", "review"), default="patch")
    p.add_argument("--service-account", dest="service_account_files", action="append", default=[],
                   metavar="FILE", help="ServiceAccount manifests (repeatable, multi-document)")
    p.add_argument("--config-map", dest="config_map_file", default="", metavar="FILE",
                   help="the pod-identity-webhook ConfigMap manifest")
    p.add_argument("--container-credentials-config", default="", metavar="FILE",
                   help="the EKS Pod Identity identities file (JSON)")
    p.add_argument("--namespace", default="default", help="namespace when the pod or review names none")
    p.add_argument("--jitter-seed", type=int, default=None,
                   help="seed the container-credentials expiration jitter for reproducible output")
    add_mutation_flags(p)


def _add_certs(sub: Any) -> None:
    p = sub.add_parser("certs", help="generate a CA and a serving certificate",
                       description="Write ca.crt/ca.key and tls.crt/tls.key into a directory. An existing "
                                   "CA there is reused; the serving certificate is reissued when it is "
                                   "missing, near expiry or has other names.")
    p.add_argument("--out-dir", default="certs", help="directory to write into (default: certs)")
    p.add_argument("--dns", action="append", default=[], metavar="NAME", help="DNS name (repeatable)")
    p.add_argument("--ip", action="append", default=[], metavar="ADDR", help="IP address (repeatable)")
    p.add_argument("--service", metavar="NAME.NAMESPACE",
                   help="add the in-cluster DNS names of this Service (name, name.ns, name.ns.svc, …)")
    p.add_argument("--days", type=int, default=365, help="serving certificate validity")
    p.add_argument("--force", action="store_true", help="reissue the serving certificate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pod-identity-injector",
        description="Kubernetes admission webhook that gives pods AWS IAM credentials.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", metavar="{serve,mutate,certs,version}")
    _add_serve(sub)
    _add_mutate(sub)
    _add_certs(sub)
    sub.add_parser("version", help="print the version")
    return parser


def serve_settings(args: argparse.Namespace) -> ServeSettings:
    if args.in_cluster:
        raise SettingsError(
            "--in-cluster=true (certificates from the CSR API) is not supported: it cannot obtain a "
            "certificate on current clusters. Use --in-cluster=false with --tls-cert/--tls-key."
        )
    # Every serve flag's dest is named after its ServeSettings field.
    values = {f.name: getattr(args, f.name) for f in fields(ServeSettings) if hasattr(args, f.name)}
    values.update(
        mutation=mutation_settings(args),
        service_account_files=tuple(args.service_account_files),
        cert_extra_sans=tuple(args.cert_extra_sans),
        log_level="debug" if args.verbosity >= 4 else args.log_level,
    )
    return ServeSettings(**values)


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
            from .server import run

            return run(serve_settings(args))
        if args.command == "mutate":
            from .offline import run_mutate

            return run_mutate(args, mutation_settings(args))
        if args.command == "certs":
            return run_certs(args)
        if args.command == "version":
            print(__version__)
            return 0
    except SettingsError as exc:
        return _fail(str(exc))
    parser.print_help()
    return 2


def run_certs(args: argparse.Namespace) -> int:
    from .certs import ensure_certs, service_names

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
