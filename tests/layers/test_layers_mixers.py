"""Mixers as plain modules, in float64: decoding (dla_step) == one pass, padding and packing leave states untouched
and take one op call, the lam wiring, inits and argument errors. Tolerance: relative error
``||a - b|| / ||b|| <= 1e-10`` (float64)."""

import math

import pytest
import torch
import torch.nn.functional as F

import dla.layers.recurrent as recurrent
from dla.layers import (AttentionLayerCache, AttentionMixer, GatedDeltaNetMixer, Mamba2Mixer, RecurrentLayerCache)
from dla.layers.modules import ShortConv
from dla.layers.state import fit_state_width

TOL64 = 1e-10
D = 32


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm().clamp_min(1e-300))


def mamba2(policy="dla", **kw):
    kw = {"capacity": 4, "tau": 0.3, "max_position_embeddings": 64, "block_size": 4, **kw}
    return Mamba2Mixer(D, num_heads=4, head_v_dim=8, head_k_dim=8, num_qk_heads=2, policy=policy, **kw)


def gdn(policy="dla", **kw):
    kw = {"capacity": 4, "tau": 0.3, "max_position_embeddings": 64, "block_size": 4, **kw}
    return GatedDeltaNetMixer(D, num_heads=2, head_k_dim=8, head_v_dim=16, policy=policy, **kw)


def attention(**kw):
    return AttentionMixer(D, num_heads=4, num_kv_heads=2, max_position_embeddings=64, **kw)


RECURRENT = [(name, policy) for name in ("mamba2", "gdn")
             for policy in ("single", "fenwick", "dla", "fixed", "dla_unbounded")]
ALL = RECURRENT + [("attention", None)]


def build(name, policy, seed=0, **kw):
    torch.manual_seed(seed)
    if name == "attention":
        return attention(**kw).double()
    return (mamba2 if name == "mamba2" else gdn)(policy, **kw).double()


def new_cache(name):
    return AttentionLayerCache() if name == "attention" else RecurrentLayerCache()


def inputs(B=2, T=16, seed=1):
    torch.manual_seed(seed)
    return torch.randn(B, T, D, dtype=torch.float64)


