"""What an IAM role ARN is, said once: the identity rules flag a ServiceAccount's value with
it, and `doctor` explains it. Pure."""

from __future__ import annotations

import re

from injector.core.settings import PARTITIONS, MutationSettings

_ROLE_NAME = re.compile(r"[\w+=,.@-]{1,64}\Z")
_ROLE_PATH = re.compile(r"/(?:[\x21-\x7e]*/)?\Z")


def compose_role_arn(value: str, settings: MutationSettings) -> str:
    """With --compose-role-arn, a bare role name or path becomes a full ARN."""
    if settings.compose_role_arn and "arn:" not in value:
        return f"arn:{settings.aws_partition}:iam::{settings.aws_account_id}:role/{value}"
    return value


def role_arn_problems(value: str) -> list[tuple[str, str]]:
    """What keeps `value` from being an IAM role ARN STS accepts, as (code, message)."""
    if value != value.strip() or any(c.isspace() for c in value):
        return [("role-arn-whitespace", f"role ARN {value!r} contains whitespace")]
    parts = value.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn":
        return [("role-arn-not-an-arn", f"{value!r} is not an ARN (arn:PARTITION:iam::ACCOUNT:role/NAME)")]
    _, partition, service, region, account, resource = parts
    problems = []
    if partition not in PARTITIONS:
        problems.append(("role-arn-partition", f"partition {partition!r} is not one of {', '.join(PARTITIONS)}"))
    if service != "iam" or region:
        problems.append(("role-arn-not-a-role", f"{value!r} is not an IAM ARN (service {service!r}, region "
                                                f"{region!r}; IAM ARNs have service iam and no region)"))
    if not re.fullmatch(r"\d{12}", account):
        problems.append(("role-arn-account", f"account {account!r} is not 12 digits"))
    if not resource.startswith("role/"):
        kind = resource.split("/", 1)[0]
        problems.append(("role-arn-not-a-role", f"{value!r} names a {kind or 'nothing'}, not a role (role/NAME)"))
    else:
        path, _, name = resource[len("role"):].rpartition("/")
        if not _ROLE_NAME.match(name):
            problems.append(("role-arn-name", f"role name {name!r} must be 1-64 of letters, digits and +=,.@_-"))
        if len(path) + 1 > 512 or not _ROLE_PATH.match(path + "/"):
            problems.append(("role-arn-name", f"role path {path + '/'!r} must be /…/ of printable ASCII, ≤ 512"))
    return problems
