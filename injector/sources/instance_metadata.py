"""The account id and partition of the EC2 instance this runs on, from instance metadata, for
`--compose-role-arn` without `--aws-account-id` (docs/reference.md#instance-metadata).
Asked once at start-up, never on the request path.

Asked once, at start-up, before anything listens; never from the planner. IMDSv2: a session
token from `PUT /latest/api/token`, then the instance identity document and the partition
with that token. Like the AWS SDKs, a token request answered 403, 404 or 405, or not answered
in time, is followed by the same requests without a token (IMDSv1). Each request waits at most
`TIMEOUT` seconds to connect and to read, and is tried `ATTEMPTS` times.

The endpoint follows the SDKs' settings: `AWS_EC2_METADATA_SERVICE_ENDPOINT` (a URL),
otherwise `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE` (`IPv4`, the default, or `IPv6`);
`AWS_EC2_METADATA_DISABLED=true` turns the lookup off. `http.client` is used directly, so no
proxy from the environment is ever put between this process and a link-local address.
"""

from __future__ import annotations

import http.client
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from injector.core.settings import PARTITIONS

IPV4_ENDPOINT = "http://169.254.169.254"
IPV6_ENDPOINT = "http://[fd00:ec2::254]"
ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
ENDPOINT_MODE_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE"
DISABLED_ENV = "AWS_EC2_METADATA_DISABLED"

TOKEN_PATH = "/latest/api/token"
DOCUMENT_PATH = "/latest/dynamic/instance-identity/document"
PARTITION_PATH = "/latest/meta-data/services/partition"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TOKEN_TTL = 60  # seconds; the token is used for two requests right away

TIMEOUT = 1.0
ATTEMPTS = 2
MAX_BODY = 64 * 1024

# Region prefix -> partition, for an instance whose metadata has no services/partition.
REGION_PARTITIONS = (
    ("cn-", "aws-cn"), ("us-gov-", "aws-us-gov"), ("us-iso-", "aws-iso"), ("us-isob-", "aws-iso-b"),
    ("eu-isoe-", "aws-iso-e"), ("us-isof-", "aws-iso-f"), ("eusc-", "aws-eusc"),
)
_TOKEN = re.compile(r"[!-~]{1,4096}")  # printable ASCII: safe as a header value
_REGION = re.compile(r"[a-z0-9-]{1,64}")


class MetadataError(Exception):
    """Instance metadata is off, did not answer, or answered something unusable (one line)."""


@dataclass(frozen=True, slots=True)
class InstanceIdentity:
    account_id: str
    region: str
    partition: str
    endpoint: str
    partition_from: str  # "metadata" (services/partition) or "region"


def partition_for_region(region: str) -> str:
    """The partition a region belongs to, from its name (`aws` for any other)."""
    for prefix, partition in REGION_PARTITIONS:
        if region.startswith(prefix):
            return partition
    return "aws"


def endpoint_from(environ: Mapping[str, str]) -> str:
    """The metadata service's base URL, as the AWS SDKs choose it."""
    explicit = environ.get(ENDPOINT_ENV, "").strip()
    if explicit:
        return explicit.rstrip("/")
    mode = environ.get(ENDPOINT_MODE_ENV, "").strip()
    if mode.lower() in ("", "ipv4"):
        return IPV4_ENDPOINT
    if mode.lower() == "ipv6":
        return IPV6_ENDPOINT
    raise MetadataError(f"{ENDPOINT_MODE_ENV}={mode!r:.40} is neither IPv4 nor IPv6")


class _NoAnswer(Exception):
    def __init__(self, reason: str, timed_out: bool) -> None:
        super().__init__(reason)
        self.timed_out = timed_out