@pytest.fixture
def op_calls(monkeypatch):
    """Count the calls of the chunked op and of the decode step as the recurrent mixers make them."""
    calls = {"chunk": 0, "step": 0}

    def counting(key, fn):
        def wrapped(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(recurrent, "dla_op", counting("chunk", recurrent.dla_op))
    monkeypatch.setattr(recurrent, "dla_step", counting("step", recurrent.dla_step))
    return calls


@pytest.mark.parametrize("prefill", [0, 5], ids=["from_empty", "after_prefill"])
@pytest.mark.parametrize("name,policy", ALL)
def test_decode_steps_equal_one_pass(name, policy, prefill):
    mixer, x = build(name, policy), inputs()
    full = mixer(x)
    cache = new_cache(name)
    steps = ([mixer(x[:, :prefill], cache=cache)] if prefill else []) + \
        [mixer(x[:, t:t + 1], cache=cache) for t in range(prefill, x.shape[1])]
    assert rel(torch.cat(steps, 1), full) <= TOL64
    assert cache.seen_tokens == x.shape[1]


@pytest.mark.parametrize("name,policy", RECURRENT)
def test_decode_steps_call_dla_step_and_not_the_chunked_op(name, policy, op_calls):
    mixer, x = build(name, policy), inputs(T=8)
    cache = RecurrentLayerCache()
    mixer(x[:, :5], cache=cache)
    assert op_calls == {"chunk": 1, "step": 0}
    for t in range(5, 8):
        mixer(x[:, t:t + 1], cache=cache, attention_mask=torch.ones(2, 1))
    assert op_calls == {"chunk": 1, "step": 3}
    mixer(x[:, :1])  # no cache: one token is a (tiny) chunked call
    assert op_calls == {"chunk": 2, "step": 3}


@pytest.mark.parametrize("name,policy", ALL)
def test_masked_decode_step_leaves_the_row_unchanged(name, policy):
    """A step whose token is masked in one row: that row's cache is exactly what it was, its output is 0, and
    the later steps equal the row run without that token; the other row advances as usual."""
    mixer, x = build(name, policy), inputs(T=9)
    cache = new_cache(name)
    mixer(x[:, :5], cache=cache)
    before = (cache.conv.clone(), cache.state.clone()) if name != "attention" else None
    out = mixer(x[:, 5:6], cache=cache, attention_mask=torch.tensor([[1], [0]]))
    assert float(out[1].detach().abs().sum()) == 0.0
    if before is not None:
        assert torch.equal(cache.conv[1], before[0][1]) and not torch.equal(cache.conv[0], before[0][0])
        was = fit_state_width(before[1], cache.state.slots.shape[2])  # dla_unbounded may have grown
        for field in ("slots", "counts", "info", "num_slots", "open_norm"):
            assert torch.equal(getattr(cache.state, field)[1], getattr(was, field)[1]), field
    assert rel(out[0:1], mixer(x[0:1, :6])[:, 5:6]) <= TOL64
    later = [mixer(x[:, t:t + 1], cache=cache) for t in range(6, 9)]
    for b, seen in ((0, 6), (1, 5)):
        alone_cache = new_cache(name)
        mixer(x[b:b + 1, :seen], cache=alone_cache)
        for t, o in zip(range(6, 9), later):
            assert rel(o[b:b + 1], mixer(x[b:b + 1, t:t + 1], cache=alone_cache)) <= TOL64


@pytest.mark.parametrize("name,policy", ALL)
def test_prefill_in_two_pieces_equals_one_pass(name, policy):
    mixer, x = build(name, policy), inputs()
    full = mixer(x)
    cache = new_cache(name)
    pieces = torch.cat([mixer(x[:, :7], cache=cache), mixer(x[:, 7:], cache=cache)], 1)
    assert rel(pieces, full) <= TOL64


@pytest.mark.parametrize("name,policy", ALL)
def test_left_padding_equals_each_sequence_alone(name, policy, op_calls):
    """Left-padded prefill (one op call for the batch; a row of padding only keeps its empty state), then steps
    under a mask of ones (as generate() passes it): every row equals the row run alone."""
    mixer, x = build(name, policy), inputs(B=4, T=12)
    pads = [0, 3, 7, 12]
    mask = torch.ones(4, 12, dtype=torch.long)
    for b, p in enumerate(pads):
        mask[b, :p] = 0
    steps = inputs(B=4, T=3, seed=2)
    cache = new_cache(name)
    out = mixer(x, attention_mask=mask, cache=cache)
    if name != "attention":
        assert op_calls == {"chunk": 1, "step": 0}
    out_steps = [mixer(steps[:, t:t + 1], cache=cache, attention_mask=torch.ones(4, 1)) for t in range(3)]
    for b, p in enumerate(pads):
        alone_cache = new_cache(name)
        if p < 12:
            alone = mixer(x[b:b + 1, p:], cache=alone_cache)
            assert rel(out[b:b + 1, p:], alone) <= TOL64
        assert float(out[b, :p].detach().abs().sum()) == 0.0
        for t in range(3):
            assert rel(out_steps[t][b:b + 1], mixer(steps[b:b + 1, t:t + 1], cache=alone_cache)) <= TOL64


@pytest.mark.parametrize("name,policy", [("mamba2", "fenwick"), ("gdn", "dla")])
def test_padded_batch_gradients_equal_each_row_alone(name, policy):
    """The packed call scatters outputs back with index_copy: gradients reach each row's real tokens as alone."""
    mixer, x = build(name, policy), inputs(B=3, T=10)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, :] = 0
    x.requires_grad_(True)
    mixer(x, attention_mask=mask).pow(2).sum().backward()
    batch_grad, x_grad = [p.grad.clone() for p in mixer.parameters()], x.grad.clone()
    mixer.zero_grad()
    alone = [x[0:1].detach().clone().requires_grad_(True), x[1:2, 4:].detach().clone().requires_grad_(True)]
    sum(mixer(a).pow(2).sum() for a in alone).backward()
    for got, want in zip(batch_grad, [p.grad for p in mixer.parameters()]):
        assert rel(got, want) <= TOL64
    assert rel(x_grad[0], alone[0].grad[0]) <= TOL64 and rel(x_grad[1, 4:], alone[1].grad[0]) <= TOL64
    assert float(x_grad[1, :4].abs().sum()) == 0.0 and float(x_grad[2].abs().sum()) == 0.0


