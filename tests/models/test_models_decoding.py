"""DLA language models: decoding (dla_step) == one pass, padding, packing, constant cache memory and step time,
gradients, generate().

Tolerances (relative error ``||a - b|| / ||b||``): float64 1e-9; float32 1e-5 (measured ~3e-7 at T = 64);
generate() returns float32 logits, compared with a float64 forward at 1e-5.
"""

import time

import pytest
import torch

import dla.layers.recurrent as recurrent
from dla.models import DLACache

CASES = ["mamba2-single", "mamba2-fenwick", "mamba2-dla", "gdn-single", "gdn-fenwick", "gdn-dla", "attention",
         "hybrid"]
ABLATIONS = ["gdn-fixed", "mamba2-dla_unbounded"]
TOL64, TOL32, TOL_GENERATE = 1e-9, 1e-5, 1e-5


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def tokens(B=2, T=16, seed=1):
    torch.manual_seed(seed)
    return torch.randint(1, 64, (B, T))


@pytest.mark.parametrize("dtype,tol,T", [(torch.float64, TOL64, 16), (torch.float32, TOL32, 48)], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES + ABLATIONS)
def test_incremental_decoding_matches_full_forward(make_model, case, dtype, tol, T):
    model, ids = make_model(case, dtype), tokens(T=T)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :6])
        cache = out.past_key_values
        logits = [out.logits] + [model(ids[:, t:t + 1], past_key_values=cache).logits for t in range(6, T)]
    assert isinstance(cache, DLACache) and cache.get_seq_length() == T
    assert rel(torch.cat(logits, 1), full) <= tol


@pytest.mark.parametrize("case", CASES)
def test_prefill_in_two_pieces_equals_one_pass(make_model, case):
    model, ids = make_model(case), tokens()
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :7])
        second = model(ids[:, 7:], past_key_values=first.past_key_values)
    assert rel(torch.cat([first.logits, second.logits], 1), full) <= TOL64


@pytest.mark.parametrize("case", CASES)
def test_generate_logits_match_full_forward(make_model, case):
    model, ids = make_model(case), tokens(T=6)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0)
        full = model(out.sequences).logits
    steps = torch.stack(out.logits, 1)  # [B, 8, vocab], step i predicts token 6 + i
    assert out.sequences.shape == (2, 14)
    assert rel(steps, full[:, 5:13]) <= TOL_GENERATE
    assert torch.equal(out.sequences[:, 6:], full[:, 5:13].argmax(-1))


@pytest.mark.parametrize("case", CASES + ABLATIONS)
def test_left_padded_batch_equals_each_sequence_alone(make_model, case):
    model = make_model(case)
    lengths, T = [10, 7, 3], 10
    prompts = [tokens(B=1, T=n, seed=10 + i) for i, n in enumerate(lengths)]
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, T - p.shape[1]:], mask[b, T - p.shape[1]:] = p[0], 1
    with torch.no_grad():
        batch_logits = model(ids, attention_mask=mask).logits
        batch_gen = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        for b, p in enumerate(prompts):
            alone = model(p).logits
            assert rel(batch_logits[b:b + 1, T - p.shape[1]:], alone) <= TOL64
            alone_gen = model.generate(p, max_new_tokens=6, do_sample=False, pad_token_id=0)
            assert torch.equal(batch_gen[b, T:], alone_gen[0, p.shape[1]:])


@pytest.mark.parametrize("case", CASES)
def test_cache_memory_does_not_grow_with_generated_tokens(make_model, case):
    model, ids = make_model(case, torch.float32), tokens(T=8)
    sizes = {}
    with torch.no_grad():
        for n in (10, 100):
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 return_dict_in_generate=True, pad_token_id=0)
            assert out.sequences.shape[1] == 8 + n
            sizes[n] = out.past_key_values.nbytes()
    if case in ("attention", "hybrid"):
        assert sizes[100] > sizes[10]  # keys and values grow with every token
    else:
        assert sizes[100] == sizes[10] > 0


@pytest.mark.parametrize("case", CASES + ["gdn-fixed", "mamba2-dla_unbounded"])
def test_gradients_reach_every_parameter(make_model, case):
    model, ids = make_model(case, torch.float32), tokens(T=24)
    model.train()
    out = model(ids, labels=ids)
    assert out.past_key_values is None  # training forwards build no cache
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


@pytest.mark.parametrize("case", ["gdn-dla", "hybrid"])
def test_gradient_checkpointing_gives_the_same_gradients(make_model, case):
    ids = tokens(T=16)
    grads = []
    for checkpointing in (False, True):
        model = make_model(case)
        if checkpointing:  # transformers >= 5.21 name, and the older one it replaces
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
            assert model.model.layers[0].gradient_checkpointing
        model.train()
        model(ids, labels=ids).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert rel(grads[1], grads[0]) <= TOL64


def test_loss_ignores_masked_labels_and_can_be_summed_over_a_count(make_model):
    model, ids = make_model("gdn-dla"), tokens(T=10)
    labels = ids.clone()
    labels[:, :4] = -100
    with torch.no_grad():
        logits = model(ids).logits
        mean = model(ids, labels=labels).loss
        summed = model(ids, labels=labels, num_items_in_batch=torch.tensor(3)).loss
    logp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    expected = -logp[:, 3:].sum()  # positions 3..8 predict the unmasked labels 4..9
    assert rel(mean, expected / 12) <= TOL64 and rel(summed, expected / 3) <= TOL64


