"""The command's entry point: a flag value it cannot use ends it with exit code 2 and one
line on standard error naming the flag, before anything starts."""

from __future__ import annotations

import pytest

from injector.cli.main import main


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
