"""The lm-eval adapter against direct model forwards: loglikelihood (grouped prefixes, padding, chunks),
rolling windows and carried state, cached generation (prompt encoded once), and its errors."""

import json

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from dla.eval.checkpoint import load_checkpoint  # noqa: E402
from dla.eval.lm_eval_model import DLALM  # noqa: E402


def _lm(path, **kw):
    model, tok = load_checkpoint(path, dtype="float64")
    return DLALM(pretrained=model, tokenizer=tok, **kw)


def _ref_logp(model, ctx, cont):
    """Sum of log p(cont | ctx) from one full forward without a cache."""
    inp = torch.tensor([ctx + cont[:-1]])
    with torch.no_grad():
        logits = model(inp, use_cache=False).logits.double()
    lp = F.log_softmax(logits, -1)[0, len(ctx) - 1:]
    return float(lp.gather(-1, torch.tensor(cont)[:, None]).sum()), bool((lp.argmax(-1) == torch.tensor(cont)).all())


REQUESTS = [("Question: How do you open a jar?\nAnswer:", c) for c in (" twist the lid.", " Paris", " green sky")] + \
    [("The grass", " is green."), ("T", "he sky"), ("", "The sun is yellow."), ("The grass", " is blue.")]


@pytest.mark.parametrize("which", ["ckpt", "hybrid_ckpt"])
def test_loglikelihood_equals_full_forward(which, request):
    lm = _lm(request.getfixturevalue(which), batch_size=2, chunk_size=3)
    out = lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(REQUESTS)], disable_tqdm=True)
    assert len(out) == len(REQUESTS)
    for (ctx, cont), (lp, greedy) in zip(REQUESTS, out):
        c_ids, k_ids = lm._encode_pair(ctx, cont) if ctx else ([lm.eot_token_id], lm.tok_encode(cont))
        ref, ref_greedy = _ref_logp(lm.model, c_ids, k_ids)
        assert lp == pytest.approx(ref, rel=1e-9, abs=1e-9)
        assert greedy == ref_greedy


def test_shared_context_is_prefilled_once(ckpt):
    lm = _lm(ckpt, batch_size=8)
    lengths = []
    hook = lm.model.model.register_forward_pre_hook(lambda m, a, kw: lengths.append(kw["input_ids"].shape),
                                                    with_kwargs=True)
    ctx = "Question: How do you open a jar?\nAnswer:"
    conts = [" twist the lid.", " Paris", " green sky", " blue"]
    lm.loglikelihood([Instance("loglikelihood", {}, (ctx, c), i) for i, c in enumerate(conts)], disable_tqdm=True)
    hook.remove()
    n_ctx = len(lm.tok_encode(ctx))
    # one prefill of the shared context (minus its last token) for one group, then all continuations in one batch
    assert lengths[0] == torch.Size([1, n_ctx - 1])
    assert lengths[1][0] == len(conts) and len(lengths) == 2


def test_generate_until_matches_hf_generate_and_encodes_prompt_once(ckpt):
    lm = _lm(ckpt, batch_size=2, chunk_size=4096)
    prompts = ["The grass is", "One of the special magic numbers for quick-fox is:"]
    calls = []
    hook = lm.model.model.register_forward_pre_hook(lambda m, a, kw: calls.append(tuple(kw["input_ids"].shape)),
                                                    with_kwargs=True)
    outs = lm.generate_until([Instance("generate_until", {}, (p, {"until": ["\n"], "max_gen_toks": 6}), i)
                              for i, p in enumerate(prompts)], disable_tqdm=True)
    hook.remove()
    # one prefill of the padded batch, then one-token steps only: the prompt is never encoded again
    assert calls[0][1] == max(len(lm.tok_encode(p)) for p in prompts)
    assert all(c[1] == 1 for c in calls[1:]) and len(calls) <= 6
    for p, text in zip(prompts, outs):
        ids = torch.tensor([lm.tok_encode(p)])
        ref = lm.model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=lm.eot_token_id)
        ref_text = lm.tokenizer.decode(ref[0, ids.shape[1]:].tolist()).split("\n")[0].split("<|endoftext|>")[0]
        assert text == ref_text


def test_rolling_windows_and_carry(ckpt):
    lm = _lm(ckpt, max_length=16, chunk_size=5)
    text = "The grass is green. The sky is blue. The sun is yellow. " * 3
    ids = lm.tok_encode(text)
    assert len(ids) > 16
    windows = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)[0]
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    pieces = [make_disjoint_window(w) for w in get_rolling_token_windows(ids, lm.eot_token_id, 16, 1)]
    assert sum(len(cont) for _, cont in pieces) == len(ids) and len(pieces) > 1
    ref_windows = sum(_ref_logp(lm.model, ctx, cont)[0] for ctx, cont in pieces)  # each window from a fresh state
    assert windows == pytest.approx(ref_windows, rel=1e-9)
    lm.rolling = "carry"
    carry = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)[0]
    assert carry == pytest.approx(_ref_logp(lm.model, [lm.eot_token_id], ids)[0], rel=1e-9)
    assert abs(carry - windows) > 1e-6  # more context than the windows: a different number


def test_left_truncation_and_error(ckpt):
    lm = _lm(ckpt, max_length=8)
    ctx, cont = "The grass is green. The sky is blue. The sun", " is yellow."
    (lp, _), = lm.loglikelihood([Instance("loglikelihood", {}, (ctx, cont), 0)], disable_tqdm=True)
    c, k = lm._encode_pair(ctx, cont)
    full = (c + k)[-9:]
    assert lp == pytest.approx(_ref_logp(lm.model, full[:len(full) - len(k)], k)[0], rel=1e-9)
    assert lm.truncated == 1
    lm.truncation = "error"
    with pytest.raises(ValueError, match="max_length=8"):
        lm.loglikelihood([Instance("loglikelihood", {}, (ctx, cont), 0)], disable_tqdm=True)
    with pytest.raises(ValueError, match="max_length=8"):
        lm.generate_until([Instance("generate_until", {}, (ctx, {"until": ["\n"], "max_gen_toks": 2}), 0)],
                          disable_tqdm=True)


def test_errors(ckpt, hybrid_ckpt, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        DLALM(pretrained=str(tmp_path / "missing"))
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        DLALM(pretrained=str(tmp_path / "gpt2"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        DLALM(pretrained=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="longer than this checkpoint supports .512"):
        DLALM(pretrained=hybrid_ckpt, max_length=4096)
    with pytest.raises(ValueError, match="truncation"):
        DLALM(pretrained=ckpt, truncation="middle")
    with pytest.raises(ValueError, match="batch_size"):
        DLALM(pretrained=ckpt, batch_size="auto")
    lm = DLALM(pretrained=ckpt)
    assert lm.max_length == 256  # no limit for recurrent layers: the training length
    with pytest.raises(ValueError, match="repetition_penalty"):
        lm.generate_until([Instance("generate_until", {}, ("The", {"until": ["\n"], "repetition_penalty": 1.2}), 0)],
                          disable_tqdm=True)