@pytest.mark.parametrize("name,policy", ALL)
def test_masked_tokens_anywhere_leave_the_state_unchanged(name, policy):
    """With holes in the mask (conv width 1, so the short convolution has no memory), every real token and every
    later call sees exactly the state of the sequence with the masked tokens removed: a masked prefill, a masked
    continuation (one row all padding), an unmasked chunk and a decode step."""
    mixer = build(name, policy, **({} if name == "attention" else {"conv_size": 1}))
    x, y, z = inputs(B=2, T=12), inputs(B=2, T=3, seed=3), inputs(B=2, T=3, seed=4)
    mask_x = torch.tensor([[1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 0], [0, 1, 1, 1, 0, 1, 0, 1, 1, 1, 1, 1]])
    mask_y = torch.tensor([[1, 0, 1], [0, 0, 0]])
    cache = new_cache(name)
    outs = [mixer(x, attention_mask=mask_x, cache=cache), mixer(y, attention_mask=mask_y, cache=cache),
            mixer(z[:, :2], cache=cache), mixer(z[:, 2:], cache=cache)]
    for b in range(2):
        alone_cache = new_cache(name)
        for out, chunk, keep in zip(outs, (x, y, z[:, :2], z[:, 2:]), (mask_x[b].bool(), mask_y[b].bool(), None,
                                                                        None)):
            keep = torch.ones(chunk.shape[1], dtype=torch.bool) if keep is None else keep
            if keep.any():
                assert rel(out[b, keep], mixer(chunk[b:b + 1, keep], cache=alone_cache)[0]) <= TOL64
            assert float(out[b, ~keep].detach().abs().sum()) == 0.0


@pytest.mark.parametrize("name,policy", ALL)
def test_packed_documents_equal_separate_runs(name, policy, op_calls):
    mixer, x = build(name, policy), inputs(B=1, T=20)
    cu = torch.tensor([0, 2, 6, 6, 13, 20])  # an empty document and one shorter than the convolution
    packed = mixer(x, cu_seqlens=cu)
    if name != "attention":
        assert op_calls["chunk"] == 1
    separate = torch.cat([mixer(x[:, a:b]) for a, b in ((0, 2), (2, 6), (6, 13), (13, 20))], 1)
    assert rel(packed, separate) <= TOL64
    assert rel(packed, mixer(x)) > 1e-3  # the boundaries matter: not a no-op


def test_short_conv_restarts_at_every_packed_document():
    torch.manual_seed(0)
    conv = ShortConv(6, 4, bias=True).double()
    x = torch.randn(1, 11, 6, dtype=torch.float64)
    bounds = [0, 1, 5, 5, 11]
    packed, _ = conv(x, cu_seqlens=torch.tensor(bounds))
    separate = torch.cat([conv(x[:, a:b])[0] for a, b in zip(bounds, bounds[1:]) if b > a], 1)
    assert rel(packed, separate) <= TOL64


