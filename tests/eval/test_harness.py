"""A tiny DLA checkpoint end to end through lm-eval on the generated local task files: the Python API, lm-eval's
own command line (``python -m dla.eval.harness``) and ``dla eval`` (results.json + results.md, two checkpoints)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

lm_eval = pytest.importorskip("lm_eval")

from dla.eval.checkpoint import load_checkpoint  # noqa: E402
from dla.eval.local_tasks import FIXTURE_TASKS  # noqa: E402
from dla.eval.lm_eval_model import DLALM  # noqa: E402


def _logp(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]), use_cache=False).logits.double()
    return F.log_softmax(logits, -1)[0].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_fixture_tasks_end_to_end(ckpt, manager):
    model, tok = load_checkpoint(ckpt, dtype="float64")
    lm = DLALM(pretrained=model, tokenizer=tok, batch_size=3, max_length=512)
    out = lm_eval.simple_evaluate(model=lm, tasks=list(FIXTURE_TASKS), task_manager=manager, num_fewshot=0,
                                  log_samples=True)
    res, samples = out["results"], out["samples"]
    assert set(FIXTURE_TASKS) <= set(res)
    # multiple choice: lm-eval's acc is the argmax of our log-likelihoods, each equal to a direct forward
    piqa = samples["dla_piqa_local"]
    hits = []
    for s in piqa:
        doc = s["doc"]
        ctx = lm.tok_encode(f"Question: {doc['goal']}\nAnswer:")
        scores = []
        for sol, (lp, _) in zip((doc["sol1"], doc["sol2"]), (r[0] for r in s["resps"])):
            cont = lm.tok_encode(f"Question: {doc['goal']}\nAnswer: {sol}")[len(ctx):]
            assert float(lp) == pytest.approx(float(_logp(model, ctx + cont)[-len(cont):].sum()), rel=1e-9)
            scores.append(float(lp))
        hits.append(int(scores.index(max(scores)) == doc["label"]))
    assert res["dla_piqa_local"]["acc,none"] == pytest.approx(sum(hits) / len(hits))
    # rolling perplexity: word perplexity from one direct forward per document (each fits one window)
    nll = words = 0.0
    for s in samples["dla_ppl_local"]:
        page = s["doc"]["page"]
        ids = [lm.eot_token_id] + lm.tok_encode(page)
        nll -= float(_logp(model, ids).sum())
        words += len(page.split())
    assert res["dla_ppl_local"]["word_perplexity,none"] == pytest.approx(math.exp(nll / words), rel=1e-6)
    # generation: lm-eval's response is our cached greedy decode, equal to transformers' generate
    for s in samples["dla_niah_local"][:2]:
        ids = torch.tensor([lm.tok_encode(s["doc"]["input"])])
        ref = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=lm.eot_token_id)
        text = tok.decode(ref[0, ids.shape[1]:].tolist()).split("\n")[0].split("<|endoftext|>")[0]
        assert s["resps"][0][0] == text
    assert 0.0 <= res["dla_niah_local"]["string_match,none"] <= 1.0
    assert "contains,none" in res["dla_swde_local"]
    # RULER-format rows through RULER's prompt (input, then the answer prefix) and per-length metric
    from dla.eval.metrics import string_match

    for s in samples["dla_ruler_local"]:
        doc = s["doc"]
        assert s["arguments"][0][0] == doc["input"] + " " + doc["gen_prefix"]
        assert s[str(doc["max_length"])] == string_match(s["resps"][0][0].strip(), doc["outputs"])
    assert {"236,none", "256,none"} <= set(res["dla_ruler_local"])
    assert 0.0 <= res["dla_longbench_local"]["score,none"] <= 1.0


def test_lm_eval_command_line(ckpt, fixture_tasks, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dla.eval.harness", "run", "--model", "dla", "--model_args",
           f"pretrained={ckpt},chunk_size=64", "--tasks", "dla_piqa_local", "--include_path", str(fixture_tasks),
           "--limit", "2", "--batch_size", "2", "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)  # a loaded 2-core machine
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list((tmp_path / "out").rglob("results*.json"))
    assert files, proc.stdout[-2000:]
    res = json.loads(files[0].read_text())["results"]["dla_piqa_local"]
    assert 0.0 <= res["acc,none"] <= 1.0


def test_dla_eval_two_checkpoints(ckpt, hybrid_ckpt, tmp_path, capsys):
    from dla.eval.cli import main

    rc = main(["eval", ckpt, hybrid_ckpt, "--suite", "local", "--limit", "2", "--max-length", "512",
               "--batch-size", "2", "--out", str(tmp_path)])
    assert rc == 0
    records = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in records] == ["ckpt_gdn0", "ckpt_hybrid0"]
    for r in records:
        assert set(FIXTURE_TASKS) <= set(r["tasks"])
        assert r["settings"]["max_length"] == 512 and r["versions"]["lm_eval"] == lm_eval.__version__
    table = (tmp_path / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| dla_piqa_local (acc)"))
    assert row.count("|") == 4  # label + two checkpoints
    assert "| task | ckpt_gdn0 | ckpt_hybrid0 |" in table


def test_dla_eval_bad_input(ckpt, tmp_path, capsys):
    from dla.eval.cli import main

    assert main(["eval", str(tmp_path / "nope"), "--tasks", "piqa"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_lm_eval_entry_point_resolves_model_dla(ckpt):
    """The ``lm_eval.models`` entry point (pyproject.toml) that lm-eval releases after 0.4.13 scan: lm-eval puts it
    in its model registry as a lazy placeholder and loads it when ``--model dla`` is asked for."""
    import importlib.metadata as md

    from lm_eval.api import registry
    from lm_eval.api.model import LM

    entry = md.entry_points(group="lm_eval.models")["dla"]
    assert entry.value == "dla.eval.lm_eval_model:DLALM" and entry.load() is DLALM
    if hasattr(registry, "load_plugins"):  # a release with plugin discovery: the real thing, in a fresh process
        proc = subprocess.run([sys.executable, "-c", "from lm_eval.api.registry import get_model\n"
                               "print(get_model('dla').__module__)"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and proc.stdout.split()[-1] == "dla.eval.lm_eval_model", proc.stderr[-2000:]
    else:  # lm-eval 0.4.13: the same lazy placeholder in a registry of its own
        models = registry.Registry("model", base_cls=LM)
        models.register("dla", target=entry)
        lm = models.get("dla").create_from_arg_string(f"pretrained={ckpt},max_length=64,device=cpu")
        assert isinstance(lm, DLALM) and lm.max_length == 64
