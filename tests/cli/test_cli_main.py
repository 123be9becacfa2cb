"""The command's entry point: a flag value it cannot use ends it with exit code 2 and one
line on standard error naming the flag, before anything starts."""

from __future__ import annotations

import pytest

from injector.cli.main import main
from injector.cli.parser import build_parser, serve_settings


@pytest.mark.parametrize("argv, says", [
    (["--read-header-timeout=-1s"], "pod-identity-injector: --read-header-timeout=-1s: must not be negative"),
    (["serve", "--cert-check-interval=0"],
     "pod-identity-injector: --cert-check-interval=0s: must be greater than 0"),
    (["serve", "--read-header-timeout=soon"],
     "pod-identity-injector serve: argument --read-header-timeout: invalid duration 'soon' (examples: 500ms, 2s, "
     "1m30s) (see --help)"),
    (["mutate", "-f", "pod.yaml", "--aws-partition=aws", "--compose-role-arn", "--aws-account-id=12"],
     "pod-identity-injector: --aws-account-id '12' is not 12 digits"),
])
def test_a_bad_flag_value_exits_2_with_one_line_naming_the_flag(argv, says, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert (code, out, err) == (2, "", says + "\n")


# The command lines of docs/migrate.md's paths, as those manifests run `/webhook`.
GO_DEPLOY = ["--in-cluster=false", "--namespace=default", "--service-name=pod-identity-webhook",
             "--annotation-prefix=eks.amazonaws.com", "--token-audience=sts.amazonaws.com", "--logtostderr"]
KOPS = ["--in-cluster=false", "--namespace=kube-system", "--service-name=pod-identity-webhook",
        "--annotation-prefix=eks.amazonaws.com", "--token-audience=amazonaws.com", "--logtostderr",
        "--watch-config-map", "--sts-regional-endpoint", "--aws-default-region=eu-west-1", "--v=5"]
COMMUNITY_CHART = ["--in-cluster=false", "--annotation-prefix=eks.amazonaws.com", "--token-audience=sts.amazonaws.com",
                   "--sts-regional-endpoint=true", "--port=8443", "--metrics-port=9999",
                   "--aws-default-region=us-east-1", "--logtostderr"]


@pytest.mark.parametrize("argv", [GO_DEPLOY, KOPS, COMMUNITY_CHART], ids=["go-deploy", "kops", "community-chart"])
def test_the_go_webhooks_command_lines_of_each_migration_path_mean_serve_with_the_same_settings(argv):
    settings = serve_settings(build_parser().parse_args(["serve", *argv]))
    flags = dict(arg.lstrip("-").split("=", 1) for arg in argv if "=" in arg)
    assert settings.port == int(flags.get("port", 443))
    assert settings.namespace == flags.get("namespace", settings.namespace)
    assert settings.mutation.token_audience == flags["token-audience"]
    assert settings.mutation.sts_regional_endpoint == ("--sts-regional-endpoint" in " ".join(argv))
    assert settings.mutation.aws_default_region == flags.get("aws-default-region", "")
    assert settings.watch_config_map == ("--watch-config-map" in argv)
    assert (settings.tls_cert, settings.tls_key) == ("/etc/webhook/certs/tls.crt", "/etc/webhook/certs/tls.key")
