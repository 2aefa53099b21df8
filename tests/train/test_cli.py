"""``dla train`` / ``dla quickstart`` argument parsing, ``--print-config``, and clear errors from the command."""

import argparse

import pytest
import yaml

from dla.train.cli import add_quickstart_parser, add_train_parser

from .conftest import run_python


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dla")
    sub = p.add_subparsers(dest="command")
    add_train_parser(sub)
    add_quickstart_parser(sub)
    return p


def test_train_arguments():
    args = parser().parse_args(["train", "tiny", "train.lr=1e-3", "model.capacity=8", "--resume"])
    assert args.config == "tiny" and args.overrides == ["train.lr=1e-3", "model.capacity=8"] and args.resume is True
    args = parser().parse_args(["train", "tiny", "--resume", "runs/x/checkpoints/step_00000010.pt"])
    assert args.resume == "runs/x/checkpoints/step_00000010.pt" and args.overrides == []
    args = parser().parse_args(["quickstart", "--backbones", "mamba2", "gdn", "--scale", "2"])
    assert args.backbones == ["mamba2", "gdn"] and args.scale == 2.0 and args.out == "runs/quickstart"
    with pytest.raises(SystemExit):
        parser().parse_args(["quickstart", "--backbones", "rwkv"])


def test_print_config_applies_overrides(capsys):
    args = parser().parse_args(["train", "tiny", "train.lr=1e-3", "model.capacity=8", "--out-dir", "elsewhere",
                                "--print-config"])
    assert args.fn(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["lr"] == 1e-3 and printed["model"]["capacity"] == 8 and printed["out_dir"] == "elsewhere"


def test_module_entry_point_reports_bad_fields():
    proc = run_python(["-m", "dla.train", "tiny", "train.lrr=1", "--print-config"])
    assert proc.returncode == 2 and "dla train: error: train.lrr: unknown field of TrainSection" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_python(["-m", "dla.train", "tiny", "--print-config"])
    assert proc.returncode == 0 and yaml.safe_load(proc.stdout)["name"] == "tiny"
