"""The command line's exit codes and its one-line refusals, shared by every command
(docs/doctor.md#exit-codes)."""

from __future__ import annotations

import sys

OK, FAILED, UNUSABLE = 0, 1, 2


def say(command: str, message: str) -> int:
    """Print why `command` cannot run, on one line of standard error; the exit code for it."""
    print(f"pod-identity-injector {command}: {message}", file=sys.stderr)
    return UNUSABLE
