"""Slot form == masked form == chunked form: outputs, final states, segmentations and gradients (float64)."""

import pytest
import torch

from dla.ops import DLAState, chunk_dla, masked_dla, naive_dla, num_levels
from tests.conftest import make_inputs, rel_err

POLICIES = [("dla", 4), ("fixed", 3), ("dla_unbounded", 4), ("fenwick", None), ("single", 1)]
SEG_FIELDS = ("boundary", "num_slots", "merged", "starts", "lam_index")


def _kwargs(policy, capacity, T, tau=0.3, score="drift"):
    R = num_levels(T) if policy == "fenwick" else capacity
    return R, dict(policy=policy, capacity=R, block_size=5, tau=tau, score=score)


def _same_segmentation(a, b):
    return all(bool((getattr(a, f) == getattr(b, f)).all()) for f in SEG_FIELDS)


def _state_err(a: DLAState, b: DLAState):
    assert bool((a.num_slots == b.num_slots).all())
    assert bool((a.counts == b.counts).all())
    return max(rel_err(a.slots, b.slots), rel_err(a.info, b.info), rel_err(a.open_norm, b.open_norm))


@pytest.mark.parametrize("T", [1, 63, 64, 65, 300])
@pytest.mark.parametrize("policy,capacity", POLICIES)
@pytest.mark.parametrize("gdn", [False, True])
def test_slot_masked_chunked_agree(T, policy, capacity, gdn, record):
    B, H, G = (1, 2, 1) if T == 300 else (2, 4, 2)
    R, kw = _kwargs(policy, capacity, T)
    x = make_inputs(B=B, T=T, H=H, G=G, K=4, V=3, R=R, gdn=gdn, seed=T)
    o, st, seg = naive_dla(**x, **kw, output_final_state=True, return_segmentation=True)
    om, stm = masked_dla(**x, **kw, segmentation=seg, output_final_state=policy != "dla_unbounded")
    oc, stc, segc = chunk_dla(**x, **kw, output_final_state=True, return_segmentation=True)
    assert _same_segmentation(seg, segc)
    assert record("segmentation score, slot vs chunked", rel_err(segc.score, seg.score)) < 1e-12
    assert record("output, slot vs masked", rel_err(om, o)) < 1e-12
    assert record("output, slot vs chunked", rel_err(oc, o)) < 1e-12
    assert record("final state, slot vs chunked", _state_err(stc, st)) < 1e-12
    if stm is not None:
        assert record("final state, slot vs masked", _state_err(stm, st)) < 1e-12


@pytest.mark.parametrize("score", ["drift", "write"])
@pytest.mark.parametrize("chunk_size", [1, 7, 16])
def test_chunk_sizes_and_scores(score, chunk_size, record):
    x = make_inputs(B=2, T=45, H=2, G=1, K=3, V=5, R=5, gdn=True, seed=7)
    kw = dict(policy="dla", capacity=5, tau=0.25, score=score)
    o, st, seg = naive_dla(**x, **kw, output_final_state=True, return_segmentation=True)
    oc, stc, segc = chunk_dla(**x, **kw, chunk_size=chunk_size, output_final_state=True, return_segmentation=True)
    assert _same_segmentation(seg, segc)
    assert bool(seg.boundary.sum() > 2) and bool((seg.merged >= 0).any())  # the case exercises merges
    assert record("output, slot vs chunked (chunk sizes, scores)", rel_err(oc, o)) < 1e-12
    assert _state_err(stc, st) < 1e-12


