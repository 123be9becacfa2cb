"""Immutable settings objects, built once from flags and passed down (no globals).

`MutationSettings` is everything the planner and the identity rules read; `ServeSettings`
adds what only the server edge needs. Defaults and names follow the Go webhook's flags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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


class SettingsError(ValueError):
    """A flag value that cannot be used; the message names the flag."""


def clamp_expiration(seconds: int) -> int:
    """Token lifetimes below the API server's minimum are raised to it."""
    return max(seconds, MIN_TOKEN_EXPIRATION)


@dataclass(frozen=True, slots=True)
class MutationSettings:
    """What decides the shape of a mutation: the flags that change the resulting pod."""

    annotation_prefix: str = DEFAULT_ANNOTATION_PREFIX
    token_audience: str = DEFAULT_TOKEN_AUDIENCE
    token_mount_path: str = DEFAULT_TOKEN_MOUNT_PATH
    token_expiration: int = DEFAULT_TOKEN_EXPIRATION
    aws_default_region: str = ""
    sts_regional_endpoint: bool = False
    compose_role_arn: bool = False
    aws_account_id: str = ""
    aws_partition: str = "aws"
    cc_audience: str = DEFAULT_CC_AUDIENCE
    cc_mount_path: str = DEFAULT_CC_MOUNT_PATH
    cc_volume_name: str = DEFAULT_CC_VOLUME_NAME
    cc_token_path: str = DEFAULT_CC_TOKEN_PATH
    cc_full_uri: str = DEFAULT_CC_FULL_URI

    def __post_init__(self) -> None:
        # The Go webhook raises a too-short flag value at start-up; so do we.
        object.__setattr__(self, "token_expiration", clamp_expiration(self.token_expiration))
        if self.compose_role_arn:
            if not re.fullmatch(r"\d{12}", self.aws_account_id):
                raise SettingsError(
                    "--compose-role-arn needs --aws-account-id (12 digits); "
                    "looking it up from EC2 instance metadata is not supported"
                )
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
    port: int = 443
    metrics_port: int = 9999
    bind_address: str = ""
    tls_cert: str = "/etc/webhook/certs/tls.crt"
    tls_key: str = "/etc/webhook/certs/tls.key"
    tls_min_version: str = ""
    tls_cipher_suites: str = ""
    cert_reload_interval: float = 1.0
    # --cert-mode=self-managed: the webhook keeps its own CA and serving certificate in the
    # Secret --tls-secret and keeps the caBundle of --webhook-configuration in step.
    cert_mode: str = "files"
    tls_secret: str = "pod-identity-webhook"
    service_name: str = "pod-identity-webhook"
    webhook_configuration: str = "pod-identity-webhook"
    cert_validity: float = 90 * 24 * 3600.0
    cert_renew_before: float = 30 * 24 * 3600.0
    cert_check_interval: float = 60.0
    cert_dir: str = ""  # where the self-managed pair is written; "" = a fresh temporary directory
    cert_extra_sans: tuple[str, ...] = ()
    namespace: str = "eks"
    kubeconfig: str = ""
    kube_api: str = ""
    watch_config_map: bool = False
    watch_container_credentials_config: str = ""
    service_account_files: tuple[str, ...] = ()
    config_map_file: str = ""
    service_account_lookup_grace_period: float = 1.0
    resync_period: float = 60.0
    enable_debugging_handlers: bool = False
    workers: int = 1
    max_request_bytes: int = 3 * 1024 * 1024
    shutdown_delay: float = 0.0
    shutdown_timeout: float = 10.0
    log_format: str = "auto"
    log_level: str = "info"
