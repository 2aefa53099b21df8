"""The Triton readout plan (``boundary_plan``) == ``boundary_candidates``, on the records of real scans."""

import os

import pytest
import torch

from dla.ops import chunked
from dla.ops.chunked.readout import boundary_candidates
from tests.conftest import make_inputs
from tests.ops import stages

pytest.importorskip("triton")
from dla.ops.triton.readout import boundary_plan  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs a GPU or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _records(T, BT, tau, capacity, policy="dla", H=3, seed=0):
    x = make_inputs(B=1, T=T, H=H, G=1, K=8, V=4, dtype=torch.float64, seed=seed)
    Tp = -(-T // BT) * BT
    pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, Tp - T))  # noqa: E731
    k = pad(x["k"].transpose(1, 2).expand(1, H, T, 8)).reshape(H, Tp, 8)
    u = pad(x["v"].transpose(1, 2)).reshape(H, Tp, 4)
    g = torch.nn.functional.pad(x["g"].transpose(1, 2), (0, Tp - T)).reshape(H, Tp)
    res = stages.scan(chunked, k, u, g, T, BT, policy=policy, tau=tau, capacity=capacity, block_size=3)
    starts, lam_index = res.starts.view(1, H, T, -1), res.lam_index.view(1, H, T, -1)
    xb = starts[..., :-1]  # a strided view, as the readout passes it
    real = (lam_index[..., 1:] >= 0) & (xb >= 0)
    return xb.to(DEVICE), real.to(DEVICE)


@pytest.mark.parametrize("T, BT, tau, capacity", [(70, 16, 0.6, 4), (64, 16, 0.0, 6), (37, 16, 0.3, 3),
                                                  (130, 32, 0.6, 8), (16, 16, 0.6, 2)])
def test_equals_boundary_candidates(T, BT, tau, capacity):
    x, real = _records(T, BT, tau, capacity)
    assert int(real.sum()) > 0
    cand, jidx, off = boundary_plan(x, real, BT)
    c0, j0, o0 = boundary_candidates(x, real, BT)
    assert cand.dtype == torch.int32 and jidx.dtype == torch.int16 and off.dtype == torch.int16
    assert torch.equal(cand.long(), c0)
    assert torch.equal(jidx.long(), j0)
    assert torch.equal(off.long(), o0)


def test_expanded_records():
    """Records broadcast over batch and heads (the fixed policies' schedule) are read as a full tensor."""
    x, real = _records(50, 16, 0.6, 4, H=1)
    xe, re = x.expand(2, 3, *x.shape[2:]), real.expand(2, 3, *real.shape[2:])
    cand, jidx, off = boundary_plan(xe, re, 16)
    c0, j0, o0 = boundary_candidates(xe, re, 16)
    assert torch.equal(cand.long(), c0) and torch.equal(jidx.long(), j0) and torch.equal(off.long(), o0)
