"""``dla bench generate`` at toy sizes on CPU: every model runs, the numbers are there, the JSON and the table are
written, the greedy loop is ``generate()``'s, and the ~125M configs have matched sizes."""

import argparse
import json

import pytest
import torch

from dla.bench.generate import (MODELS, _generate, _static_step, add_generate_bench_parser, generate_markdown,
                                model_configs, run_generate_bench)
from dla.models import DLAForCausalLM


def test_every_model_generates_with_positive_throughput(tmp_path):
    out = tmp_path / "generate.json"
    result = run_generate_bench(device="cpu", tiny=True, lengths=[32], new_tokens=4, progress=False, out=out)
    rows = result["rows"]
    assert [r["model"] for r in rows] == list(MODELS)
    for r in rows:
        assert r["prompt_tokens"] == 32 and r["new_tokens"] == 4 and r["note"] == ""
        for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "generate_tokens_per_s", "decode_ms_per_token",
                    "cache_mib"):
            assert r[key] > 0, (r["model"], key)
    meta = result["meta"]
    assert meta["device"] and meta["torch"] == torch.__version__ and meta["dtype"] == "float32"
    assert {"transformers", "date", "batch", "backbone"} <= set(meta)
    assert set(result["models"]) == set(MODELS) and all(m["params"] > 0 for m in result["models"].values())
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    table = generate_markdown(result)
    assert all(f"| {name} |" in table for name in MODELS)


def test_cli_parser_runs_the_benchmark_and_writes_json_and_table(tmp_path):
    parser = argparse.ArgumentParser(prog="dla")
    bench = parser.add_subparsers(dest="command").add_parser("bench").add_subparsers(dest="bench")
    add_generate_bench_parser(bench)
    out = tmp_path / "g.json"
    args = parser.parse_args(["bench", "generate", "--tiny", "--device", "cpu", "--lengths", "16", "24",
                              "--new-tokens", "3", "--models", "dla", "transformer", "--out", str(out)])
    assert args.fn(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["prompt_tokens"]) for r in rows] == [("dla", 16), ("dla", 24), ("transformer", 16),
                                                                 ("transformer", 24)]
    assert "decode tokens/s" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 1000


@pytest.mark.parametrize("name", MODELS)
def test_the_greedy_loop_equals_generate(name):
    torch.manual_seed(0)
    model = DLAForCausalLM(model_configs("tiny", max_positions=64)[name]).eval()
    prompt = torch.randint(1, 64, (2, 12))
    tokens, cache, *_ = _generate(model, prompt, 6)
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)[:, 12:]
    assert torch.equal(tokens, expected)
    assert cache.get_seq_length() == 12 + 5  # the last token is never fed back


@pytest.mark.parametrize("name", ["dla", "fenwick"])
def test_the_fixed_buffer_step_of_the_cuda_graph_decode_equals_the_greedy_loop(name):
    """What the CUDA-graph decode replays, run eagerly: the states are copied back into the same buffers."""
    torch.manual_seed(0)
    model = DLAForCausalLM(model_configs("tiny", max_positions=64)[name]).eval()
    prompt = torch.randint(1, 64, (2, 12))
    expected, *_ = _generate(model, prompt, 6)
    with torch.inference_mode():
        step, token = _static_step(model, prompt)
        buffer = token.data_ptr()
        tokens = [token.clone()]
        for _ in range(5):
            step()
            tokens.append(token.clone())
    assert token.data_ptr() == buffer
    assert torch.equal(torch.cat(tokens, 1), expected)


@pytest.mark.parametrize("backbone,lam_share", [("gdn", 0.015), ("mamba2", 0.06)])
def test_the_125m_configs_have_matched_sizes(backbone, lam_share):
    configs = model_configs("125m", backbone=backbone)
    params = {}
    for name, config in configs.items():
        with torch.device("meta"):
            params[name] = sum(p.numel() for p in DLAForCausalLM(config).parameters())
    assert 100e6 < min(params.values()) and max(params.values()) < 150e6
    assert abs(params["transformer"] / params["single"] - 1) < 0.01
    assert params["single"] < params["fenwick"] < params["dla"] < params["single"] * (1 + lam_share)
    assert configs["dla"].policy == "dla" and configs["fenwick"].max_position_embeddings == 65536 + 256


@pytest.mark.parametrize("kwargs,field", [(dict(new_tokens=1), "new_tokens"), (dict(models=["rnn"]), "models"),
                                          (dict(lengths=[0]), "lengths"), (dict(dtype="int8"), "dtype"),
                                          (dict(backbone="lstm"), "backbone")])
def test_bad_arguments_raise_naming_them(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        run_generate_bench(**{"device": "cpu", "tiny": True, "lengths": [8], "progress": False, **kwargs})
