"""Immutable settings, built once from flags and passed down (no globals); the one place where
each flag's name, default and help are declared.
Nothing here reads the environment, a file or the network.

`MutationSettings` is everything the planner and the identity rules read; `ServeSettings`
adds what only the server edge needs. A field declared with `flag(...)` is a command-line
flag: `cli` generates the parser from these declarations (type from the annotation), so a
default can never differ between the command line and the code. Names and defaults follow
the Go webhook's flags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

DEFAULT_ANNOTATION_PREFIX = "eks.amazonaws.com"
DEFAULT_TOKEN_AUDIENCE = "sts.amazonaws.com"
DEFAULT_TOKEN_MOUNT_PATH = "/var/run/secrets/eks.amazonaws.com/serviceaccount"
DEFAULT_TOKEN_EXPIRATION = 86400
MIN_TOKEN_EXPIRATION = 600
# Container-credentials mode: a default (86400 s) expiration is spread over 22 h–24 h.
JITTER_FLOOR = 79200

WEB_IDENTITY_VOLUME_NAME = "aws-iam-token"
WEB_IDENTITY_TOKEN_PATH = "token"

DEFAULT_CC_AUDIENCE = "pods.eks.amazonaws.com"
DEFAULT_CC_MOUNT_PATH = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount"
DEFAULT_CC_VOLUME_NAME = "eks-pod-identity-token"
DEFAULT_CC_TOKEN_PATH = "eks-pod-identity-token"
DEFAULT_CC_FULL_URI = "http://169.254.170.23/v1/credentials"

# Hard-coded in the Go webhook, independent of --annotation-prefix.
POD_IDENTITY_LABEL = "eks.amazonaws.com/pod-identity"

PARTITIONS = ("aws", "aws-cn", "aws-us-gov", "aws-iso", "aws-iso-b", "aws-iso-e", "aws-iso-f", "aws-eusc")


@dataclass(frozen=True, slots=True)
class Flag:
    """How a settings field appears on the command line; `name` defaults to the field's.

    Numbers are checked when the settings are built (`check_flag_values`): a duration (a
    float field) is never negative, `positive` refuses 0 too, `least`/`most` bound the rest."""

    help: str = ""
    name: str = ""
    group: str = ""
    choices: tuple[str, ...] = ()
    metavar: str = ""
    positive: bool = False
    least: float | None = None
    most: float | None = None

    def flag_name(self, field_name: str) -> str:
        return self.name or field_name.replace("_", "-")


SERVER, SOURCES = "server", "identity sources"


def flag(default: Any, help: str = "", **spec: Any) -> Any:
    """A settings field that is also a flag (see `Flag`)."""
    return field(default=default, metadata={"flag": Flag(help, **spec)})


class SettingsError(ValueError):
    """A flag value that cannot be used; the message names the flag."""


def _shown(value: Any) -> str:
    """A value as it is written on the command line: durations the way Go prints them."""
    if not isinstance(value, float):
        return str(value)
    sign, seconds = ("-" if value < 0 else ""), abs(value)
    if 0 < seconds < 1:
        return f"{sign}{seconds * 1000:g}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{sign}{hours:.0f}h{minutes:.0f}m{seconds:g}s"
    return f"{sign}{minutes:.0f}m{seconds:g}s" if minutes else f"{sign}{seconds:g}s"


def check_flag_values(settings: Any) -> None:
    """Refuse a number no flag may take (negative durations, zero intervals, ports out of
    range), naming the flag; checked once, when the settings are built from the flags."""
    for f in fields(settings):
        spec, value = f.metadata.get("flag"), getattr(settings, f.name)
        if spec is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        least = spec.least if spec.least is not None else (0 if isinstance(value, float) else None)
        if spec.positive and value <= 0:
            reason = "must be greater than 0"
        elif least is not None and value < least:
            reason = "must not be negative" if least == 0 else f"must be at least {least:g}"
        elif spec.most is not None and value > spec.most:
            reason = f"must be at most {spec.most:g}"
        else:
            continue
        raise SettingsError(f"--{spec.flag_name(f.name)}={_shown(value)}: {reason}")


def clamp_expiration(seconds: int) -> int:
    """Token lifetimes below the API server's minimum are raised to it."""
    return max(seconds, MIN_TOKEN_EXPIRATION)


