"""The Triton layout stages (:mod:`dla.ops.triton.layout`) == the PyTorch ones: the head-major copy bit for bit,
the ``lam`` weights bit for bit (gradients to float32 rounding), the output combination to float32 rounding; for
the records of every policy."""

import os

import pytest
import torch
import torch.nn.functional as F

from dla.ops import Policy, chunked, num_levels
from dla.ops.chunk import _Heads, _Layout
from dla.ops.chunked import layout as torch_layout
from dla.ops.chunked import readout as torch_readout
from dla.ops.common.record import fixed_schedule
from tests.conftest import make_inputs
from tests.ops import stages

pytest.importorskip("triton")
from dla.ops import triton as kernels  # noqa: E402
from dla.ops.triton import layout  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs a GPU or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- heads_copy

@pytest.mark.parametrize("src, dst", [(torch.float32, torch.float32), (torch.float16, torch.float32),
                                      (torch.bfloat16, torch.float32), (torch.float32, torch.float64)])
@pytest.mark.parametrize("B, T, G, H, D, pad", [(2, 70, 1, 6, 32, 26), (1, 5, 3, 6, 20, 0), (1, 130, 4, 4, 16, 62)])
def test_heads_copy_equals_the_torch_copy(src, dst, B, T, G, H, D, pad):
    x = torch.randn(B, T, G, D, dtype=torch.float64).to(src).to(DEVICE)
    out = layout.heads_copy(x, H, pad, dst)
    assert out.shape == (B, H, T + pad, D) and out.dtype == dst and out.is_contiguous()
    assert torch.equal(out.cpu(), torch_layout.heads_copy(x.cpu(), H, pad, dst))
    assert torch.all(out[:, :, T:] == 0)


def test_heads_copy_of_a_strided_input_and_no_tokens():
    """A view whose token dimension is not the outer one (``[B, G, T, D]`` storage), and ``T = 0``."""
    base = torch.randn(2, 3, 40, 24, device=DEVICE)
    x = base.transpose(1, 2)  # [2, 40, 3, 24], last dimension contiguous
    assert torch.equal(layout.heads_copy(x, 6, 8, torch.float32).cpu(),
                       torch_layout.heads_copy(x.cpu(), 6, 8, torch.float32))
    assert layout.heads_copy(x[:, :0], 6, 0, torch.float32).shape == (2, 6, 0, 24)
    with pytest.raises(ValueError, match="groups"):
        layout.heads_copy(x, 4, 0, torch.float32)


