"""The ``dla`` command's own subcommands: ``dla check`` on good and bad arguments, ``dla info``."""

import json

import pytest

from dla.cli import main


@pytest.mark.parametrize("argv, message", [
    (["--capacity", "-1"], "dla check: error: capacity: expected an int >= 1, got -1"),
    (["--capacity", "0"], "dla check: error: capacity: expected an int >= 1, got 0"),
    (["--tau", "nan"], "dla check: error: tau: expected a finite number >= 0"),
    (["--tau", "-0.5"], "dla check: error: tau: expected a finite number >= 0"),
    (["--length", "0"], "dla check: error: --length: expected an int >= 1, got 0"),
])
def test_check_reports_a_bad_argument_in_one_line(capsys, argv, message):
    assert main(["check", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(message) and captured.err.count("\n") == 1


def test_check_compares_the_chunked_form_with_the_reference(capsys):
    assert main(["check", "--length", "24", "--capacity", "3"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[:out.rindex("]") + 1])
    assert [r["backbone"] for r in report] == ["mamba2", "gdn"]
    assert all(r["rel_err"] < 1e-10 and r["same_boundaries"] for r in report)
    assert out.rstrip().endswith("ok")
