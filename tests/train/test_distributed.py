"""Data parallelism under torchrun on CPU (gloo, 2 processes): DDP and FSDP2 keep the ranks identical, learn, and
match one process with the same global batch; sharded checkpoints reshard: an FSDP2 run stopped at 2 ranks, resumed
by one process, stopped again and resumed at 2 ranks lands on the same weights."""

import json
import os
import subprocess
import sys

import pytest
import torch

from dla.train import config_from_dict, train
from dla.train.checkpoint import list_checkpoints, load_checkpoint
from dla.train.logs import read_log

from .conftest import REPO, tiny_dict

SECTIONS = dict(train={"max_steps": 5, "global_batch_size": 4, "micro_batch_size": 2, "warmup_steps": 1})


def torchrun(config: dict, prefix, *extra: str) -> None:
    path = f"{prefix}.json"
    with open(path, "w") as f:
        json.dump(config, f)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / "tests" / "train" / "dist_worker.py"), path, str(prefix), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def rel_err(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).norm() / (b[k].norm() + 1e-12)) for k in b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_dir, cache_dir) -> dict:
    """Weights after one process trains on the same global batches (2 micro-batches of 2 per step)."""
    out = tmp_path_factory.mktemp("single")
    result = train(config_from_dict(tiny_dict(out, corpus_dir, cache_dir, **SECTIONS)))
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_two_processes_agree_learn_and_match_one(parallelism, tmp_path, corpus_dir, cache_dir, reference):
    sections = {**SECTIONS, "train": {**SECTIONS["train"], "parallelism": parallelism}}
    config = tiny_dict(tmp_path / "run", corpus_dir, cache_dir, **sections)
    torchrun(config, tmp_path / "w")
    rank0, rank1 = (torch.load(tmp_path / f"w_rank{r}.pt") for r in (0, 1))
    assert rank0.keys() == reference.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert rel_err(rank0, reference) < 1e-4, rel_err(rank0, reference)
    losses = [r["loss"] for r in read_log(tmp_path / "run" / "log.jsonl") if r["kind"] == "train"]
    assert len(losses) == 5 and losses[-1] < losses[0], losses
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000005")  # sharded: a DCP directory
    assert saved["world_size"] == 2 and [d["rank"] for d in saved["data"]] == [0, 1]
    assert rel_err({k: v for k, v in saved["model"].items()}, reference) < 1e-4


def test_checkpoints_reshard_two_processes_to_one_and_back(tmp_path, corpus_dir, cache_dir, reference):
    """FSDP on 2 ranks stops after step 1 (a DCP directory), one process resumes it and stops after step 2 (one
    file), 2 ranks resume that to the end: the weights land where one uninterrupted process does."""
    run = tmp_path / "run"
    stop = {"max_time_s": 1e-6}  # stops after the next step (training time is counted over resumes)
    fsdp = {**SECTIONS, "train": {**SECTIONS["train"], "parallelism": "fsdp"}}
    torchrun(tiny_dict(run, corpus_dir, cache_dir, **{**fsdp, "train": {**fsdp["train"], **stop}}), tmp_path / "first")
    ckpts = run / "checkpoints"
    assert [p.name for _, p in list_checkpoints(ckpts)] == ["step_00000001"]
    saved = load_checkpoint(ckpts / "step_00000001")  # the shards gathered into full tensors, one process
    assert saved["world_size"] == 2 and [d["rank"] for d in saved["data"]] == [0, 1]
    first = torch.load(tmp_path / "first_rank0.pt")
    assert all(torch.equal(saved["model"][k], first[k]) for k in first)

    one = train(config_from_dict(tiny_dict(run, corpus_dir, cache_dir, **{**fsdp, "train": {**fsdp["train"], **stop}})),
                resume=True)
    assert one.steps == 2 and [p.name for _, p in list_checkpoints(ckpts)] == ["step_00000001", "step_00000002.pt"]

    torchrun(tiny_dict(run, corpus_dir, cache_dir, **fsdp), tmp_path / "last", "resume")
    rank0, rank1 = (torch.load(tmp_path / f"last_rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert rel_err(rank0, reference) < 1e-4, rel_err(rank0, reference)
    steps = [r["step"] for r in read_log(run / "log.jsonl") if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5]
