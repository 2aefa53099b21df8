"""The training loop on CPU: it learns, logs, checkpoints, resumes exactly after a kill, and rejects bad input
before the first step."""

import json
import math

import pytest
import torch
import yaml

from dla.train import config_from_dict, train
from dla.train.checkpoint import list_checkpoints, load_checkpoint
from dla.train.logs import read_log

from .conftest import kill_when_ready, tiny_dict


def train_losses(out_dir) -> list[float]:
    return [r["loss"] for r in read_log(out_dir / "log.jsonl") if r["kind"] == "train"]


def test_lm_run_learns_logs_checkpoints_and_exports(tiny, tmp_path):
    config = tiny(train={"max_steps": 8, "eval_every": 4}, checkpoint={"every": 4, "keep_last": 1},
                  log={"every": 1, "tensorboard": True, "plot": True})
    result = train(config)
    out = config.output_dir
    losses = train_losses(out)
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.3, losses
    val = [r for r in read_log(out / "log.jsonl") if r["kind"] == "val"]
    assert [r["step"] for r in val] == [4, 8]
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    assert result.metrics["val_ppl"] == pytest.approx(math.exp(val[-1]["val_loss"]), rel=1e-12)
    assert result.steps == 8 and result.tokens == 8 * 4 * 32 and result.tokens_per_s > 0
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [8]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((out / "tensorboard").iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["metrics"]["val_loss"] == result.metrics["val_loss"]

    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    x = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        assert torch.equal(exported(input_ids=x).logits, result.model.eval()(input_ids=x).logits)
    assert (out / "final" / "tokenizer.json").is_file()


CHILD = """
import json, sys, time
import dla.train.loop as loop
from dla.train import config_from_dict, train

forward = loop._Step.__call__
calls = {"n": 0}

def hanging(self, batch):
    calls["n"] += 1
    if calls["n"] == int(sys.argv[2]):
        print("HANG", flush=True)
        time.sleep(120)
    return forward(self, batch)

loop._Step.__call__ = hanging
train(config_from_dict(json.loads(sys.argv[1])))
"""


def test_kill_and_resume_gives_the_same_weights_bitwise(tiny, tmp_path, corpus_dir, cache_dir):
    sections = dict(train={"max_steps": 8, "global_batch_size": 4, "micro_batch_size": 2, "deterministic": True},
                    checkpoint={"every": 1, "keep_last": 2})
    straight = train(tiny(out="straight", **sections))

    killed = tiny_dict(tmp_path / "killed", corpus_dir, cache_dir, **sections)
    # 2 micro-batches per step: forward call 12 is the second half of step 6, after checkpoint 5
    kill_when_ready(["-c", CHILD, json.dumps(killed), "12"], "HANG")
    ckpts = tmp_path / "killed" / "checkpoints"
    assert [s for s, _ in list_checkpoints(ckpts)] == [4, 5]
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(tiny(out="killed", **sections))

    resumed = train(tiny(out="killed", **sections), resume=True)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    opt_a = load_checkpoint(straight.checkpoint)["optimizer"]["state"]
    opt_b = load_checkpoint(resumed.checkpoint)["optimizer"]["state"]
    assert all(torch.equal(opt_a[k][s], opt_b[k][s]) for k in opt_a for s in opt_a[k])
    assert train_losses(tmp_path / "killed") == train_losses(tmp_path / "straight")  # log cut back to step 5
    assert resumed.tokens == straight.tokens and resumed.steps == 8


def test_mqar_task_scores_only_the_queries(tiny):
    config = tiny(data={"task": "mqar", "seq_len": 32, "mqar": {"num_kv_pairs": 4, "vocab_size": 64,
                                                                 "num_train": 256, "num_val": 64}},
                  train={"max_steps": 6, "global_batch_size": 16, "micro_batch_size": 16, "eval_batches": None})
    result = train(config)
    assert result.metrics["val_tokens"] == 64 * 4  # exactly the 4 queried keys of each of the 64 examples
    assert 0.0 <= result.metrics["val_acc"] <= 1.0
    losses = train_losses(config.output_dir)
    assert losses[-1] < losses[0], losses
    assert result.num_params == sum(p.numel() for p in result.model.parameters())


@pytest.mark.parametrize("packed", [False, True])
def test_logits_only_at_scored_positions_give_the_full_loss_and_gradients(packed):
    """A DLA model's step projects to the vocabulary only where a label is scored; the loss sum and every gradient
    equal those of the full logits (the generic path any causal LM takes)."""
    from dla.models import DLAConfig, DLAForCausalLM
    from dla.train.loop import _Step

    torch.manual_seed(0)
    model = DLAForCausalLM(DLAConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_heads=2, head_k_dim=8,
                                     capacity=4, max_position_embeddings=64, eos_token_id=0)).double()
    ids = torch.randint(1, 40, (3, 20))
    ids[1, 7] = 0  # a document boundary inside row 1
    labels = torch.where(torch.rand(3, 20) < 0.3, torch.randint(0, 40, (3, 20)), torch.full((3, 20), -100))
    batch = {"input_ids": ids, "labels": labels}
    if packed:
        from dla.data.loader import batch_cu_seqlens

        batch["cu_seqlens"] = batch_cu_seqlens(ids, 0)
    results = []
    for scored in (True, False):
        model.zero_grad()
        step = _Step(model, model, torch.device("cpu"), None, document_masking=packed)
        assert step.scored_logits
        step.scored_logits = scored
        nll, logits, got_labels = step(batch)
        nll.backward()
        results.append((nll.detach(), [p.grad.clone() for p in model.parameters()], logits, got_labels))
    (nll_s, grads_s, logits_s, labels_s), (nll_f, grads_f, logits_f, labels_f) = results
    n = int((labels != -100).sum())
    assert logits_s.shape == (n, 40) and logits_f.shape == (60, 40) and torch.equal(labels_s, labels_f[labels_f != -100])
    assert torch.allclose(logits_s, logits_f[labels_f != -100], rtol=0, atol=1e-12)
    assert torch.allclose(nll_s, nll_f, rtol=1e-6, atol=0)  # the step takes the loss in float32
    for a, b in zip(grads_s, grads_f):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_any_transformers_causal_lm_trains(tmp_path, corpus_dir, cache_dir):
    data = tiny_dict(tmp_path / "llama", corpus_dir, cache_dir, data={"document_masking": True},
                     train={"max_steps": 6})
    data["model"] = {"type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}
    config = config_from_dict(data)
    result = train(config)  # LlamaForCausalLM.forward has no cu_seqlens: the trainer does not pass it
    assert type(result.model).__name__ == "LlamaForCausalLM"
    losses = train_losses(config.output_dir)
    assert losses[-1] < losses[0] - 0.2, losses


def test_document_masking_reaches_the_model(tiny):
    sections = dict(train={"max_steps": 1, "warmup_steps": 0, "global_batch_size": 16, "micro_batch_size": 16})
    masked = train(tiny(out="masked", data={"document_masking": True}, **sections))
    plain = train(tiny(out="plain", data={"document_masking": False}, **sections))
    assert masked.final_loss != plain.final_loss  # same weights and batch: only the document offsets differ
    assert abs(masked.final_loss - plain.final_loss) < 0.1


def test_activation_checkpointing_and_accumulation_do_not_change_the_result(tiny):
    base = train(tiny(out="base", train={"max_steps": 3, "global_batch_size": 4, "micro_batch_size": 4}))
    ckpt = train(tiny(out="ckpt", train={"max_steps": 3, "global_batch_size": 4, "micro_batch_size": 2,
                                         "activation_checkpointing": True}))
    a, b = base.model.state_dict(), ckpt.model.state_dict()
    worst = max(float((a[k] - b[k]).norm() / (a[k].norm() + 1e-12)) for k in a)
    assert worst < 1e-4, worst


def test_time_limit_stops_with_a_checkpoint_and_resume_finishes(tiny):
    config = tiny(train={"max_steps": 6, "max_time_s": 1e-6})
    first = train(config)
    assert first.stopped_early and first.steps == 1
    assert [s for s, _ in list_checkpoints(config.output_dir / "checkpoints")] == [1]
    rest = train(tiny(train={"max_steps": 6}), resume=True)
    assert rest.steps == 6 and not rest.stopped_early


@pytest.mark.parametrize("sections, error, message", [
    ({"data": {"sources": [{"kind": "files", "path": "/nonexistent/corpus"}]}}, FileNotFoundError, "nonexistent"),
    ({"data": {"seq_len": 4000}}, ValueError, "seq_len: the (train|val) split has .* fewer than seq_len"),
    ({"data": {"seq_len": 128}}, ValueError, "data.seq_len: 128 is longer than model.max_position_embeddings=64"),
    ({"model": {"vocab_size": 100}}, ValueError, "model.vocab_size: 100 is smaller than the data's vocabulary"),
    ({"train": {"global_batch_size": 4096, "micro_batch_size": 4096}}, ValueError, "batch_size: train split has"),
])
def test_bad_input_fails_before_training(tiny, sections, error, message):
    config = tiny(**sections)
    with pytest.raises(error, match=message):
        train(config)
    assert not (config.output_dir / "log.jsonl").exists()


def test_empty_corpus_fails_before_training(tiny, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    config = tiny(data={"sources": [{"kind": "files", "path": str(empty)}], "cache_dir": None})
    with pytest.raises(ValueError, match="yielded no non-empty document"):
        train(config)
    assert not config.output_dir.exists()


def test_nan_in_the_weights_stops_before_a_checkpoint_and_keeps_the_good_ones(tiny, monkeypatch):
    import dla.train.loop as loop

    build = loop.build_optimizer

    def poisoning(*args, **kwargs):  # after optimizer step 3 one weight turns NaN, between two log steps
        optimizer, calls = build(*args, **kwargs), {"n": 0}

        def after_step(opt, *_):
            calls["n"] += 1
            if calls["n"] == 3:
                with torch.no_grad():
                    opt.param_groups[0]["params"][0].view(-1)[0] = float("nan")

        optimizer.register_step_post_hook(after_step)
        return optimizer

    monkeypatch.setattr(loop, "build_optimizer", poisoning)
    config = tiny(train={"max_steps": 8}, checkpoint={"every": 2, "keep_last": 1}, log={"every": 100})
    ckpts = config.output_dir / "checkpoints"
    with pytest.raises(FloatingPointError, match=r"^train: the weights \(model\.embed_tokens\.weight\) not finite at "
                                                 r"step 4; no checkpoint written\. The last good checkpoint is .*"
                                                 r"step_00000002\.pt"):
        train(config)
    assert [s for s, _ in list_checkpoints(ckpts)] == [2]  # keep_last=1 rotated nothing out
    good = load_checkpoint(ckpts / "step_00000002.pt")["model"]
    assert all(bool(torch.isfinite(t).all()) for t in good.values())
    assert not (config.output_dir / "final").exists()


def test_resume_with_changed_settings_refuses_unless_told_and_keeps_the_record(tiny):
    first = tiny(train={"max_steps": 4}, checkpoint={"every": 2})
    train(first)
    out = first.output_dir
    recorded = (out / "config.yaml").read_text()
    longer = tiny(train={"max_steps": 6}, checkpoint={"every": 2})
    with pytest.raises(ValueError, match=r"^resume: settings differ .*\(train\.max_steps: 4 -> 6\).*--allow-changes"):
        train(longer, resume=True)
    with pytest.raises(ValueError, match="is at step 4, and this run ends at step 3"):
        train(tiny(train={"max_steps": 3}), resume=True, allow_changes=True)
    result = train(longer, resume=True, allow_changes=True)
    assert result.steps == 6 and result.final_loss is not None
    assert (out / "config.yaml").read_text() == recorded  # the run's record is never rewritten
    assert yaml.safe_load((out / "config.resume-00000004.yaml").read_text())["train"]["max_steps"] == 6
    resumes = [r for r in read_log(out / "log.jsonl") if r["kind"] == "resume"]
    assert resumes[-1]["step"] == 4 and resumes[-1]["changed"] == {"max_steps": [4, 6]}


def test_compiled_blocks_train_as_the_eager_model(tiny):
    """`train.compile` compiles each block (DLA's recurrent layers whole, through the registered op); the losses
    follow the eager run's step for step (float32, the same data and initialisation)."""
    sections = dict(train={"max_steps": 3, "warmup_steps": 1})
    eager = train(tiny(out="eager", **sections))
    compiled = train(tiny(out="compiled", train={**sections["train"], "compile": True}))
    a, b = train_losses(eager.out_dir), train_losses(compiled.out_dir)
    assert len(a) == len(b) == 3
    assert a == pytest.approx(b, rel=1e-4)
    layer, eager_layer = compiled.model.model.layers[0], eager.model.model.layers[0]
    assert type(layer).__name__ == "DLABlock"  # compiled in place: the trained model keeps its classes
    assert layer._compiled_call_impl is not None and eager_layer._compiled_call_impl is None
