"""The fla-interface layers (DLAGatedDeltaNet, DLAMamba2): built from fla 0.6's constructor arguments, equal to our
mixers with the same weights, decoding through fla's Cache equal to one pass, fla layers converted with their
weights, and inside fla's Gated DeltaNet model (prefill + decode through fla's Cache equal to the full forward,
generate, backward). On a GPU also: equal to fla's own layers (policy single), and inside fla's models as they are
configured by default (fused Triton norms, MLP and loss)."""

import pytest
import torch

fla_cache = pytest.importorskip("fla.models.utils")  # flash-linear-attention (the test extra)

from dla.layers import GatedDeltaNetMixer, Mamba2Mixer  # noqa: E402
from dla.layers.fla import DLAGatedDeltaNet, DLAMamba2  # noqa: E402

Cache = fla_cache.Cache
TOL64 = 1e-12
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="fla's kernels and models need a GPU")

# the keyword arguments fla 0.6's GatedDeltaNetBlock / Mamba2Block pass, plus DLA's policy
GDN_KWARGS = dict(hidden_size=32, expand_v=2, head_dim=8, num_heads=2, num_v_heads=4, mode="chunk", use_gate=True,
                  use_short_conv=True, allow_neg_eigval=False, conv_size=4, layer_idx=0, norm_eps=1e-5,
                  output_gate_activation="swish")
MAMBA2_KWARGS = dict(num_heads=8, head_dim=8, hidden_size=32, state_size=8, expand=2, n_groups=2, conv_kernel=4,
                     use_conv_bias=True, hidden_act="silu", rmsnorm=True, norm_eps=1e-5, chunk_size=16,
                     layer_idx=0, backend="cuda")
DLA = dict(policy="dla", capacity=4, tau=0.3, max_position_embeddings=64)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().double().norm() / b.detach().double().norm())


