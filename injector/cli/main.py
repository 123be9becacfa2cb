"""`pod-identity-injector`: parse the command line, build the settings, run one command.

Invoked with flags and no subcommand, the command serves, exactly like the Go binary, so a
Deployment can switch by changing the image. Each command's module is imported only when
that command runs: `serve` never loads the diagnostics, OIDC or manifest code, which keeps its
start-up and its memory smaller (docs/architecture.md#start-up).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from injector import __version__
from injector.cli.exits import UNUSABLE, say
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
            from injector.server.processes import run

            return run(serve_settings(args))
        if command == "mutate":
            from injector.cli.mutate import run_mutate

            return run_mutate(args, mutation_settings(args))
        if command == "certs":
            from injector.cli.certs import run_certs

            return run_certs(args)
        if command == "oidc":
            from injector.cli.oidc import run_oidc

            return run_oidc(args)
        if command == "doctor":
            from injector.cli.doctor import run_doctor

            return run_doctor(args, mutation_settings(args))
        if command == "trust-policy":
            from injector.cli.trust_policy import run_trust_policy

            return run_trust_policy(args)
        if command == "audit":
            from injector.cli.audit import run_audit

            return run_audit(args, mutation_settings(args))
        if command == "version":
            print(__version__)
            return 0
    except SettingsError as exc:
        return say(command, str(exc))
    parser.print_help()
    return UNUSABLE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
