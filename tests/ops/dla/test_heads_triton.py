"""The Triton head-major copy (``heads_copy``) == the PyTorch copy of ``chunk_torch._heads``, bit for bit."""

import os

import pytest
import torch

pytest.importorskip("triton")
from dla.ops.dla.chunk_torch import _Heads  # noqa: E402
from dla.ops.dla.heads_triton import heads_copy  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs a GPU or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _torch_copy(x, H, pad, dtype):
    """The PyTorch path of ``_Heads.forward`` (the reference), on the CPU."""
    B, T, G, D = x.shape
    out = torch.empty(B, H, T + pad, D, dtype=dtype)
    out[:, :, T:] = 0
    out[:, :, :T].view(B, G, H // G, T, D).copy_(x.cpu().transpose(1, 2)[:, :, None])
    return out


@pytest.mark.parametrize("src, dst", [(torch.float32, torch.float32), (torch.float16, torch.float32),
                                      (torch.bfloat16, torch.float32), (torch.float32, torch.float64)])
@pytest.mark.parametrize("B, T, G, H, D, pad", [(2, 70, 1, 6, 32, 26), (1, 5, 3, 6, 20, 0), (1, 130, 4, 4, 16, 62)])
def test_equals_the_torch_copy(src, dst, B, T, G, H, D, pad):
    x = torch.randn(B, T, G, D, dtype=torch.float64).to(src).to(DEVICE)
    out = heads_copy(x, H, pad, dst)
    assert out.shape == (B, H, T + pad, D) and out.dtype == dst and out.is_contiguous()
    assert torch.equal(out.cpu(), _torch_copy(x, H, pad, dst))
    assert torch.all(out[:, :, T:] == 0)


def test_strided_input_and_no_tokens():
    """A view whose token dimension is not the outer one (``[B, G, T, D]`` storage), and ``T = 0``."""
    base = torch.randn(2, 3, 40, 24, device=DEVICE)
    x = base.transpose(1, 2)  # [2, 40, 3, 24], last dimension contiguous
    assert torch.equal(heads_copy(x, 6, 8, torch.float32).cpu(), _torch_copy(x, 6, 8, torch.float32))
    assert heads_copy(x[:, :0], 6, 0, torch.float32).shape == (2, 6, 0, 24)
    with pytest.raises(ValueError, match="groups"):
        heads_copy(x, 4, 0, torch.float32)


def test_heads_function_backward_sums_each_group():
    """``_Heads``' gradient (a sum over each group's heads) is unchanged by the kernel's forward."""
    x = torch.randn(1, 9, 2, 8, device=DEVICE, requires_grad=True)
    out = _Heads.apply(x, 4, 7, torch.float32)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    want = w[:, :, :9].reshape(1, 2, 2, 9, 8).sum(2).transpose(1, 2)
    assert torch.allclose(x.grad, want, rtol=1e-6, atol=1e-6)
