"""The data-independent policies (``single``, ``fenwick``) skip the segmentation scan when nobody asks for scores
or a state: their closed-form live-slot records equal the scan's, and so do the op's outputs and gradients."""

import pytest
import torch

from dla.ops import Policy, chunk_dla, chunked, num_levels
from dla.ops.common.record import fixed_schedule
from tests.conftest import make_inputs
from tests.ops import stages


@pytest.mark.parametrize("policy", ["single", "fenwick"])
@pytest.mark.parametrize("T", [1, 2, 5, 64, 65, 300, 1100])
@pytest.mark.parametrize("spare", [0, 2])
def test_schedule_equals_the_scan(policy, T, spare):
    # the levels a fenwick cache of T tokens needs (single: 1), plus spare lam entries, which stay unused
    R = (num_levels(T) if policy == "fenwick" else 1) + spare
    N, K, V, BT = 3, 4, 5, 16
    Tp = -(-T // BT) * BT
    gen = torch.Generator().manual_seed(T)
    k, u = torch.randn(N, Tp, K, generator=gen), torch.randn(N, Tp, V, generator=gen)
    g = -torch.rand(N, Tp, generator=gen)
    scan = stages.scan(chunked, k, u, g, T, BT, policy=policy, tau=0.5, capacity=R, block_size=8, R=R)
    starts, lam_index = fixed_schedule(Policy(policy), T, R)
    assert torch.equal(scan.starts, starts.expand(N, T, R))
    assert torch.equal(scan.lam_index, lam_index.expand(N, T, R))


@pytest.mark.parametrize("policy", ["single", "fenwick"])
@pytest.mark.parametrize("gdn", [False, True])
def test_op_without_scan_equals_op_with_scan(policy, gdn):
    T = 150
    R = num_levels(T) if policy == "fenwick" else 1
    x = make_inputs(B=2, T=T, H=4, G=2, K=8, V=6, R=R, gdn=gdn, seed=4, requires_grad=True)
    kw = dict(policy=policy, capacity=R, chunk_size=32)
    leaves = [t for t in x.values() if t is not None]
    o_fast = chunk_dla(**x, **kw)[0]  # closed-form records
    o_scan, _, seg = chunk_dla(**x, **kw, return_segmentation=True)  # the scan (a segmentation was asked for)
    assert seg.boundary.any()
    assert torch.equal(o_fast, o_scan)
    w = torch.randn_like(o_fast)
    for a, b in zip(torch.autograd.grad((o_fast * w).sum(), leaves), torch.autograd.grad((o_scan * w).sum(), leaves)):
        assert torch.equal(a, b)


def test_packed_sequences_without_scan():
    # cu_seqlens runs as right-padded rows; the fenwick records restart in every sequence
    x = make_inputs(B=1, T=90, H=2, G=1, K=4, V=5, R=num_levels(90), seed=2)
    cu = torch.tensor([0, 17, 90])
    o = chunk_dla(**x, policy="fenwick", cu_seqlens=cu)[0]
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        part = {n: (t[:, a:b] if t is not None else None) for n, t in x.items()}
        torch.testing.assert_close(o[:, a:b], chunk_dla(**part, policy="fenwick")[0], rtol=1e-10, atol=1e-12)


def test_other_policies_are_refused():
    with pytest.raises(ValueError, match="policy: fixed_schedule covers 'single' and 'fenwick', got 'dla'"):
        fixed_schedule(Policy("dla"), 10, 4)
