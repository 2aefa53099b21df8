"""Checkpoints, one file or a sharded DCP directory: round trip, keep-last-N, RNG states, and atomicity (a failed
or killed write leaves the previous checkpoint as the latest loadable one)."""

import random
import signal

import numpy as np
import pytest
import torch

import dla.train.checkpoint as ckpt
from dla.train.checkpoint import (latest_checkpoint, list_checkpoints, load_checkpoint, rng_state, save_checkpoint,
                                  set_rng_state)

from .conftest import kill_when_ready


def state(step: int) -> dict:
    return {"step": step, "weights": torch.full((4, 4), float(step)), "meta": {"name": "x", "items": [1, 2.5]}}


def test_round_trip_latest_and_keep_last(tmp_path):
    for step in (1, 2, 3, 4):
        path = save_checkpoint(state(step), tmp_path, step, keep_last=2)
        assert path.name == f"step_{step:08d}.pt"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    loaded = load_checkpoint(latest_checkpoint(tmp_path))
    assert loaded["step"] == 4 and torch.equal(loaded["weights"], torch.full((4, 4), 4.0))
    assert loaded["meta"] == {"name": "x", "items": [1, 2.5]}
    assert latest_checkpoint(tmp_path / "missing") is None
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_rng_state_round_trip():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    saved = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(saved)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(state(1), tmp_path, 1)

    def broken_write(obj, path):
        path.write_bytes(b"partial")  # half a file, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(state(2), tmp_path, 2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 1
    assert list(tmp_path.glob(".tmp-*")) == []


KILLED_WRITER = """
import sys, time
import torch
import dla.train.checkpoint as ckpt
from pathlib import Path

def slow_write(obj, path):
    with open(path, "wb") as f:
        f.write(b"PK\\x03\\x04 truncated zip")  # the start of a torch.save file, never finished
        f.flush()
    print("WRITING", flush=True)
    time.sleep(60)

ckpt.save_checkpoint({"step": 1, "w": torch.ones(3)}, sys.argv[1], 1)
ckpt._write = slow_write
ckpt.save_checkpoint({"step": 2, "w": torch.ones(3)}, sys.argv[1], 2)
"""


def test_process_killed_while_writing_leaves_previous_loadable(tmp_path):
    proc = kill_when_ready(["-c", KILLED_WRITER, str(tmp_path)], "WRITING")
    assert proc.returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob(".tmp-step_*"))) == 1  # the killed writer's leftover
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_00000001.pt"
    assert torch.equal(load_checkpoint(latest)["w"], torch.ones(3))
    save_checkpoint({"step": 3}, tmp_path, 3)  # the next save clears the leftover
    assert list(tmp_path.glob(".tmp-step_*")) == []
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 3]


def sharded_state(step: int) -> tuple[dict, dict]:
    tensors = {"model": {"w": torch.full((4, 3), float(step)), "b": torch.arange(3.0)},
               "optimizer": {"state": {"w": {"exp_avg": torch.ones(4, 3) * step}}, "param_groups": [{"lr": 0.1}]}}
    return tensors, {"step": step, "world_size": 1, "data": [{"batch": step}]}


def test_sharded_round_trip_mixed_layouts_and_keep_last(tmp_path):
    save_checkpoint(state(1), tmp_path, 1)
    for step in (2, 3):
        path = ckpt.save_sharded_checkpoint(*sharded_state(step), tmp_path, step, keep_last=2)
        assert path == tmp_path / f"step_{step:08d}" and (path / ckpt.META_FILE).is_file()
    assert [p.name for _, p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    latest = latest_checkpoint(tmp_path)
    assert ckpt.is_sharded(latest) and not ckpt.is_sharded(tmp_path / "step_00000001.pt")
    meta = load_checkpoint(latest, tensors=False)
    assert meta == {"step": 3, "world_size": 1, "data": [{"batch": 3}]}
    full = load_checkpoint(latest)
    assert torch.equal(full["model"]["w"], torch.full((4, 3), 3.0))
    assert torch.equal(full["optimizer"]["state"]["w"]["exp_avg"], torch.full((4, 3), 3.0))
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        (tmp_path / "step_00000009").mkdir()  # a directory without trainer.pt is no checkpoint
        load_checkpoint(tmp_path / "step_00000009")
    assert latest_checkpoint(tmp_path) == latest


KILLED_SHARDED_WRITER = """
import sys, time
import torch
import dla.train.checkpoint as ckpt

def slow_write(obj, path):  # the shards are written; the process dies before trainer.pt and the rename
    print("WRITING", flush=True)
    time.sleep(60)

tensors = {"model": {"w": torch.ones(3)}}
ckpt.save_sharded_checkpoint(tensors, {"step": 1}, sys.argv[1], 1)
ckpt._write = slow_write
ckpt.save_sharded_checkpoint({"model": {"w": torch.zeros(3)}}, {"step": 2}, sys.argv[1], 2)
"""


def test_process_killed_while_writing_shards_leaves_previous_loadable(tmp_path):
    kill_when_ready(["-c", KILLED_SHARDED_WRITER, str(tmp_path)], "WRITING")
    leftovers = list(tmp_path.glob(".tmp-step_*"))
    assert len(leftovers) == 1 and any(leftovers[0].iterdir())  # the killed writer's shards
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_00000001"
    assert torch.equal(load_checkpoint(latest)["model"]["w"], torch.ones(3))
    ckpt.save_sharded_checkpoint({"model": {"w": torch.zeros(3)}}, {"step": 3}, tmp_path, 3)
    assert list(tmp_path.glob(".tmp-step_*")) == []
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 3]