@pytest.mark.parametrize("policy,capacity", POLICIES)
@pytest.mark.parametrize("gdn", [False, True])
def test_gradients_masked_vs_chunked(policy, capacity, gdn, record):
    T = 70
    R, kw = _kwargs(policy, capacity, T)
    x = make_inputs(B=2, T=T, H=4, G=2, K=4, V=3, R=R, gdn=gdn, seed=11, requires_grad=True)
    with torch.no_grad():
        seg = naive_dla(**x, **kw, return_segmentation=True)[2]
    names = [n for n, t in x.items() if t is not None]
    do = torch.randn(2, T, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    om, _ = masked_dla(**x, **kw, segmentation=seg)
    gm = torch.autograd.grad((om * do).sum(), [x[n] for n in names])
    oc, _ = chunk_dla(**x, **kw, chunk_size=16)
    gc = torch.autograd.grad((oc * do).sum(), [x[n] for n in names])
    for n, a, b in zip(names, gc, gm):
        assert record(f"gradient d{n}, masked vs chunked", rel_err(a, b)) < 1e-11, n


@pytest.mark.parametrize("gdn", [False, True])
def test_chunked_gradcheck(gdn):
    x = make_inputs(B=1, T=9, H=2, G=1, K=3, V=2, R=3, gdn=gdn, seed=5, requires_grad=True)
    names = [n for n, t in x.items() if t is not None]

    def fn(*args):
        kw = dict(zip(names, args))
        return chunk_dla(**kw, policy="fixed", capacity=3, block_size=2, chunk_size=4)[0]

    assert torch.autograd.gradcheck(fn, tuple(x[n] for n in names), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("policy,capacity", [p for p in POLICIES if p[0] != "fenwick"])
@pytest.mark.parametrize("gdn", [False, True])
@pytest.mark.parametrize("split", [1, 20, 64])
def test_initial_state_continues_one_pass(policy, capacity, gdn, split, record):
    T = 90
    R, kw = _kwargs(policy, capacity, T)
    x = make_inputs(B=2, T=T, H=2, G=2, K=4, V=3, R=R, gdn=gdn, seed=13)
    head = {n: (t[:, :split] if t is not None else None) for n, t in x.items()}
    tail = {n: (t[:, split:] if t is not None else None) for n, t in x.items()}
    o_full, st_full = naive_dla(**x, **kw, output_final_state=True)
    for impl in (naive_dla, chunk_dla):
        o1, st1 = impl(**head, **kw, output_final_state=True)
        o2, st2 = impl(**tail, **kw, initial_state=st1, output_final_state=True)
        err = rel_err(torch.cat([o1, o2], 1), o_full)
        assert record(f"initial_state continuation, {impl.__name__}", err) < 1e-12
        assert _state_err(st2, st_full) < 1e-12


def test_fenwick_continuation():
    T, split = 40, 13
    x = make_inputs(B=1, T=T, H=2, G=2, K=3, V=3, R=num_levels(T), seed=17)
    kw = dict(policy="fenwick")
    o_full, _ = naive_dla(**x, **kw)
    head = {n: (t[:, :split] if t is not None else None) for n, t in x.items()}
    tail = {n: (t[:, split:] if t is not None else None) for n, t in x.items()}
    for impl in (naive_dla, chunk_dla):
        o1, st1 = impl(**head, **kw, output_final_state=True)
        o2, _ = impl(**tail, **kw, initial_state=st1)
        assert rel_err(torch.cat([o1, o2], 1), o_full) < 1e-12


def test_packed_sequences_equal_separate_calls(record):
    x = make_inputs(B=1, T=80, H=2, G=1, K=4, V=3, R=4, gdn=True, seed=19)
    cu = torch.tensor([0, 5, 64, 65, 80])
    kw = dict(policy="dla", capacity=4, tau=0.3)
    o, st = chunk_dla(**x, **kw, cu_seqlens=cu, output_final_state=True)
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        piece = {k: (t[:, a:b] if t is not None else None) for k, t in x.items()}
        on, sn = naive_dla(**piece, **kw, output_final_state=True)
        assert record("packed (cu_seqlens) vs separate", rel_err(o[:, a:b], on)) < 1e-12
        assert rel_err(st.slots[n, :, :sn.slots.shape[2]], sn.slots[0]) < 1e-12


@pytest.mark.parametrize("gdn", [False, True])
def test_float32_chunked_close_to_float64_slot(gdn, record):
    x = make_inputs(B=1, T=200, H=2, G=2, K=8, V=8, R=8, gdn=gdn, seed=23)
    kw = dict(policy="dla", capacity=8, tau=0.3)
    o, _, seg = naive_dla(**x, **kw, return_segmentation=True)
    x32 = {n: (t.float() if t is not None else None) for n, t in x.items()}
    o32, _, seg32 = chunk_dla(**x32, **kw, return_segmentation=True)
    agree = (seg32.boundary == seg.boundary).float().mean().item()
    assert agree > 0.99
    if agree == 1.0:
        assert record("output, float32 chunked vs float64 slot", rel_err(o32, o)) < 1e-5


@pytest.mark.parametrize("policy,capacity", [("dla", 3), ("fixed", 2), ("fenwick", None), ("dla_unbounded", 3)])
def test_packed_rows_keep_their_own_final_states(policy, capacity):
    """Packed sequences run as one right-padded batch: short rows must not absorb the padding."""
    lens = [3, 40, 1, 17]
    T = sum(lens)
    R = num_levels(T) if policy == "fenwick" else capacity
    x = make_inputs(B=1, T=T, H=2, G=2, K=3, V=4, R=R, gdn=True, seed=29)
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)))
    kw = dict(policy=policy, capacity=R, tau=0.3, block_size=4)
    o, st, seg = chunk_dla(**x, **kw, cu_seqlens=cu, output_final_state=True, return_segmentation=True)
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        piece = {k: (t[:, a:b] if t is not None else None) for k, t in x.items()}
        on, sn, segn = naive_dla(**piece, **kw, output_final_state=True, return_segmentation=True)
        assert rel_err(o[:, a:b], on) < 1e-12
        assert bool((st.counts[n, :, :sn.counts.shape[2]] == sn.counts[0]).all())
        assert bool((st.num_slots[n] == sn.num_slots[0]).all())
        assert rel_err(st.open_norm[n], sn.open_norm[0]) < 1e-12
        assert bool((seg.boundary[:, a:b] == segn.boundary).all())