@pytest.mark.parametrize("name", ["mamba2", "gdn"])
def test_dla_with_unit_lam_equals_single(name):
    """lam == 1 reads the sum of the slots, i.e. the backbone state, whatever the segmentation."""
    dla, x = build(name, "dla", tau=0.05), inputs(T=24)
    single = build(name, "single", seed=5)
    missing, unexpected = single.load_state_dict(dla.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == ["lam_proj.weight", "lam_scale"]
    cache = RecurrentLayerCache()
    learned = dla(x, cache=cache)
    assert int(cache.state.num_slots.min()) >= 2  # the segmentation is not trivial
    assert rel(learned, single(x)) > 1e-3  # learned lam changes the output ...
    dla.compute_lam = lambda h: torch.ones(*h.shape[:2], dla.num_heads, dla.lam_size, dtype=h.dtype)
    assert rel(dla(x), single(x)) <= TOL64  # ... and unit lam gives the backbone back


@pytest.mark.parametrize("name,policy", RECURRENT)
def test_cache_state_has_a_fixed_width(name, policy):
    mixer, x = build(name, policy), inputs(T=20)
    cache = RecurrentLayerCache()
    mixer(x[:, :3], cache=cache)
    sizes = []
    for t in range(3, 20):
        mixer(x[:, t:t + 1], cache=cache)
        sizes.append(cache.nbytes())
    width = {"single": 1, "fenwick": mixer.lam_size, "dla": 4, "fixed": 4}.get(policy)
    if width is None:  # dla_unbounded grows with the boundaries
        assert sizes[-1] > sizes[0]
    else:
        assert cache.state.slots.shape[2] == width and len(set(sizes)) == 1


def test_mamba2_init_and_no_weight_decay():
    torch.manual_seed(0)
    mixer = Mamba2Mixer(D, num_heads=64, head_v_dim=1, head_k_dim=4, policy="dla", capacity=3)
    A, dt = torch.exp(mixer.A_log.detach()), F.softplus(mixer.dt_bias.detach())
    assert float(A.min()) >= 1.0 and float(A.max()) <= 16.0 and float(A.max() - A.min()) > 5.0
    assert float(dt.min()) >= 1e-3 * (1 - 1e-5) and float(dt.max()) <= 0.1 * (1 + 1e-5)
    assert torch.equal(mixer.D.detach(), torch.ones(64))
    assert torch.equal(mixer.lam_scale.detach(), torch.ones(64, 3))
    flagged = {n for n, p in mixer.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert flagged == {"A_log", "dt_bias", "D", "lam_scale"}
    assert mixer.scale == 1.0


def test_gdn_init_and_no_weight_decay():
    torch.manual_seed(0)
    mixer = GatedDeltaNetMixer(D, num_heads=64, head_k_dim=4, head_v_dim=1, policy="fenwick",
                               max_position_embeddings=1000)
    A = torch.exp(mixer.A_log.detach())
    assert float(A.min()) > 0.0 and float(A.max()) <= 16.0
    assert mixer.lam_scale.shape == (64, 11)  # ceil(log2 1000) + 1 levels
    flagged = {n for n, p in mixer.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert flagged == {"A_log", "dt_bias", "lam_scale"}
    assert math.isclose(mixer.scale, 0.5)


def test_single_policy_has_no_lam_parameters():
    names = {n for n, _ in gdn("single").named_parameters()}
    assert not any(n.startswith("lam") for n in names)
    assert {"lam_proj.weight", "lam_scale"} <= {n for n, _ in gdn("dla").named_parameters()}


def test_gdn_keys_are_unit_norm_unless_told_otherwise():
    mixer, x = build("gdn", "single"), inputs()
    with torch.no_grad():
        q, k, *_ = mixer._project(x, None)
    assert torch.allclose(k.norm(dim=-1), torch.ones(k.shape[:-1], dtype=k.dtype))
    assert torch.allclose(q.norm(dim=-1), torch.ones(q.shape[:-1], dtype=q.dtype))
    raw = build("gdn", "single", use_qk_l2norm=False)
    with torch.no_grad():  # same seed, same weights
        q_raw, k_raw, *_ = raw._project(x, None)
    assert torch.allclose(F.normalize(k_raw, dim=-1), k) and torch.allclose(F.normalize(q_raw, dim=-1), q)
    assert float((k_raw.norm(dim=-1) - 1).abs().max()) > 0.1


def test_gdn_with_huge_key_weights_stays_finite_with_l2norm():
    mixer, x = build("gdn", "dla"), inputs()
    with torch.no_grad():
        mixer.k_proj.weight.mul_(1e3)
    assert bool(torch.isfinite(mixer(x)).all())


@pytest.mark.parametrize("name,policy", ALL)
def test_gradients_reach_every_parameter(name, policy):
    mixer, x = build(name, policy), inputs(T=16)
    x.requires_grad_(True)
    mixer(x).pow(2).sum().backward()
    for pname, p in mixer.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, pname
    assert float(x.grad.abs().sum()) > 0


def test_fenwick_refuses_sequences_beyond_its_levels():
    mixer = gdn("fenwick", max_position_embeddings=16).double()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        mixer(inputs(B=1, T=17))
    mixer(inputs(B=1, T=16))
    # packed documents count by the longest document, not the packed row (a trainer's batch flattened)
    mixer(inputs(B=1, T=40), cu_seqlens=torch.tensor([0, 16, 30, 40]))
    with pytest.raises(ValueError, match="reaches 17 tokens"):
        mixer(inputs(B=1, T=40), cu_seqlens=torch.tensor([0, 17, 30, 40]))


def test_attention_refuses_positions_beyond_max_and_counts_only_real_tokens():
    mixer = AttentionMixer(D, num_heads=4, max_position_embeddings=8).double()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        mixer(inputs(B=1, T=9))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1]])  # 8 real tokens fit
    assert mixer(inputs(B=1, T=10), attention_mask=mask).shape == (1, 10, D)
    cache = AttentionLayerCache()
    mixer(inputs(B=1, T=8), cache=cache)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        mixer(inputs(B=1, T=1), cache=cache)
    # packed documents count by the longest document, not the packed row
    assert mixer(inputs(B=1, T=20), cu_seqlens=torch.tensor([0, 8, 12, 20])).shape == (1, 20, D)
    with pytest.raises(ValueError, match="reaches 9 positions"):
        mixer(inputs(B=1, T=20), cu_seqlens=torch.tensor([0, 9, 12, 20]))