def test_tied_embeddings_share_one_tensor(make_model):
    model = make_model("gdn-dla", tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight is not make_model("gdn-dla").model.embed_tokens.weight


@pytest.mark.parametrize("case", ["mamba2-dla", "gdn-fenwick", "attention", "hybrid"])
def test_packed_documents_equal_separate_forwards(make_model, case):
    model, ids = make_model(case), tokens(B=1, T=20)
    bounds = [(0, 5), (5, 14), (14, 20)]
    with torch.no_grad():
        packed = model(ids, cu_seqlens=torch.tensor([0, 5, 14, 20]), use_cache=False).logits
        separate = torch.cat([model(ids[:, a:b], use_cache=False).logits for a, b in bounds], 1)
    assert rel(packed, separate) <= TOL64
    with pytest.raises(ValueError, match="^cu_seqlens:"):
        model(ids, cu_seqlens=torch.tensor([0, 20]), use_cache=True)


@pytest.mark.parametrize("case", ["gdn-dla", "hybrid"])
def test_beam_search_scores_match_a_full_forward(make_model, case):
    """Beam search reorders the cache every step: its scores are right only if the reorder is."""
    model, ids = make_model(case), tokens(B=2, T=5)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False,
                             length_penalty=0.0, return_dict_in_generate=True, output_scores=True, pad_token_id=0)
        logp = model(out.sequences, use_cache=False).logits.log_softmax(-1)
    new = out.sequences[:, 5:]
    score = logp[:, 4:-1].gather(-1, new[..., None])[..., 0].sum(-1)
    assert out.sequences.shape == (4, 11)
    assert rel(out.sequences_scores, score) <= 1e-5


def test_sampling_is_reproducible_and_expands_the_batch(make_model):
    model, ids = make_model("hybrid", torch.float32), tokens(B=2, T=5)
    with torch.no_grad():
        torch.manual_seed(3)
        a = model.generate(ids, max_new_tokens=7, do_sample=True, top_k=20, num_return_sequences=3,
                           pad_token_id=0)
        torch.manual_seed(3)
        b = model.generate(ids, max_new_tokens=7, do_sample=True, top_k=20, num_return_sequences=3,
                           pad_token_id=0)
    assert a.shape == (6, 12) and torch.equal(a, b)
    assert torch.equal(a[:, :5], ids.repeat_interleave(3, 0))
    assert int(a.max()) < 64 and len({tuple(r) for r in a[:, 5:].tolist()}) > 1


def test_attention_model_refuses_prompts_longer_than_max_positions(make_model):
    model = make_model("attention", max_position_embeddings=12)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(tokens(B=1, T=13))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(tokens(B=1, T=10), max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    assert model(tokens(B=1, T=12)).logits.shape == (1, 12, 64)


@pytest.mark.parametrize("case", ["mamba2-fenwick", "hybrid"])
def test_generate_continues_from_a_returned_cache(make_model, case):
    model, ids = make_model(case), tokens(T=6)
    with torch.no_grad():
        once = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        first = model.generate(ids, max_new_tokens=4, do_sample=False, return_dict_in_generate=True, pad_token_id=0)
        cache = first.past_key_values
        assert cache.get_seq_length() == 9  # the last generated token is not fed yet
        again = model.generate(first.sequences, past_key_values=cache, max_new_tokens=4, do_sample=False,
                               pad_token_id=0)
    assert torch.equal(again, once)


@pytest.fixture
def op_calls(monkeypatch):
    """Count the chunked-op and decode-step calls of the recurrent mixers."""
    calls = {"chunk": 0, "step": 0}

    def counting(key, fn):
        def wrapped(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(recurrent, "dla_op", counting("chunk", recurrent.dla_op))
    monkeypatch.setattr(recurrent, "dla_step", counting("step", recurrent.dla_step))
    return calls


@pytest.mark.parametrize("case,recurrent_layers", [("mamba2-fenwick", 2), ("gdn-dla", 2), ("hybrid", 1)])
def test_padded_generate_prefills_in_one_op_call_and_decodes_with_dla_step(make_model, case, recurrent_layers,
                                                                           op_calls):
    model = make_model(case)
    ids = tokens(B=3, T=8)
    mask = torch.ones_like(ids)
    mask[1, :3] = mask[2, :6] = 0
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (3, 13)
    # the last generated token is never fed back: 4 decode steps
    assert op_calls == {"chunk": recurrent_layers, "step": 4 * recurrent_layers}


def _decode_ms_per_token(model, prefixes, steps: int):
    """Median ms of one decode step after each prefix; steps alternate between the prefixes so that drifts in
    machine load hit them alike."""
    caches, nxt = [], []
    with torch.no_grad():
        for ids in prefixes:
            out = model(ids)
            caches.append(out.past_key_values)
            nxt.append(out.logits[:, -1:].argmax(-1))
        times = [[] for _ in prefixes]
        for _ in range(steps):
            for i, cache in enumerate(caches):
                start = time.perf_counter()
                logits = model(nxt[i], past_key_values=cache).logits
                times[i].append(time.perf_counter() - start)
                nxt[i] = logits.argmax(-1)
    return [1e3 * sorted(t)[len(t) // 2] for t in times]


def test_decode_time_per_token_does_not_grow_with_the_prefix(make_model):
    """Constant-time decode: a step after 1000 tokens costs about what it costs after 100 (the slot cache has a
    fixed size; the step never touches the prefix)."""
    model = make_model("gdn-dla", torch.float32, max_position_embeddings=2048)
    short, long = _decode_ms_per_token(model, [tokens(B=1, T=100), tokens(B=1, T=1000)], steps=40)
    assert long / short < 2.0, f"decode ms/token: {short:.2f} after 100 tokens, {long:.2f} after 1000"
