"""The Triton output combination (``ReadoutCombine``) == its PyTorch composition, values and gradients."""

import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")
from dla.ops.dla.combine_triton import ReadoutCombine  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs a GPU or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _torch(lam0, o_base, terms, scale, dtype):
    T, Tp = lam0.shape[-1], o_base.shape[2]
    o = F.pad(lam0, (0, Tp - T))[..., None] * o_base + F.pad(terms, (0, 0, 0, Tp - T))
    return (o * scale)[:, :, :T].transpose(1, 2).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B, H, T, Tp, V", [(2, 3, 70, 80, 20), (1, 2, 64, 64, 96), (1, 1, 5, 16, 8)])
def test_matches_torch(B, H, T, Tp, V, dtype):
    torch.manual_seed(0)
    lam0 = torch.rand(B, H, T, device=DEVICE) + 0.5
    o_base = torch.randn(B, H, Tp, V, device=DEVICE)
    terms = torch.randn(B, H, Tp, V, device=DEVICE)[:, :, :T]  # a strided view, as the readout returns it
    args = [t.clone().requires_grad_() for t in (lam0, o_base, terms)]
    ref_args = [t.clone().requires_grad_() for t in (lam0, o_base, terms)]
    out = ReadoutCombine.apply(*args, 0.125, dtype)
    ref = _torch(*ref_args, 0.125, dtype)
    assert out.shape == ref.shape == (B, T, H, V) and out.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-3
    assert torch.allclose(out.float(), ref.float(), rtol=tol, atol=tol)
    w = torch.randn(B, T, H, V, device=DEVICE).to(dtype)
    (out.float() * w.float()).sum().backward()
    (ref.float() * w.float()).sum().backward()
    for a, b, name in zip(args, ref_args, ("lam0", "o_base", "terms")):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-5), name
    assert torch.all(args[1].grad[:, :, T:] == 0)
