"""``dla eval --tasks mqar``: a checkpoint trained on MQAR (no tokenizer) is scored on its run's held-out split,
and gives the accuracy the run's own validation reported; other splits by ``--mqar``; clear errors."""

import json

import pytest
import yaml

from dla.eval.cli import main
from dla.train import config_from_dict, train

MQAR = {"num_kv_pairs": 4, "vocab_size": 64, "num_train": 256, "num_val": 48, "seed": 3}


@pytest.fixture(scope="module")
def mqar_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mqar_run")
    config = config_from_dict({
        "name": "mqar", "out_dir": str(out),
        "model": {"type": "dla", "mixer": "gdn", "policy": "dla", "hidden_size": 32, "num_hidden_layers": 2,
                  "num_heads": 2, "head_k_dim": 8, "capacity": 4, "tau": 0.3, "chunk_size": 16,
                  "max_position_embeddings": 64},
        "data": {"task": "mqar", "seq_len": 32, "mqar": MQAR},
        "train": {"max_steps": 6, "global_batch_size": 16, "micro_batch_size": 16, "lr": 3e-3, "device": "cpu"},
        "log": {"every": 1, "progress": False, "tensorboard": False, "plot": False},
    })
    return out, train(config)


def test_mqar_checkpoint_is_scored_on_its_runs_heldout_split(mqar_run, tmp_path, capsys):
    out, result = mqar_run
    assert not (out / "final" / "tokenizer.json").exists()
    assert main(["eval", str(out / "final"), "--tasks", "mqar", "--device", "cpu", "--batch-size", "16",
                 "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "results.json").read_text())[0]
    acc = record["tasks"]["mqar"]["acc"]
    # the run validated on the same 48 examples x 4 queries in float32: the same argmax up to a tie or two
    assert abs(acc - result.metrics["val_acc"]) <= 2 / (48 * 4), (acc, result.metrics)
    assert 0.0 <= record["tasks"]["mqar"]["acc_all"] <= acc
    assert record["settings"]["mqar"] == {"seq_len": 32, "num_kv_pairs": 4, "vocab_size": 64, "alpha": 0.01,
                                          "num_examples": 48, "num_passes": 1, "random_non_queries": True,
                                          "seed": 3}
    assert "| mqar (acc) |" in (tmp_path / "results.md").read_text()


def test_mqar_settings_override_the_run_and_are_checked(mqar_run, tmp_path, capsys):
    out, _ = mqar_run
    assert main(["eval", str(out / "final"), "--tasks", "mqar", "--mqar", "seq_len=48,num_kv_pairs=6,seed=9",
                 "--batch-size", "48", "--device", "cpu", "--out", str(tmp_path)]) == 0
    settings = json.loads((tmp_path / "results.json").read_text())[0]["settings"]["mqar"]
    assert (settings["seq_len"], settings["num_kv_pairs"], settings["seed"]) == (48, 6, 9)
    for argv, message in [
        (["--mqar", "vocab_size=128"], "mqar: vocab_size=128 is larger than the model's vocab_size=64"),
        (["--mqar", "kv_pairs=6"], "mqar: unknown setting 'kv_pairs'"),
        (["--mqar", "seq_len"], "--mqar: expected KEY=VALUE"),
    ]:
        capsys.readouterr()
        assert main(["eval", str(out / "final"), "--tasks", "mqar", "--device", "cpu", "--out",
                     str(tmp_path / "bad"), *argv]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_checkpoint_without_a_run_record_needs_the_sizes(mqar_run, tmp_path, capsys):
    out, _ = mqar_run
    alone = tmp_path / "alone"
    alone.mkdir()
    for f in (out / "final").iterdir():
        (alone / f.name).write_bytes(f.read_bytes())
    assert main(["eval", str(alone), "--tasks", "mqar", "--device", "cpu", "--out", str(tmp_path / "x")]) == 2
    assert "has no MQAR run record" in capsys.readouterr().err
    assert main(["eval", str(alone), "--tasks", "mqar", "--mqar", "seq_len=32,num_kv_pairs=4,vocab_size=64,"
                 "num_examples=32", "--batch-size", "32", "--device", "cpu", "--out", str(tmp_path / "x")]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["task"] == "mqar"


def test_truncated_checkpoint_fails_before_writing_the_output_directory(mqar_run, tmp_path, capsys):
    out, _ = mqar_run
    cut = tmp_path / "cut"
    cut.mkdir()
    for f in (out / "final").iterdir():
        data = f.read_bytes()
        (cut / f.name).write_bytes(data[:len(data) // 2] if f.suffix == ".safetensors" else data)
    for argv in (["--tasks", "mqar"], ["--suite", "local"]):
        assert main(["eval", str(cut), *argv, "--out", str(tmp_path / "results")]) == 2
        err = capsys.readouterr().err
        assert f"pretrained: '{cut / 'model.safetensors'}' is truncated" in err and "Traceback" not in err
        assert not (tmp_path / "results").exists()
