"""The Triton ``lam`` terms (``LamTerms``) == the PyTorch form (``_lam_terms_torch``): values bit for bit, gradients
to float32 rounding, for the records of every policy."""

import os

import pytest
import torch

from dla.ops.dla.chunk_torch import _lam_terms_torch
from dla.ops.common.state import num_levels
from dla.ops.dla.scan import dla_scan, fixed_schedule
from tests.conftest import make_inputs

pytest.importorskip("triton")
from dla.ops.dla.lam_triton import LamTerms  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs a GPU or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _record(policy, T, R, H=2, tau=0.6, capacity=4):
    x = make_inputs(B=1, T=T, H=H, G=1, K=8, V=4, dtype=torch.float64, seed=1)
    Tp = -(-T // 16) * 16
    k = torch.nn.functional.pad(x["k"].transpose(1, 2).expand(1, H, T, 8), (0, 0, 0, Tp - T)).reshape(H, Tp, 8)
    u = torch.nn.functional.pad(x["v"].transpose(1, 2), (0, 0, 0, Tp - T)).reshape(H, Tp, 4)
    g = torch.nn.functional.pad(x["g"].transpose(1, 2), (0, Tp - T)).reshape(H, Tp)
    res = dla_scan(k, u, g, T, chunk_size=16, policy=policy, tau=tau, capacity=capacity, block_size=3,
                   score="drift", R=R, initial_state=None)
    return res.lam_index.view(1, H, T, R)


def _compare(lam, lam_index):
    a = lam.detach().clone().requires_grad_()
    b = lam.detach().clone().requires_grad_()
    lam0, dlam = LamTerms.apply(a, lam_index)
    r0, rd = _lam_terms_torch(b.float().transpose(1, 2), lam_index)
    assert lam0.dtype == dlam.dtype == torch.float32
    assert torch.equal(lam0, r0) and torch.equal(dlam, rd)
    w0, wd = torch.randn_like(lam0), torch.randn_like(dlam)
    ((lam0 * w0).sum() + (dlam * wd).sum()).backward()
    ((r0 * w0).sum() + (rd * wd).sum()).backward()
    assert a.grad.dtype == lam.dtype
    tol = 1e-6 if lam.dtype == torch.float32 else 2 ** -7  # one bf16 rounding of a sum taken in another order
    assert torch.allclose(a.grad.float(), b.grad.float(), rtol=tol, atol=tol)
    return a.grad


@pytest.mark.parametrize("policy, R, RL", [("dla", 4, 4), ("dla_unbounded", 4, 4), ("fenwick", 7, 9),
                                           ("single", 1, 1), ("fixed", 4, 4)])
def test_matches_torch(policy, R, RL):
    T = 70
    lam_index = _record(policy, T, R).to(DEVICE)
    lam = (torch.rand(1, T, 2, RL, dtype=torch.float64) + 0.5).float().to(DEVICE)
    _compare(lam, lam_index)


def test_ranks_sharing_an_entry():
    """Several live ranks reading one ``lam`` entry (``dla_unbounded`` past ``C - 1``): the gradient sums them."""
    rows = torch.tensor([[0, 2, 2, 2, -1], [0, 1, 3, 3, 3], [1, 1, -1, -1, -1], [0, -1, -1, -1, -1]])
    lam_index = rows.repeat(9, 1)[None, None].expand(1, 2, 36, 5).to(DEVICE)
    lam = torch.rand(1, 36, 2, 4).to(DEVICE) + 0.5
    grad = _compare(lam, lam_index)
    assert bool(grad[0, 0, :, 2].abs().sum() > 0)


def test_half_precision_lam_and_expanded_record():
    """A bf16 ``lam`` (read as float32, gradient back in bf16) and the fixed schedule's record broadcast over
    batch and heads."""
    T = 40
    R = num_levels(T)
    _, lam_index = fixed_schedule("fenwick", T, R)
    lam_index = lam_index.to(DEVICE).expand(2, 3, T, R)
    lam = (torch.rand(2, T, 3, R) + 0.5).to(torch.bfloat16).to(DEVICE)
    _compare(lam, lam_index)
