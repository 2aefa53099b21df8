"""``dla bench capture`` and ``dla bench ops --inputs`` on CPU: a tiny checkpoint's captured op inputs rerun through
``chunk_dla`` give the layer's op output exactly; bad paths and arguments are named; captured rows need CUDA to be
timed but are read, checked and reported."""

import json

import pytest
import torch
from safetensors.torch import save_file

import dla.layers.recurrent as recurrent
from dla.bench.capture import capture, load_capture
from dla.bench.ops import run_captured_ops_bench
from dla.cli import main
from dla.ops import chunk_dla
from dla.train.config import dump_config, load_config
from dla.train.model import build_model, build_model_config


def _run(tmp_path, mixer="mamba2", name="run"):
    """A `dla train`-shaped run directory (config.yaml, final/) of a freshly initialised tiny MQAR model."""
    run = tmp_path / name
    config = load_config("configs/tiny-mqar.yaml", [f"out_dir={run}", f"model.mixer={mixer}"])
    torch.manual_seed(0)
    model = build_model(build_model_config(config.model, config.data.mqar.vocab_size))
    model.save_pretrained(run / "final")
    dump_config(config, run / "config.yaml")
    return run


@pytest.mark.parametrize("mixer", ["mamba2", "gdn"])
def test_captured_inputs_rerun_to_the_layers_op_output(tmp_path, monkeypatch, mixer):
    run = _run(tmp_path, mixer)
    calls = []

    def recording_op(q, k, v, g, lam=None, beta=None, **kwargs):
        res = recurrent.chunk_dla(q, k, v, g, lam, beta, **kwargs)
        calls.append((q, res[0]))
        return res

    monkeypatch.setattr(recurrent, "chunk_dla", chunk_dla, raising=False)
    monkeypatch.setattr(recurrent, "dla_op", recording_op)
    out = tmp_path / "cap.safetensors"
    meta = capture(run, out, layer=1, length=96, batch=2, device="cpu")
    assert meta["bytes"] == out.stat().st_size and meta["T"] == 96 and meta["B"] == 2 and meta["layer"] == 1
    assert meta["backbone"] == mixer and meta["model_type"] == "dla" and meta["data"].startswith("mqar validation")
    tensors, read = load_capture(out)
    assert read["op"] == {"scale": meta["op"]["scale"], "tau": 0.6, "capacity": 8, "policy": "dla", "block_size": 64,
                          "score": "drift", "chunk_size": 64}
    assert (tensors["beta"] is not None) == (mixer == "gdn") and tensors["lam"].shape == (2, 96, 2, 8)
    # the layer's own op call is the one whose q the file holds; rerunning the file gives its output exactly
    layer_outputs = [o for q, o in calls if q.shape == tensors["q"].shape and torch.equal(q, tensors["q"])]
    assert len(layer_outputs) == 1
    assert torch.equal(chunk_dla(**tensors, **read["op"])[0], layer_outputs[0])
    assert len(calls) == 2  # the model's two layers, each called once


def test_capture_defaults_and_bad_arguments_are_named(tmp_path):
    run = _run(tmp_path)
    meta = capture(run / "final", tmp_path / "d.safetensors", device="cpu")  # recipe found one level up
    assert meta["T"] == 32 and meta["B"] == 1 and meta["layer"] == 1  # the training length, the middle layer
    cases = [(dict(checkpoint=tmp_path / "nope"), "checkpoint"), (dict(checkpoint=tmp_path), "checkpoint"),
             (dict(layer=7), "layer"), (dict(batch=0), "batch"), (dict(length=1), "length"),
             (dict(length=12), "length"),  # shorter than MQAR's 4 pairs need
             (dict(data=tmp_path), "data"), (dict(precision="fp8"), "precision")]
    for kwargs, name in cases:
        args = {**dict(checkpoint=run, out=tmp_path / "x.safetensors", device="cpu"), **kwargs}
        with pytest.raises(ValueError, match=f"^{name}"):
            capture(**args)


def test_load_capture_refuses_what_is_not_a_capture(tmp_path):
    run = _run(tmp_path)
    good = tmp_path / "good.safetensors"
    capture(run, good, length=64, device="cpu")
    tensors, meta = load_capture(good)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    save_file({"q": torch.zeros(1, 4, 1, 2)}, str(tmp_path / "plain.safetensors"))
    no_lam = {k: v for k, v in tensors.items() if v is not None and k != "lam"}
    save_file(no_lam, str(tmp_path / "nolam.safetensors"), metadata={"dla_capture": json.dumps(meta)})
    bad_g = {**no_lam, "lam": tensors["lam"], "g": tensors["g"][:, :10]}
    save_file(bad_g, str(tmp_path / "badg.safetensors"), metadata={"dla_capture": json.dumps(meta)})
    for name, words in (("missing", "does not exist"), ("junk", "not a safetensors"), ("plain", "no dla_capture"),
                        ("nolam", "lacks tensor 'lam'"), ("badg", "g has shape")):
        with pytest.raises(ValueError, match=f"inputs: .*{name}.*{words}"):
            load_capture(tmp_path / f"{name}.safetensors")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU rows")
def test_ops_on_captured_inputs_without_cuda_reports_rows(tmp_path):
    run = _run(tmp_path)
    cap = tmp_path / "mqar_l1.safetensors"
    capture(run, cap, length=128, batch=2, device="cpu")
    out = tmp_path / "ops.json"
    assert main(["bench", "ops", "--inputs", str(cap), "--tile", "--tokens", "1024", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["op"]: r for r in result["rows"]}
    assert list(rows) == ["dla_mamba2_C8_tau0.6", "fenwick_mamba2 (ours)", "single_mamba2 (ours)",
                          "fla_chunk_log_linear_attn", "fla_chunk_simple_gla", "sdpa_flash"]
    for r in rows.values():
        assert r["shape"] == "captured:mqar_l1" and r["T"] == 128 and r["B"] == 8 and r["fwdbwd_ms"] is None
        assert r["note"] == "batch: the 2 captured sequences x 4; needs CUDA"
    stats = rows["dla_mamba2_C8_tau0.6"]["stats"]
    assert 0 < stats["slots_opened_per_head"] <= 128 and stats["key_chunks_per_query_chunk"] >= 1
    assert result["meta"]["inputs"]["mqar_l1"]["op"]["capacity"] == 8 and "--inputs" in result["meta"]["command"]
    md = out.with_suffix(".md").read_text()
    assert "**captured:mqar_l1**" in md and "| dla_mamba2_C8_tau0.6 | needs CUDA |" in md
    with pytest.raises(ValueError, match="'gdn_\\*' matches no op"):
        run_captured_ops_bench([cap], only=["gdn_*"], progress=False)
    with pytest.raises(ValueError, match="--tile"):
        main(["bench", "ops", "--tile", "--out", str(out)])