class _Client:
    def __init__(self, base: str, timeout: float, attempts: int) -> None:
        parts = urlsplit(base)
        if parts.scheme != "http" or not parts.hostname:
            raise MetadataError(f"{ENDPOINT_ENV}={base!r:.80} is not an http:// URL")
        try:
            self.port = parts.port or 80
        except ValueError:
            raise MetadataError(f"{ENDPOINT_ENV}={base!r:.80} has an invalid port") from None
        self.host, self.prefix = parts.hostname, parts.path.rstrip("/")
        self.timeout, self.attempts = timeout, max(1, attempts)

    def request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        """Status and body; a 5xx or no answer is tried again, up to `attempts` times."""
        status, body, failure = 0, b"", _NoAnswer("no request sent", False)
        for _ in range(self.attempts):
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                conn.request(method, self.prefix + path, headers=headers)
                response = conn.getresponse()
                status, body = response.status, response.read(MAX_BODY)
                if status < 500:
                    return status, body
            except TimeoutError:
                failure = _NoAnswer(f"timed out after {self.timeout:g} s", True)
            except ConnectionRefusedError:
                failure = _NoAnswer("connection refused", False)
            except http.client.HTTPException as exc:
                failure = _NoAnswer(f"no valid HTTP answer: {type(exc).__name__}", False)
            except OSError as exc:
                failure = _NoAnswer(exc.strerror or str(exc) or type(exc).__name__, False)
            finally:
                conn.close()
        if status:
            return status, body
        tries = "1 try" if self.attempts == 1 else f"{self.attempts} tries"
        raise _NoAnswer(f"{failure}, {tries}", failure.timed_out)


def lookup(environ: Mapping[str, str] | None = None, *, timeout: float = TIMEOUT,
           attempts: int = ATTEMPTS) -> InstanceIdentity:
    """This instance's account id, region and partition; `MetadataError` says why not."""
    environ = os.environ if environ is None else environ
    if environ.get(DISABLED_ENV, "").strip().lower() == "true":
        raise MetadataError(f"EC2 instance metadata is turned off ({DISABLED_ENV}=true)")
    base = endpoint_from(environ)
    where = f"EC2 instance metadata at {base}"
    client = _Client(base, timeout, attempts)
    token, token_note = _token(client, where)
    headers = {TOKEN_HEADER: token} if token else {}
    try:
        status, body = client.request("GET", DOCUMENT_PATH, headers)
    except _NoAnswer as exc:
        raise MetadataError(f"{where} did not answer ({exc})") from None
    if status != 200:
        refused = " (the token was refused)" if status == 401 and token else token_note
        raise MetadataError(f"{where} answered HTTP {status} for {DOCUMENT_PATH}{refused}")
    account_id, region = _identity_document(body, where)
    partition, source = _partition(client, headers, region)
    return InstanceIdentity(account_id, region, partition, base, source)


def _token(client: _Client, where: str) -> tuple[str, str]:
    """A session token, or "" and why the requests go without one."""
    try:
        status, body = client.request("PUT", TOKEN_PATH, {TOKEN_TTL_HEADER: str(TOKEN_TTL)})
    except _NoAnswer as exc:
        if not exc.timed_out:
            raise MetadataError(f"{where} did not answer ({exc})") from None
        # A hop limit of 1 drops the token's answer on its way into a pod; IMDSv1 may still answer.
        return "", f"; the token request {exc}: with a hop limit of 1, IMDSv2 answers do not reach pods"
    if status in (403, 404, 405):
        return "", f"; the token request got HTTP {status}"
    if status != 200:
        raise MetadataError(f"{where} answered HTTP {status} to the token request (PUT {TOKEN_PATH})")
    token = body.decode("ascii", "replace").strip()
    if not _TOKEN.fullmatch(token):
        raise MetadataError(f"{where} answered a token that cannot be sent back (empty or not printable ASCII)")
    return token, ""


def _identity_document(body: bytes, where: str) -> tuple[str, str]:
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise MetadataError(f"{where} answered an identity document that is not a JSON object")
    account_id, region = document.get("accountId"), document.get("region")
    if not isinstance(account_id, str) or not re.fullmatch(r"\d{12}", account_id):
        raise MetadataError(f"{where} answered an identity document without a 12-digit accountId "
                            f"(accountId: {account_id!r:.40})")
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        raise MetadataError(f"{where} answered an identity document without a region (region: {region!r:.40})")
    return account_id, region


def _partition(client: _Client, headers: dict[str, str], region: str) -> tuple[str, str]:
    """services/partition when the instance has it and it is one we know, else from the region."""
    try:
        status, body = client.request("GET", PARTITION_PATH, headers)
    except _NoAnswer:
        status, body = 0, b""
    answered = body.decode("ascii", "replace").strip()
    if status == 200 and answered in PARTITIONS:
        return answered, "metadata"
    return partition_for_region(region), "region"
