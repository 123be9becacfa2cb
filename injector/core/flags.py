"""The command line's face of the settings: Go-compatible flag syntax, and the parser of
`serve`'s flags, generated from the declarations in `settings`.

Pure (argparse only), so both the command line and `doctor`, which parses a live webhook's
Deployment args exactly as the webhook would, build on it. Must not read the environment
or the network: looking an absent account up in instance metadata is the command line's job.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import fields
from typing import Any, NoReturn

from injector.core.identity import parse_go_bool
from injector.core.settings import SERVER, SOURCES, MutationSettings, ServeSettings

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class FlagParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose refusal is one line naming the flag, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


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


def add_flag(group: Any, *names: str, **kwargs: Any) -> None:
    """Register one flag; booleans take an optional value like pflag's (`--x`, `--x=false`)."""
    if kwargs.get("type") is go_bool:
        kwargs.setdefault("nargs", "?")
        kwargs.setdefault("const", True)
        kwargs.setdefault("metavar", "BOOL")
    group.add_argument(*names, **kwargs)


# How a settings field's annotation is read from the command line; floats are Go durations.
_PARSERS: dict[str, dict[str, Any]] = {
    "str": {}, "int": {"type": int}, "bool": {"type": go_bool}, "float": {"type": go_duration},
    "tuple[str, ...]": {"action": "append"},
}


def add_settings_flags(groups: dict[str, Any], settings_class: type, only: tuple[str, ...] = ()) -> None:
    """Register a flag for every field of `settings_class` declared with `settings.flag`
    (or only for the fields named in `only`).

    The field's name is the flag's `dest`, so `settings_from_args` can read them all back.
    """
    for f in fields(settings_class):
        spec = f.metadata.get("flag")
        if spec is None or (only and f.name not in only):
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "help": spec.help or None, **_PARSERS[str(f.type)]}
        kwargs["default"] = list(f.default) if kwargs.get("action") == "append" else f.default
        if spec.choices:
            kwargs["choices"] = spec.choices
        if spec.metavar:
            kwargs["metavar"] = spec.metavar
        add_flag(groups[spec.group], "--" + spec.flag_name(f.name), **kwargs)


def settings_from_args(settings_class: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """Build a settings object from the flags `add_settings_flags` registered for it; the
    settings check every value (`settings.SettingsError` names the flag)."""
    values = {}
    for f in fields(settings_class):
        if "flag" in f.metadata:
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return settings_class(**{**values, **overrides})


def add_mutation_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("mutation (same meaning as the Go webhook's flags)")
    add_settings_flags({"": group}, MutationSettings)


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """Every flag `serve` takes: the mutation and server settings, and the Go webhook's
    flags that are accepted for compatibility without being settings of their own."""
    add_mutation_flags(parser)
    server, sources = parser.add_argument_group(SERVER), parser.add_argument_group(SOURCES)
    add_settings_flags({SERVER: server, SOURCES: sources}, ServeSettings)
    add_flag(server, "--in-cluster", type=go_bool, default=False,
             help="accepted for compatibility; only false is supported (the CSR mode is broken upstream)")
    add_flag(server, "-v", "--v", dest="verbosity", type=lambda s: int(s.lstrip("=")), default=0,
             help="klog-style verbosity; 4 or more logs every decision at debug detail")
    add_flag(server, "--logtostderr", type=go_bool, default=True, help="accepted for compatibility; logs go to stderr")


def parse_serve_flags(argv: list[str]) -> argparse.Namespace:
    """`serve`'s flags out of a command line that may hold other words too (a Deployment's
    `command` and `args`); what is not a flag of ours is left out, as it is for the webhook."""
    parser = FlagParser(prog="serve", add_help=False)
    add_serve_flags(parser)
    args, _ = parser.parse_known_args(argv)
    return args
