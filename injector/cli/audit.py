"""`pod-identity-injector audit`: every pod that maps to an identity today but was admitted
without credentials, live; exit 1 when there is one.
Printing and the exit code only; the listing is `diagnostics.audit`'s."""

from __future__ import annotations

import argparse
import asyncio
import json

from injector.cli.exits import FAILED, OK, say
from injector.core.settings import MutationSettings
from injector.diagnostics.audit import render_audit, run
from injector.diagnostics.live import LiveError


def run_audit(args: argparse.Namespace, settings: MutationSettings) -> int:
    try:
        entries = asyncio.run(run(args, settings))
    except LiveError as exc:
        return say("audit", str(exc))
    if args.output == "json":
        print(json.dumps({"pods": [e.as_json() for e in entries]}, indent=2))
    else:
        print(render_audit(entries))
    return FAILED if entries else OK