@pytest.mark.parametrize("make,kwargs,field", [
    (Mamba2Mixer, dict(num_heads=4, head_v_dim=8, policy="lru"), "policy"),
    (Mamba2Mixer, dict(num_heads=4, head_v_dim=8, capacity=0), "capacity"),
    (Mamba2Mixer, dict(num_heads=4, head_v_dim=8, num_qk_heads=3), "num_qk_heads"),
    (GatedDeltaNetMixer, dict(num_heads=2, tau=-1.0), "tau"),
    (GatedDeltaNetMixer, dict(num_heads=2, score="cosine"), "score"),
    (GatedDeltaNetMixer, dict(num_heads=0), "num_heads"),
    (GatedDeltaNetMixer, dict(num_heads=2, use_qk_l2norm=1), "use_qk_l2norm"),
    (AttentionMixer, dict(num_heads=5), "num_heads"),
    (AttentionMixer, dict(num_heads=4, num_kv_heads=3), "num_kv_heads"),
])
def test_bad_arguments_raise_naming_them(make, kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        make(D, **kwargs)


def test_bad_inputs_raise_naming_them():
    mixer = build("gdn", "dla")
    with pytest.raises(ValueError, match="^hidden:"):
        mixer(torch.randn(2, 5, D + 1, dtype=torch.float64))
    for empty in (mixer, build("attention", None)):  # no token at all
        with pytest.raises(ValueError, match=r"^hidden: .*T >= 1"):
            empty(torch.randn(2, 0, D, dtype=torch.float64))
    with pytest.raises(ValueError, match="^attention_mask:"):
        mixer(inputs(T=5), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="^cu_seqlens:"):
        mixer(inputs(B=2, T=5), cu_seqlens=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="^cache:"):
        mixer(inputs(B=1, T=5), cache=AttentionLayerCache())