def test_heads_function_backward_sums_each_group():
    """``_Heads``' gradient (a sum over each group's heads) is unchanged by the kernel's forward."""
    x = torch.randn(1, 9, 2, 8, device=DEVICE, requires_grad=True)
    out = _Heads.apply(x, _Layout(kernels, 4, 7, torch.float32))
    w = torch.randn_like(out)
    (out * w).sum().backward()
    want = w[:, :, :9].reshape(1, 2, 2, 9, 8).sum(2).transpose(1, 2)
    assert torch.allclose(x.grad, want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- lam weights

def _record(policy, T, R, H=2, tau=0.6, capacity=4):
    x = make_inputs(B=1, T=T, H=H, G=1, K=8, V=4, dtype=torch.float64, seed=1)
    Tp = -(-T // 16) * 16
    k = F.pad(x["k"].transpose(1, 2).expand(1, H, T, 8), (0, 0, 0, Tp - T)).reshape(H, Tp, 8)
    u = F.pad(x["v"].transpose(1, 2), (0, 0, 0, Tp - T)).reshape(H, Tp, 4)
    g = F.pad(x["g"].transpose(1, 2), (0, Tp - T)).reshape(H, Tp)
    res = stages.scan(chunked, k, u, g, T, 16, policy=policy, tau=tau, capacity=capacity, block_size=3, R=R)
    return res.lam_index.view(1, H, T, R)


def _compare_lam(lam, lam_index):
    lam0, dlam, index = layout.lam_fwd(lam, lam_index, torch.float32)
    r0, rd, r_index = torch_readout.lam_fwd(lam, lam_index, torch.float32)
    assert lam0.dtype == dlam.dtype == torch.float32 and index.dtype == r_index.dtype
    assert torch.equal(lam0, r0) and torch.equal(dlam, rd) and torch.equal(index, r_index)
    w0, wd = torch.randn_like(lam0), torch.randn_like(dlam)
    grad = layout.lam_bwd(index, w0, wd, lam.shape, lam.dtype)
    ref = torch_readout.lam_bwd(r_index, w0, wd, lam.shape, lam.dtype)
    assert grad.dtype == lam.dtype
    tol = 1e-6 if lam.dtype == torch.float32 else 2 ** -7  # one bf16 rounding of a sum taken in another order
    assert torch.allclose(grad.float(), ref.float(), rtol=tol, atol=tol)
    return grad


@pytest.mark.parametrize("policy, R, RL", [("dla", 4, 4), ("dla_unbounded", 4, 4), ("fenwick", 7, 9),
                                           ("single", 1, 1), ("fixed", 4, 4)])
def test_lam_weights_match_torch(policy, R, RL):
    T = 70
    lam_index = _record(policy, T, R).to(DEVICE)
    lam = (torch.rand(1, T, 2, RL, dtype=torch.float64) + 0.5).float().to(DEVICE)
    _compare_lam(lam, lam_index)


def test_lam_ranks_sharing_an_entry():
    """Several live ranks reading one ``lam`` entry (``dla_unbounded`` past ``C - 1``): the gradient sums them."""
    rows = torch.tensor([[0, 2, 2, 2, -1], [0, 1, 3, 3, 3], [1, 1, -1, -1, -1], [0, -1, -1, -1, -1]])
    lam_index = rows.repeat(9, 1)[None, None].expand(1, 2, 36, 5).to(DEVICE)
    lam = torch.rand(1, 36, 2, 4).to(DEVICE) + 0.5
    grad = _compare_lam(lam, lam_index)
    assert bool(grad[0, 0, :, 2].abs().sum() > 0)


def test_lam_half_precision_and_expanded_record():
    """A bf16 ``lam`` (read as float32, gradient back in bf16) and the fixed schedule's record broadcast over
    batch and heads."""
    T = 40
    R = num_levels(T)
    _, lam_index = fixed_schedule(Policy("fenwick"), T, R)
    lam_index = lam_index.to(DEVICE).expand(2, 3, T, R)
    lam = (torch.rand(2, T, 3, R) + 0.5).to(torch.bfloat16).to(DEVICE)
    _compare_lam(lam, lam_index)


# ---------------------------------------------------------------- output combination

@pytest.mark.parametrize("with_terms", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B, H, T, Tp, V", [(2, 3, 70, 80, 20), (1, 2, 64, 64, 96), (1, 1, 5, 16, 8)])
def test_combine_matches_torch(B, H, T, Tp, V, dtype, with_terms):
    torch.manual_seed(0)
    lam0 = torch.rand(B, H, T, device=DEVICE) + 0.5
    o_base = torch.randn(B, H, Tp, V, device=DEVICE)
    terms = torch.randn(B, H, Tp, V, device=DEVICE)[:, :, :T] if with_terms else None  # a strided view
    out = layout.combine_fwd(lam0, o_base, terms, 0.125, dtype)
    ref = torch_readout.combine_fwd(lam0, o_base, terms, 0.125, dtype)
    assert out.shape == ref.shape == (B, T, H, V) and out.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-3
    assert torch.allclose(out.float(), ref.float(), rtol=tol, atol=tol)
    do = torch.randn(B, T, H, V, device=DEVICE).to(dtype)
    got = layout.combine_bwd(do, lam0, o_base, 0.125, with_terms)
    want = torch_readout.combine_bwd(do, lam0, o_base, 0.125, with_terms)
    for a, b, name in zip(got, want, ("lam0", "o_base", "terms")):
        assert (a is None) == (b is None) == (name == "terms" and not with_terms), name
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), name
    assert torch.all(got[1][:, :, T:] == 0)
