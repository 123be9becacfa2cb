"""`pod-identity-injector`: parse the command line, build the settings, run one command.
It holds no flag and no rule: flags are `parser`'s, rules are the layers'.

Invoked with flags and no subcommand, the command serves, exactly like the Go binary, so a
Deployment can switch by changing the image. Each command's module is imported only when
that command runs: `serve` never loads the diagnostics, OIDC or manifest code, which keeps its
start-up and its memory smaller (docs/architecture.md#start-up).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import injector
from injector import __version__
from injector.cli.exits import UNUSABLE
from injector.cli.parser import build_parser, mutation_settings, serve_settings
from injector.core.settings import SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "serve")  # the Go binary's calling convention: flags only
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command
    try:
        # Imports below are per command, on purpose: see the module docstring.
        if command == "serve":
            from injector.server.processes import run  # noqa: PLC0415

            return run(serve_settings(args))
        if command == "mutate":
            from injector.cli.mutate import run_mutate  # noqa: PLC0415

            return run_mutate(args, mutation_settings(args))
        if command == "certs":
            from injector.cli.certs import run_certs  # noqa: PLC0415

            return run_certs(args)
        if command == "oidc":
            from injector.cli.oidc import run_oidc  # noqa: PLC0415

            return run_oidc(args)
        if command == "doctor":
            from injector.cli.doctor import run_doctor  # noqa: PLC0415

            return run_doctor(args, mutation_settings(args))
        if command == "trust-policy":
            from injector.cli.trust_policy import run_trust_policy  # noqa: PLC0415

            return run_trust_policy(args)
        if command == "audit":
            from injector.cli.audit import run_audit  # noqa: PLC0415

            return run_audit(args, mutation_settings(args))
        if command == "version":
            commit = injector.__commit__  # the build's, or the checkout's HEAD; "" when unknown
            print(f"{__version__} (commit {commit})" if commit else __version__)
            return 0
    except SettingsError as exc:  # the message names the flag
        print(f"pod-identity-injector: {exc}", file=sys.stderr)
        return UNUSABLE
    parser.print_help()
    return UNUSABLE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
