"""The segmentation hook of the recurrent mixers (``capture_segmentation`` / ``capture_segmentations``): what it
records is exactly what the op returns when called directly on the mixer's op inputs, for plain, left-padded,
packed and cached calls, in float64."""

import pytest
import torch

from dla.layers import AttentionMixer, RecurrentLayerCache, capture_segmentations
from dla.ops import Segmentation, chunk_dla
from dla.ops.common.state import UNUSED_START

from test_layers_mixers import RECURRENT, build, inputs, rel

FIELDS = tuple(Segmentation.__dataclass_fields__)


def direct(mixer, hidden, **kw):
    """The op called by hand on the mixer's own projections of ``hidden``: ``(output [B, T, D], Segmentation)``."""
    q, k, v, g, beta, aux, _ = mixer._project(hidden, None, kw.get("cu_seqlens"))
    lam = mixer.compute_lam(hidden)
    o, _, seg = chunk_dla(q, k, v, g, lam, beta, scale=mixer.scale, tau=mixer.tau, capacity=mixer.capacity,
                          policy=mixer.policy, block_size=mixer.block_size, score=mixer.score,
                          chunk_size=mixer.chunk_size, return_segmentation=True, **kw)
    return mixer._output(o, aux), seg


def assert_same(a: Segmentation, b: Segmentation):
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.shape == y.shape and x.dtype == y.dtype, f
        assert torch.equal(x, y), f


@pytest.mark.parametrize("name,policy", RECURRENT)
def test_hook_equals_the_op_called_directly(name, policy):
    mixer, x = build(name, policy, capacity=3), inputs(T=24)
    with torch.no_grad():
        y_plain = mixer(x)
        assert mixer._segmentation_sink is None
        with mixer.capture_segmentation() as records:
            y = mixer(x)
        y_ref, seg_ref = direct(mixer, x)
    assert len(records) == 1 and torch.equal(y, y_plain)  # capturing does not change the output
    assert rel(y, y_ref) <= 1e-12
    assert_same(records[0], seg_ref)
    assert records[0].boundary.shape == (2, 24, mixer.num_heads)
    if policy in ("dla", "fixed"):
        assert bool(records[0].boundary[:, 1:].any())  # a segmentation with something in it
        assert int(records[0].num_slots.max()) <= 3
    mixer(x)
    assert len(records) == 1  # closed context: nothing more recorded


@pytest.mark.parametrize("name,policy", [("gdn", "dla"), ("mamba2", "dla"), ("gdn", "fenwick"), ("mamba2", "single")])
def test_hook_with_left_padding_gives_each_row_alone(name, policy):
    mixer, x = build(name, policy, capacity=3), inputs(B=3, T=14)
    mask = torch.ones(3, 14, dtype=torch.long)
    mask[0, :5] = 0
    mask[2, :] = 0  # a row of padding only
    with torch.no_grad(), mixer.capture_segmentation() as records:
        mixer(x, attention_mask=mask)
    (seg,) = records
    assert seg.boundary.shape == (3, 14, mixer.num_heads)
    if policy == "single":  # padded rows run as they are: one slot opened at position 0
        assert bool((seg.num_slots == 1).all()) and bool(seg.boundary[:, 0].all())
        assert not bool(seg.boundary[:, 1:].any())
        return
    for b, pad in ((0, 5), (1, 0)):
        with torch.no_grad():
            _, alone = direct(mixer, x[b:b + 1, pad:])
        for f in FIELDS:  # the score in another chunk alignment: equal to rounding
            got, want = getattr(seg, f)[b:b + 1, pad:], getattr(alone, f)
            assert torch.allclose(got, want, rtol=1e-10, atol=1e-12) if f == "score" else torch.equal(got, want), f
    pad = ~mask.bool()
    assert not bool(seg.boundary[pad].any()) and bool((seg.score[pad] == 0).all())
    assert bool((seg.merged[pad] == -1).all()) and bool((seg.num_slots[pad] == 0).all())
    assert bool((seg.starts[pad] == UNUSED_START).all()) and bool((seg.lam_index[pad] == -1).all())


@pytest.mark.parametrize("name", ["gdn", "mamba2"])
def test_hook_packed_documents_and_cached_calls(name):
    mixer, x = build(name, "dla", capacity=3), inputs(B=1, T=20)
    cu = torch.tensor([0, 7, 20])
    with torch.no_grad(), mixer.capture_segmentation() as records:
        mixer(x, cu_seqlens=cu)
        _, ref = direct(mixer, x, cu_seqlens=cu)
        assert_same(records[0], ref)
        cache = RecurrentLayerCache()
        mixer(x[:, :9], cache=cache)  # prefill: recorded
        for t in range(9, 12):  # decode steps: the step op has no segmentation; nothing recorded
            mixer(x[:, t:t + 1], cache=cache)
    assert len(records) == 2 and records[1].boundary.shape[1] == 9
    _, prefix = direct(mixer, x[:, :9])
    assert_same(records[1], prefix)


def test_hook_errors():
    mixer = build("gdn", "dla")
    with mixer.capture_segmentation():
        with pytest.raises(ValueError, match="already capturing"):
            with mixer.capture_segmentation():
                pass
    assert mixer._segmentation_sink is None
    with pytest.raises(ValueError, match="model: .* has no RecurrentMixer"):
        with capture_segmentations(torch.nn.Sequential(AttentionMixer(32, num_heads=4))):
            pass


def test_capture_segmentations_on_a_model():
    from dla.models import DLAConfig, DLAForCausalLM

    torch.manual_seed(0)
    config = DLAConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, mixer="gdn", num_heads=2, head_k_dim=8,
                       capacity=4, tau=0.3, num_attention_heads=4, attention_layers=[1], max_position_embeddings=64)
    model = DLAForCausalLM(config).double().eval()
    ids = torch.randint(0, 64, (2, 30))
    inputs_seen = {}
    hooks = [model.model.layers[i].mixer.register_forward_hook(
        lambda m, args, kwargs, out, i=i: inputs_seen.__setitem__(i, args[0] if args else kwargs["hidden"]),
        with_kwargs=True) for i in (0, 2)]
    with torch.no_grad(), capture_segmentations(model) as segs:
        model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    assert sorted(segs) == ["model.layers.0.mixer", "model.layers.2.mixer"]  # the attention layer has none
    for i in (0, 2):
        with torch.no_grad():
            _, ref = direct(model.model.layers[i].mixer, inputs_seen[i])
        (seg,) = segs[f"model.layers.{i}.mixer"]
        assert_same(seg, ref)


@pytest.mark.parametrize("name", ["gdn", "mamba2"])
def test_capturing_leaves_training_unchanged(name):
    """Under autograd the capture changes neither the output nor the gradients; the records hold no graph."""
    mixer, x = build(name, "dla"), inputs(T=20).requires_grad_()
    y0 = mixer(x)
    g0 = torch.autograd.grad(y0.square().sum(), x)[0]
    with mixer.capture_segmentation() as records:
        y = mixer(x)
    g = torch.autograd.grad(y.square().sum(), x)[0]
    assert torch.equal(y, y0) and torch.equal(g, g0)
    assert not any(getattr(records[0], f).requires_grad for f in FIELDS)
    assert int(records[0].boundary.sum()) > 2