def build(which: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    if which == "gdn":
        return DLAGatedDeltaNet(**{**GDN_KWARGS, **DLA, **kw}).double()
    return DLAMamba2(**{**MAMBA2_KWARGS, **DLA, **kw}).double()


def inputs(B=2, T=14, seed=1):
    return torch.randn(B, T, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_fla_arguments_give_our_mixers_shapes():
    gdn = build("gdn")
    assert isinstance(gdn, GatedDeltaNetMixer) and (gdn.num_qk_heads, gdn.num_heads) == (2, 4)
    assert (gdn.head_k_dim, gdn.head_v_dim, gdn.capacity, gdn.layer_idx) == (8, 16, 4, 0)
    mamba = build("mamba2")
    assert isinstance(mamba, Mamba2Mixer) and (mamba.num_heads, mamba.head_v_dim, mamba.head_k_dim) == (8, 8, 8)
    assert mamba.num_qk_heads == 2 and mamba.chunk_size == 16
    assert build("mamba2", num_heads=None).num_heads == 8  # fla infers it from expand * hidden_size / head_dim


@pytest.mark.parametrize("which", ["gdn", "mamba2"])
def test_output_equals_our_mixer_with_the_same_weights(which):
    layer, x = build(which), inputs()
    ours = (GatedDeltaNetMixer(32, num_heads=4, head_k_dim=8, head_v_dim=16, num_qk_heads=2, **DLA) if which == "gdn"
            else Mamba2Mixer(32, num_heads=8, head_v_dim=8, head_k_dim=8, num_qk_heads=2, chunk_size=16, **DLA))
    ours = ours.double()
    ours.load_state_dict(layer.state_dict())
    o, attentions, cache = layer(x, output_attentions=True)
    assert attentions is None and cache is None
    assert rel(o, ours(x)) <= TOL64
    mask = torch.tensor([[0, 0, 0] + [1] * 11, [1] * 14])
    assert rel(layer(x, attention_mask=mask)[0], ours(x, attention_mask=mask)) <= TOL64


@pytest.mark.parametrize("which", ["gdn", "mamba2"])
@pytest.mark.parametrize("prefill", [1, 6])
def test_decode_through_fla_cache_equals_one_pass(which, prefill):
    layer, x = build(which), inputs()
    full = layer(x)[0]
    cache = Cache()
    o, _, returned = layer(x[:, :prefill], past_key_values=cache, use_cache=True)
    assert returned is cache and cache.get_seq_length(0) == prefill
    outs = [o]
    for t in range(prefill, x.shape[1]):
        outs.append(layer(x[:, t:t + 1], past_key_values=cache, use_cache=True)[0])
    assert rel(torch.cat(outs, 1), full) <= TOL64
    assert cache.get_seq_length(0) == x.shape[1]
    assert cache[0]["recurrent_state"].slots.shape[2] == 4  # the DLA state, capacity slots
    # fla's Cache reorders the DLA state as it reorders its own (beam search)
    before = cache[0]["recurrent_state"].slots.clone()
    cache.reorder_cache(torch.tensor([1, 0]))
    assert torch.equal(cache[0]["recurrent_state"].slots, before.flip(0))


def test_cache_of_a_model_keeps_each_layer_apart():
    first, second, x = build("gdn", layer_idx=0), build("mamba2", layer_idx=1), inputs()
    full = second(first(x)[0])[0]
    cache = Cache()
    h = second(first(x[:, :5], past_key_values=cache, use_cache=True)[0], past_key_values=cache, use_cache=True)[0]
    outs = [h]
    for t in range(5, x.shape[1]):
        h = first(x[:, t:t + 1], past_key_values=cache, use_cache=True)[0]
        outs.append(second(h, past_key_values=cache, use_cache=True)[0])
    assert len(cache) == 2 and rel(torch.cat(outs, 1), full) <= TOL64


def test_packed_documents_through_cu_seqlens():
    layer, x = build("gdn"), inputs(B=1, T=14)
    cu = torch.tensor([0, 5, 14])
    packed = layer(x, cu_seqlens=cu, position_ids=torch.tensor([[*range(5), *range(9)]]))[0]
    assert rel(packed, torch.cat([layer(x[:, :5])[0], layer(x[:, 5:])[0]], 1)) <= TOL64


@pytest.mark.parametrize("which, kwargs, field", [
    ("gdn", dict(use_gate=False), "use_gate"),
    ("gdn", dict(allow_neg_eigval=True), "allow_neg_eigval"),
    ("gdn", dict(use_short_conv=False), "use_short_conv"),
    ("gdn", dict(output_gate_activation="sigmoid"), "output_gate_activation"),
    ("gdn", dict(expand_v=1.3), "expand_v"),
    ("gdn", dict(num_v_heads=3), "num_qk_heads"),
    ("mamba2", dict(num_heads=5), "num_heads"),
    ("mamba2", dict(rmsnorm=False), "rmsnorm"),
    ("mamba2", dict(D_has_hdim=True), "D_has_hdim"),
    ("mamba2", dict(dt_limit=(0.0, 1.0)), "dt_limit"),
    ("mamba2", dict(capacity=0), "capacity"),
])
def test_unsupported_fla_options_raise_naming_them(which, kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        build(which, **kwargs)


def test_unknown_arguments_raise():
    with pytest.raises(TypeError):
        DLAGatedDeltaNet(**GDN_KWARGS, capcity=4)
    with pytest.raises(ValueError, match="^foo: unexpected argument"):
        build("gdn")(inputs(), foo=1)
    with pytest.raises(ValueError, match="^layer_idx:"):
        build("gdn", layer_idx=None)(inputs(), past_key_values=Cache(), use_cache=True)


def fla_layer(which: str, seed: int = 0, **kw):
    from fla.layers import GatedDeltaNet, Mamba2

    torch.manual_seed(seed)
    if which == "gdn":
        return GatedDeltaNet(**{**GDN_KWARGS, **kw})
    return Mamba2(**{**MAMBA2_KWARGS, "backend": "triton", **kw})


@pytest.mark.parametrize("which", ["gdn", "mamba2"])
def test_from_fla_takes_the_fla_layers_weights(which):
    theirs = fla_layer(which)
    with torch.no_grad():  # distinct values everywhere, so a misplaced tensor shows
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p))
    ours = (DLAGatedDeltaNet if which == "gdn" else DLAMamba2).from_fla(theirs, **DLA)
    mine = dict(ours.named_parameters())
    if which == "gdn":
        convs = [theirs.q_conv1d.weight, theirs.k_conv1d.weight, theirs.v_conv1d.weight]
        assert torch.equal(mine["conv.weight"], torch.cat([w.reshape(w.shape[0], -1) for w in convs]))
        assert torch.equal(mine["gate_proj.weight"], theirs.g_proj.weight)
        assert torch.equal(mine["norm.weight"], theirs.o_norm.weight)
        assert (ours.num_heads, ours.num_qk_heads, ours.head_v_dim) == (4, 2, 16)
    else:
        assert torch.equal(mine["conv.weight"], theirs.conv1d.weight[:, 0])
        assert torch.equal(mine["conv.bias"], theirs.conv1d.bias) and torch.equal(mine["D"], theirs.D)
        assert torch.equal(mine["in_proj.weight"], theirs.in_proj.weight)
    for name in ("A_log", "dt_bias"):
        assert torch.equal(mine[name], getattr(theirs, name))
    assert torch.equal(mine["lam_scale"], torch.ones_like(mine["lam_scale"]))  # DLA's own, at init


def test_inside_an_fla_gdn_model_decoding_and_generate_equal_the_full_forward(monkeypatch):
    """fla's own GatedDeltaNet model with its mixers replaced, on the CPU: with fuse_* off its norms are PyTorch's;
    its MLP's SwiGLU activation is a Triton kernel even then, so it is swapped for the same formula in PyTorch."""
    import fla.modules.mlp
    from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM

    monkeypatch.setattr(fla.modules.mlp, "swiglu", lambda gate, y: torch.nn.functional.silu(gate) * y)
    torch.manual_seed(0)
    model = GatedDeltaNetForCausalLM(GatedDeltaNetConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_heads=2, head_dim=8, expand_v=2, fuse_norm=False,
        fuse_swiglu=False, fuse_cross_entropy=False, fuse_linear_cross_entropy=False))
    for block in model.model.layers:
        block.attn = DLAGatedDeltaNet.from_fla(block.attn, **DLA)
    model = model.double().eval()
    ids = torch.randint(1, 64, (2, 14), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :6], use_cache=True)
        cache, logits = out.past_key_values, [out.logits]
        for t in range(6, 14):
            out = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits.append(out.logits)
        assert isinstance(cache, Cache) and rel(torch.cat(logits, 1), full) <= TOL64
        generated = model.generate(ids[:, :5], attention_mask=torch.ones(2, 5, dtype=torch.long), max_new_tokens=4,
                                   do_sample=False)
        greedy = ids[:, :5]
        for _ in range(4):
            greedy = torch.cat([greedy, model(greedy).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(generated, greedy)
    model.train()
    model(ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.model.layers[0].attn.parameters())


# fla 0.6's Mamba2 without mamba_ssm (its torch_forward) gives head h the B/C group h % n_groups, while mamba_ssm's
# kernels, fla's own decode step and ours give it h // (num_heads / n_groups): the layers agree at n_groups = 1 only
ONE_GROUP = {"mamba2": {"n_groups": 1}, "gdn": {}}


def test_single_policy_equals_the_fla_mamba2_layer_on_cpu():
    """fla's Mamba2 prefill (its PyTorch path; the gated norm and the activation, Triton kernels in fla, replaced by
    the same math in PyTorch) equals ``DLAMamba2(policy="single")`` with its weights."""
    theirs = fla_layer("mamba2", **ONE_GROUP["mamba2"])
    ours = DLAMamba2.from_fla(theirs, policy="single")
    theirs.norm, theirs.act = ours.norm, torch.nn.SiLU()
    theirs, ours = theirs.double(), ours.double()
    x = inputs(T=50)
    with torch.no_grad():
        assert rel(ours(x)[0], theirs(x)[0]) <= 1e-6  # fla computes A = -exp(A_log) in float32


@CUDA
@pytest.mark.parametrize("which", ["gdn", "mamba2"])
def test_cuda_single_policy_equals_the_fla_layer(which):
    theirs = fla_layer(which, **ONE_GROUP[which]).cuda()
    ours = (DLAGatedDeltaNet if which == "gdn" else DLAMamba2).from_fla(theirs, policy="single")
    x = torch.randn(2, 200, 32, device="cuda")
    with torch.no_grad():
        assert rel(ours(x)[0], theirs(x)[0]) <= 5e-3


def fla_model(which: str):
    from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM, Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(0)
    if which == "gdn":
        model = GatedDeltaNetForCausalLM(GatedDeltaNetConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                                                             num_heads=2, head_dim=16, expand_v=2))
        for block in model.model.layers:
            block.attn = DLAGatedDeltaNet.from_fla(block.attn, **DLA)
    else:
        model = Mamba2ForCausalLM(Mamba2Config(vocab_size=128, hidden_size=64, num_hidden_layers=2, head_dim=16,
                                               state_size=16, expand=2, n_groups=1))
        for block in model.backbone.layers:
            block.mixer = DLAMamba2.from_fla(block.mixer, **DLA)
    return model.cuda().eval()


@CUDA
@pytest.mark.parametrize("which", ["gdn", "mamba2"])
def test_cuda_inside_an_fla_model_decoding_equals_the_full_forward(which):
    model = fla_model(which)
    ids = torch.randint(1, 128, (2, 40), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :24], use_cache=True)
        cache, logits = out.past_key_values, [out.logits]
        assert isinstance(cache, Cache)
        for t in range(24, 40):
            out = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits.append(out.logits)
        assert rel(torch.cat(logits, 1), full) <= 1e-3
        generated = model.generate(ids[:, :24], max_new_tokens=8, do_sample=False)
        greedy = ids[:, :24]
        for _ in range(8):
            greedy = torch.cat([greedy, model(greedy).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(generated, greedy)
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)
