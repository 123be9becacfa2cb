"""`pod-identity-injector certs`: a CA and a serving certificate in a directory, for local
runs and for clusters that bring their own Secret.
Printing and the exit code only; issuing is `certificates.authority`'s."""

from __future__ import annotations

import argparse
from pathlib import Path

from injector.certificates.authority import ensure_certs, service_names
from injector.cli.exits import say


def run_certs(args: argparse.Namespace) -> int:
    dns = list(args.dns)
    if args.service:
        name, _, namespace = args.service.partition(".")
        if not name or not namespace:
            return say("certs", f"--service {args.service!r} must be NAME.NAMESPACE")
        dns += service_names(name, namespace)
    ips = list(args.ip)
    if not dns and not ips:
        dns, ips = ["localhost"], ["127.0.0.1", "::1"]
    try:
        result = ensure_certs(Path(args.out_dir), dns, ips, days=args.days, force=args.force)
    except (ValueError, OSError) as exc:
        return say("certs", str(exc))
    ca = "created" if result.ca_created else "reused"
    serving = f"issued ({result.reason})" if result.issued else "kept (still valid)"
    print(f"CA {ca}: {result.paths['ca.crt']}")
    print(f"serving certificate {serving}: {result.paths['tls.crt']}, valid until {result.not_after:%Y-%m-%d}")
    return 0
