"""``dla bench train`` on CPU at the tiny preset: every model trains with finite tokens/s, the JSON, table and plot
are written, the presets have matched sizes, bad arguments are named."""

import json
import math

import pytest
import torch

from dla.bench.train import MODELS, _params, model_configs, run_train_bench, train_markdown
from dla.cli import main


def test_every_model_trains_on_cpu_and_the_cli_writes_json_table_and_plot(tmp_path):
    out = tmp_path / "train.json"
    assert main(["bench", "train", "--sizes", "tiny", "--lengths", "16", "32", "--tokens-per-step", "64", "--steps",
                 "2", "--warmup", "1", "--device", "cpu", "--models", *MODELS, "fla_gdn", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    meta = result["meta"]
    assert meta["command"].startswith("dla bench train --sizes tiny --lengths 16 32")
    assert meta["tokens_per_step"] == 64 and meta["timed_steps"] == 2 and meta["warmup_steps"] == 1
    assert {"device", "torch", "triton", "fla", "transformers", "date", "commit", "dtype"} <= set(meta)
    rows = {(r["model"], r["T"]): r for r in result["rows"]}
    for name in MODELS:
        for T in (16, 32):
            r = rows[name, T]
            assert r["batch"] == 64 // T and r["note"] == "" and r["implementation"] == "dla", r
            assert math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0 and r["step_ms"] > 0
            assert r["tokens_per_s"] == pytest.approx(64 / (r["step_ms"] / 1e3))
        assert result["models"][f"{name}@tiny"]["params"] == rows[name, 16]["params"] > 0
    assert rows["fla_gdn", 16]["note"] == "needs CUDA" and rows["fla_gdn", 16]["tokens_per_s"] is None
    table = out.with_suffix(".md").read_text()
    assert "| dla_mamba2 |" in table and "| dla_gdn / gdn |" in table and "| fla_gdn (fla) |" in table
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_out_of_memory_is_a_row(monkeypatch):
    import dla.bench.train as bench

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(bench, "_measure", oom)
    result = run_train_bench(["gdn"], ["tiny"], [16], 32, steps=1, warmup=1, device="cpu", progress=False)
    assert [r["note"] for r in result["rows"]] == ["OOM"]
    assert "| gdn | ? | OOM |" in train_markdown(result)


@pytest.mark.parametrize("size,target", [("125m", 125e6), ("340m", 340e6)])
def test_presets_have_matched_sizes(size, target):
    params = {name: _params(config) for name, config in model_configs(size).items()}
    for name in ("transformer", "mamba2", "gdn"):  # the one-state models hit the target
        assert abs(params[name] / target - 1) < 0.01, (name, params[name])
    for backbone in ("mamba2", "gdn"):  # the lam projections are all that Log-Linear and DLA add
        assert params[backbone] < params[f"loglinear_{backbone}"] < params[f"dla_{backbone}"] \
            < 1.08 * params[backbone]
    configs = model_configs(size)
    assert configs["dla_gdn"].policy == "dla" and configs["dla_gdn"].capacity == 30 and configs["dla_gdn"].tau == 0.6
    assert configs["loglinear_mamba2"].policy == "fenwick" and configs["transformer"].mixer == "attention"
    assert configs["mamba2"].num_hidden_layers == configs["gdn"].num_hidden_layers


@pytest.mark.parametrize("kwargs,name", [(dict(models=["rwkv"]), "models"), (dict(sizes=["7b"]), "sizes"),
                                         (dict(lengths=[1]), "lengths"), (dict(tokens_per_step=8), "tokens_per_step"),
                                         (dict(steps=0), "steps"), (dict(warmup=0), "warmup"),
                                         (dict(models=[]), "models")])
def test_bad_arguments_are_named(kwargs, name):
    args = dict(models=["gdn"], sizes=["tiny"], lengths=[16], tokens_per_step=32, device="cpu", progress=False)
    with pytest.raises(ValueError, match=f"^{name}:"):
        run_train_bench(**{**args, **kwargs})