@dataclass(frozen=True, slots=True)
class MutationSettings:
    """What decides the shape of a mutation: the flags that change the resulting pod."""

    annotation_prefix: str = flag(DEFAULT_ANNOTATION_PREFIX, "domain of the ServiceAccount and pod annotation keys")
    token_audience: str = flag(DEFAULT_TOKEN_AUDIENCE, "default audience of the projected token")
    token_mount_path: str = flag(DEFAULT_TOKEN_MOUNT_PATH, "mount path of the token volume")
    token_expiration: int = flag(DEFAULT_TOKEN_EXPIRATION, "default token lifetime in seconds (raised to 600 if lower)")
    aws_default_region: str = flag("", "inject AWS_DEFAULT_REGION and AWS_REGION with this value")
    sts_regional_endpoint: bool = flag(
        False, "inject AWS_STS_REGIONAL_ENDPOINTS=regional unless a ServiceAccount annotation says otherwise")
    role_session_name_from_pod: bool = flag(
        False, "inject AWS_ROLE_SESSION_NAME from the pod's name (downward API), so CloudTrail shows which pod "
        "assumed the role, unless a ServiceAccount annotation says otherwise (web identity only)")
    compose_role_arn: bool = flag(
        False, "allow role-arn annotations holding only a role name; the account and partition are "
        "--aws-account-id/--aws-partition or, without --aws-account-id, this EC2 instance's (instance metadata)")
    aws_account_id: str = flag("", "account id for --compose-role-arn (default: from EC2 instance metadata)")
    # "" until resolved: given, looked up with the account, or "aws" (docs/reference.md#instance-metadata).
    aws_partition: str = flag("", "partition for --compose-role-arn (aws, aws-cn, aws-us-gov, …; default: "
                              "from instance metadata when the account is, else aws)")
    cc_audience: str = flag(DEFAULT_CC_AUDIENCE, name="container-credentials-audience")
    cc_mount_path: str = flag(DEFAULT_CC_MOUNT_PATH, name="container-credentials-token-mount-path")
    cc_volume_name: str = flag(DEFAULT_CC_VOLUME_NAME, name="container-credentials-token-volume-name")
    cc_token_path: str = flag(DEFAULT_CC_TOKEN_PATH, name="container-credentials-token-path")
    cc_full_uri: str = flag(DEFAULT_CC_FULL_URI, name="container-credentials-full-uri")

    def __post_init__(self) -> None:
        check_flag_values(self)
        # The Go webhook raises a too-short flag value at start-up; so do we.
        object.__setattr__(self, "token_expiration", clamp_expiration(self.token_expiration))
        object.__setattr__(self, "aws_partition", self.aws_partition or "aws")
        if self.compose_role_arn:
            # The command line looks an absent account up before it builds settings (cli.py).
            if not re.fullmatch(r"\d{12}", self.aws_account_id):
                raise SettingsError(f"--aws-account-id {self.aws_account_id!r} is not 12 digits"
                                    if self.aws_account_id else "--compose-role-arn needs --aws-account-id")
            if self.aws_partition not in PARTITIONS:
                raise SettingsError(
                    f"--aws-partition {self.aws_partition!r} is not one of {', '.join(PARTITIONS)}"
                )

    def annotation(self, name: str) -> str:
        """The full annotation key `<prefix>/<name>`."""
        return f"{self.annotation_prefix}/{name}"


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """The admission server's own settings; `mutation` is shared with the offline CLI."""

    mutation: MutationSettings = field(default_factory=MutationSettings)
    port: int = flag(443, "TLS port for /mutate, /healthz, /readyz", group=SERVER, least=0, most=65535)
    metrics_port: int = flag(9999, "plain-HTTP port for /metrics (0 disables)", group=SERVER, least=0, most=65535)
    bind_address: str = flag("", "address to listen on (default: all interfaces)", group=SERVER)
    tls_cert: str = flag("/etc/webhook/certs/tls.crt", "serving certificate (reloaded on change)", group=SERVER)
    tls_key: str = flag("/etc/webhook/certs/tls.key", "serving key (reloaded on change)", group=SERVER)
    tls_min_version: str = flag("", "1.0, 1.1, 1.2, 1.3 or VersionTLS10…VersionTLS13", group=SERVER)
    tls_cipher_suites: str = flag("", "comma-separated Go/IANA cipher suite names", group=SERVER)
    cert_reload_interval: float = 1.0  # how often the serving pair's files are checked
    cert_mode: str = flag(
        "files", "files: read --tls-cert/--tls-key; self-managed: keep a CA and serving certificate in the "
        "Secret --tls-secret and the caBundle of --webhook-configuration up to date",
        group=SERVER, choices=("files", "self-managed"))
    service_name: str = flag(
        "pod-identity-webhook", "self-managed: the Service whose DNS names the certificate carries", group=SERVER)
    tls_secret: str = flag("pod-identity-webhook", "self-managed: Secret holding CA and certificate", group=SERVER)
    webhook_configuration: str = flag(
        "pod-identity-webhook", "self-managed: MutatingWebhookConfiguration whose caBundle is kept in step",
        group=SERVER)
    cert_validity: float = flag(90 * 24 * 3600.0, "self-managed: serving certificate lifetime (default 2160h)",
                                group=SERVER, positive=True)
    cert_renew_before: float = flag(
        30 * 24 * 3600.0, "self-managed: renew this long before expiry (default 720h; at most a third of "
        "--cert-validity is used)", group=SERVER)
    cert_check_interval: float = flag(
        60.0, "self-managed: how often to re-check the Secret and the caBundle (repairs a wiped one)", group=SERVER,
        positive=True)
    cert_dir: str = flag("", "self-managed: where to write the serving pair (default: a temp dir)", group=SERVER)
    cert_extra_sans: tuple[str, ...] = flag(
        (), "self-managed: extra DNS name or IP for the certificate (repeatable)", group=SERVER, name="cert-san",
        metavar="NAME_OR_IP")
    namespace: str = flag("eks", "the webhook's namespace: where the pod-identity-webhook ConfigMap and --tls-secret "
                          "live", group=SERVER)
    enable_debugging_handlers: bool = flag(False, "serve /debug/alpha/* routes", group=SERVER)
    workers: int = flag(0, "serving processes sharing the port (0: one per available CPU)", group=SERVER, least=0)
    max_request_bytes: int = flag(3 * 1024 * 1024, "larger AdmissionReview bodies get HTTP 413", group=SERVER,
                                  positive=True)
    # Slow and abusive clients (docs/reference.md#connections). An API server sends a whole request
    # within milliseconds and gives up after its webhook timeout (30 s at most): nothing slower is legitimate.
    read_header_timeout: float = flag(
        10.0, "close a connection whose TLS handshake, or whose request headers, take longer than this (0: never)",
        group=SERVER)
    read_body_timeout: float = flag(20.0, "answer 408 and close when a request body takes longer than this (0: never)",
                                    group=SERVER)
    idle_timeout: float = flag(60.0, "close a keep-alive connection idle for this long (0: never)", group=SERVER)
    max_connections: int = flag(1000, "most connections open at once (handshakes included); more are closed at "
                                "once (0: no limit)", group=SERVER, least=0)
    max_header_bytes: int = flag(16384, "largest request line plus headers; larger get HTTP 431", group=SERVER,
                                positive=True)
    tls_handshake_timeout: float = flag(
        3.0, "close a connection whose TLS handshake takes longer than this (0: never)", group=SERVER)
    # Bodies in flight (docs/reference.md#request-memory): what a review larger than SMALL_BODY may
    # hold at once, in this process and per client address; over it, HTTP 503 before it is read.
    max_inflight_request_bytes: int = flag(
        24 * 1024 * 1024, "most bytes of large request bodies read at once in a process; more get HTTP 503",
        group=SERVER, positive=True)
    max_inflight_request_bytes_per_peer: int = flag(
        6 * 1024 * 1024, "most bytes of large request bodies read at once from one client address",
        group=SERVER, positive=True)
    health_port: int = flag(
        0, "plain-HTTP port with /healthz and /readyz alone, for the kubelet's probes (0: none; the probes "
        "stay on --port too)", group=SERVER, least=0, most=65535)
    shutdown_delay: float = flag(
        0.0, "on SIGTERM, report not-ready and keep serving this long before draining (e.g. 5s)", group=SERVER)
    shutdown_timeout: float = flag(10.0, "longest wait for in-flight requests on shutdown", group=SERVER)
    log_format: str = flag("auto", "auto: console on a terminal, JSON otherwise", group=SERVER,
                           choices=("auto", "json", "console"))
    log_level: str = flag("info", group=SERVER, choices=("debug", "info", "warning", "error"))
    service_account_files: tuple[str, ...] = flag(
        (), "serve ServiceAccounts from manifests instead of watching the cluster (repeatable; YAML/JSON, List)",
        group=SOURCES, name="service-account", metavar="FILE")
    config_map_file: str = flag("", "a pod-identity-webhook ConfigMap manifest to serve from, without a cluster",
                                group=SOURCES, name="config-map", metavar="FILE")
    watch_container_credentials_config: str = flag(
        "", "EKS Pod Identity identities file (JSON), reloaded when it changes", group=SOURCES, metavar="FILE")
    kubeconfig: str = flag("", "kubeconfig for the API server (default: in-cluster config, then ~/.kube/config)",
                           group=SOURCES)
    kube_api: str = flag("", "API server URL override", group=SOURCES)
    watch_config_map: bool = flag(False, "watch the pod-identity-webhook ConfigMap in --namespace (needs a cluster)",
                                  group=SOURCES)
    service_account_lookup_grace_period: float = flag(
        1.0, "on a cache miss, wait this long for the ServiceAccount (0 disables)", group=SOURCES)
    resync_period: float = flag(60.0, "accepted for compatibility; as in the Go webhook it sends no request: the "
                                      "watch keeps the table current (docs/reference.md#watches)", group=SOURCES)
    service_account_events: bool = flag(
        True, "create a Warning Event on a ServiceAccount whose annotations the webhook cannot use as written "
        "(docs/reference.md#service-account-events)", group=SOURCES)

    def __post_init__(self) -> None:
        check_flag_values(self)
        if self.cert_mode == "self-managed" and self.cert_renew_before >= self.cert_validity:
            raise SettingsError(f"--cert-renew-before={_shown(self.cert_renew_before)}: must be shorter than "
                                f"--cert-validity={_shown(self.cert_validity)}")
