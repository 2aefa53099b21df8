"""Packed sequences (``cu_seqlens``) run as right-padded rows grouped by length: a short sequence is not padded to
the longest one. Same outputs, gradients and segmentation as separate calls, in packed order."""

import pytest
import torch

import dla.ops.chunk as chunk_mod
from dla.ops import chunk_dla, naive_dla, num_levels
from dla.ops.utils.cu_seqlens import length_buckets
from tests.conftest import make_inputs, rel_err

CU = [0, 5, 135, 152, 452, 516, 517]  # lengths 5, 130, 17, 300, 64, 1


def test_buckets_round_chunk_counts_up_to_powers_of_two():
    assert length_buckets([5, 130, 17, 300, 64, 1], 16) == [[0, 5], [2], [4], [1], [3]]
    assert length_buckets([64, 64, 63], 64) == [[0, 1, 2]]
    for lens in ([1], [1000, 1, 999, 2], list(range(1, 200, 7))):
        groups = length_buckets(lens, 16)
        assert sorted(n for grp in groups for n in grp) == list(range(len(lens)))
        for grp in groups:  # padding at most doubles a row's chunks
            longest = max(-(-lens[n] // 16) for n in grp)
            assert all(longest <= 2 * -(-lens[n] // 16) for n in grp)


@pytest.mark.parametrize("gdn", [False, True])
@pytest.mark.parametrize("policy,capacity", [("dla", 4), ("fenwick", 10), ("single", 1)])
def test_bucketed_packed_equals_separate_calls(gdn, policy, capacity, monkeypatch, record):
    T = CU[-1]
    x = make_inputs(B=1, T=T, H=2, G=1, K=4, V=3, R=capacity, gdn=gdn, seed=5, requires_grad=True)
    kw = dict(policy=policy, capacity=capacity, tau=0.3, chunk_size=16)
    padded = []
    run = chunk_mod._Run.__call__
    monkeypatch.setattr(chunk_mod._Run, "__call__", lambda self, *a: (padded.append(a[0].shape[:2]), run(self, *a))[1])
    o, _, seg = chunk_dla(**x, **kw, cu_seqlens=torch.tensor(CU), return_segmentation=True)
    # five batches, 521 padded tokens (the 1-token row waits for the 5-token one); one batch would pad 6 rows to 300
    assert len(padded) == 5 and sum(n * t for n, t in padded) == T + 4
    leaves = [t for t in x.values() if t is not None]
    w = torch.randn_like(o)
    grads = torch.autograd.grad((o * w).sum(), leaves)
    ref_o, ref_b = [], []
    for a, b in zip(CU[:-1], CU[1:]):
        piece = {n: (t[:, a:b] if t is not None else None) for n, t in x.items()}
        if policy == "fenwick":  # naive_dla wants exactly the levels of the piece's length
            piece["lam"] = piece["lam"][..., :max(num_levels(b - a), 1)]
        on, _, sn = naive_dla(**piece, policy=policy, capacity=capacity, tau=0.3, return_segmentation=True)
        ref_o.append(on)
        ref_b.append(sn.boundary)
    ref = torch.cat(ref_o, 1)
    assert record("bucketed packed vs separate, output", rel_err(o, ref)) < 1e-12
    assert torch.equal(seg.boundary, torch.cat(ref_b, 1))
    single_call = chunk_dla(**x, **kw, cu_seqlens=torch.tensor(CU), return_segmentation=True,
                            output_final_state=True)[2]  # a final state keeps one padded batch
    for f in ("starts", "lam_index", "num_slots", "merged"):
        assert torch.equal(getattr(seg, f), getattr(single_call, f)), f
    ref_grads = torch.autograd.grad((ref * w).sum(), leaves)
    for n, a, b in zip([n for n in x if x[n] is not None], grads, ref_grads):
        assert record(f"bucketed packed vs separate, d{n}", rel_err(a, b)) < 1e-10, n
