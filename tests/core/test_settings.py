"""Settings and the command line: each flag is declared once, on its settings field, and the
parser is generated from those declarations (docs/reference.md#flags)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from injector.cli.parser import build_parser, mutation_settings, serve_settings
from injector.core.settings import MutationSettings, ServeSettings, SettingsError

NOT_FLAGS = {"mutation", "cert_reload_interval"}


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_serve_without_flags_gives_the_dataclass_defaults():
    assert serve_settings(parse("serve")) == ServeSettings()


def test_mutate_without_flags_gives_the_dataclass_defaults():
    assert mutation_settings(parse("mutate", "-f", "pod.yaml")) == MutationSettings()


def test_every_setting_but_the_internal_ones_is_a_flag():
    assert {f.name for f in fields(ServeSettings) if "flag" not in f.metadata} == NOT_FLAGS
    assert all("flag" in f.metadata for f in fields(MutationSettings))


def test_workers_default_means_one_per_cpu_in_code_and_on_the_command_line():
    assert ServeSettings().workers == 0 == serve_settings(parse("serve")).workers


@pytest.mark.parametrize("argv, field, value", [
    (["--workers=3"], "workers", 3),
    (["--shutdown-delay", "1m30s"], "shutdown_delay", 90.0),
    (["--watch-config-map"], "watch_config_map", True),
    (["--watch-config-map=false"], "watch_config_map", False),
    (["--enable-debugging-handlers", "T"], "enable_debugging_handlers", True),
    (["--cert-san", "a.example", "--cert-san=10.0.0.1"], "cert_extra_sans", ("a.example", "10.0.0.1")),
    (["--service-account", "a.yaml", "--service-account", "b.yaml"], "service_account_files", ("a.yaml", "b.yaml")),
    (["--config-map", "cm.yaml"], "config_map_file", "cm.yaml"),
    (["--cert-mode=self-managed"], "cert_mode", "self-managed"),
    (["-v=4"], "log_level", "debug"),
])
def test_serve_flags_set_their_field(argv, field, value):
    assert getattr(serve_settings(parse("serve", *argv)), field) == value


@pytest.mark.parametrize("flag, field, value", [
    ("--container-credentials-audience=aud", "cc_audience", "aud"),
    ("--container-credentials-token-mount-path=/m", "cc_mount_path", "/m"),
    ("--container-credentials-token-volume-name=v", "cc_volume_name", "v"),
    ("--container-credentials-token-path=t", "cc_token_path", "t"),
    ("--container-credentials-full-uri=http://x", "cc_full_uri", "http://x"),
    ("--sts-regional-endpoint", "sts_regional_endpoint", True),
    ("--token-expiration=100", "token_expiration", 600),
])
def test_mutation_flags_mean_the_same_for_serve_and_mutate(flag, field, value):
    assert getattr(serve_settings(parse("serve", flag)).mutation, field) == value
    assert getattr(mutation_settings(parse("mutate", "-f", "x", flag)), field) == value


def test_bad_values_are_refused_by_the_parser(capsys):
    for argv in (["--cert-mode=csr"], ["--workers=many"], ["--shutdown-delay=5"], ["--watch-config-map=maybe"]):
        with pytest.raises(SystemExit):
            parse("serve", *argv)


def test_in_cluster_true_is_refused_with_the_way_out():
    with pytest.raises(SettingsError, match="--in-cluster=false"):
        serve_settings(parse("serve", "--in-cluster"))


# -- values no flag may take: refused once, when the settings are built (docs/reference.md#flags) --
@pytest.mark.parametrize("argv, says", [
    (["--read-header-timeout=-1s"], "--read-header-timeout=-1s: must not be negative"),
    (["--shutdown-delay=-5s"], "--shutdown-delay=-5s: must not be negative"),
    (["--service-account-lookup-grace-period=-1s"], "--service-account-lookup-grace-period=-1s: must not be negative"),
    (["--cert-check-interval=0"], "--cert-check-interval=0s: must be greater than 0"),
    (["--cert-validity=0"], "--cert-validity=0s: must be greater than 0"),
    (["--port=-1"], "--port=-1: must not be negative"),
    (["--port=65536"], "--port=65536: must be at most 65535"),
    (["--metrics-port=-1"], "--metrics-port=-1: must not be negative"),
    (["--workers=-2"], "--workers=-2: must not be negative"),
    (["--max-connections=-1"], "--max-connections=-1: must not be negative"),
    (["--max-header-bytes=0"], "--max-header-bytes=0: must be greater than 0"),
    (["--max-request-bytes=0"], "--max-request-bytes=0: must be greater than 0"),
    (["--cert-mode=self-managed", "--cert-validity=720h", "--cert-renew-before=720h"],
     "--cert-renew-before=720h0m0s: must be shorter than --cert-validity=720h0m0s"),
])
def test_a_value_no_flag_may_take_is_refused_naming_the_flag(argv, says):
    with pytest.raises(SettingsError) as refused:
        serve_settings(parse("serve", *argv))
    assert str(refused.value) == says


@pytest.mark.parametrize("argv", [
    ["--read-header-timeout=0", "--read-body-timeout=0", "--idle-timeout=0"],  # 0: no timeout
    ["--max-connections=0", "--metrics-port=0", "--workers=0", "--service-account-lookup-grace-period=0"],
    ["--cert-validity=720h", "--cert-renew-before=720h"],  # files mode: the renewal flags are unused
    ["--cert-mode=self-managed", "--cert-validity=24h", "--cert-renew-before=23h"],
])
def test_the_documented_zeros_and_unused_flags_are_accepted(argv):
    serve_settings(parse("serve", *argv))


def test_settings_built_in_code_are_checked_the_same_way():
    with pytest.raises(SettingsError, match="--idle-timeout=-1s: must not be negative"):
        ServeSettings(idle_timeout=-1.0)
