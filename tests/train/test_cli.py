"""``dla train`` / ``dla quickstart`` argument parsing, ``--print-config``, and clear errors (and Ctrl-C) from the
command."""

import argparse
import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from dla.train.checkpoint import latest_checkpoint
from dla.train.cli import add_quickstart_parser, add_train_parser

from .conftest import REPO, run_python, tiny_dict


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


def test_overrides_may_follow_the_options(capsys):
    from dla.cli import main

    assert main(["train", "tiny", "--out-dir", "elsewhere", "train.lr=1e-3", "model.capacity=8",
                 "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["lr"] == 1e-3 and printed["model"]["capacity"] == 8 and printed["out_dir"] == "elsewhere"
    assert main(["train", "tiny", "--resume", "train.lr=2e-3", "--print-config"]) == 0  # an override, not a path
    assert yaml.safe_load(capsys.readouterr().out)["train"]["lr"] == 2e-3
    with pytest.raises(SystemExit):
        main(["train", "tiny", "--print-config", "--bogus"])
    assert "usage: dla train" in capsys.readouterr().err  # the subcommand's usage, not the top level's


def test_ctrl_c_prints_one_line_saying_where_to_resume(tmp_path, corpus_dir, cache_dir):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(tiny_dict(tmp_path / "run", corpus_dir, cache_dir, train={"max_steps": 100000},
                                           checkpoint={"every": 1, "keep_last": 1})))
    proc = subprocess.Popen([sys.executable, "-m", "dla.cli", "train", str(recipe)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "run" / "checkpoints").glob("step_*.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and out == ""
    lines = [line for line in err.splitlines() if line.startswith("dla train:")]
    latest = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert lines == [f"dla train: interrupted; the latest checkpoint is {latest}; continue with: dla train {recipe} "
                     f"--resume"]
