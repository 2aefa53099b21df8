"""What chunk_dla keeps for its backward: ``lam``'s gather and the readout's per-rank indices in int16 (with the
gradients of torch's own gather), and the caller's ``q, k, v`` instead of the stages' float32 copies (rebuilt in
the backward), visible to the caller's saved-tensor hooks and guarded by version checks."""

import os

import pytest
import torch
import torch.nn.functional as F

from dla.ops import chunk_dla, chunked
from dla.ops.chunk import _Heads, _Layout
from dla.ops.chunked.readout import lam_bwd, lam_fwd
from dla.ops.utils.index import compact_index
from tests.conftest import make_inputs


def test_compact_index_dtypes():
    idx = torch.tensor([[-1, 0, 5]])
    assert compact_index(idx, 30).dtype == torch.int16
    assert compact_index(idx, 40_000).dtype == torch.int32
    assert compact_index(idx, 2 ** 40).dtype == torch.int64
    assert torch.equal(compact_index(idx, 30).long(), idx)


def test_lam_weights_equal_autograd_of_a_gather():
    """The PyTorch ``lam`` stage's explicit backward (a scatter into the compact index) is bitwise autograd's of
    ``torch.gather`` and the telescoping differences; several ranks reading one entry add up."""
    gen = torch.Generator().manual_seed(0)
    lam = torch.rand(2, 7, 3, 5, dtype=torch.float64, generator=gen, requires_grad=True)  # [B, T, H, RL]
    index = torch.randint(-1, 5, (2, 3, 7, 6), generator=gen)  # [B, H, T, R]: repeats and unused ranks
    g0, gd = torch.randn(2, 3, 7, dtype=torch.float64, generator=gen), torch.randn(2, 3, 7, 5, dtype=torch.float64,
                                                                                    generator=gen)
    lam0, dlam, saved = lam_fwd(lam.detach(), index, torch.float64)
    assert saved.dtype == torch.int16
    lam_r = torch.gather(lam.transpose(1, 2), -1, index.clamp_min(0))
    ref_dlam = torch.where(index[..., 1:] >= 0, lam_r[..., 1:] - lam_r[..., :-1], torch.zeros_like(lam_r[..., 1:]))
    assert torch.equal(lam0, lam_r[..., 0].detach()) and torch.equal(dlam, ref_dlam.detach())
    (ref,) = torch.autograd.grad((lam_r[..., 0] * g0).sum() + (ref_dlam * gd).sum(), lam)
    assert torch.equal(lam_bwd(saved, g0, gd, lam.shape, lam.dtype), ref)


def _heads(x, H, pad, dtype):
    return _Heads.apply(x, _Layout(chunked, H, pad, dtype))


@pytest.mark.parametrize("G, H, pad", [(1, 4, 3), (2, 6, 0), (3, 3, 5)])
def test_heads_is_one_copy_of_the_repeat_form(G, H, pad):
    """The stages' head-major copy (one pass) equals repeat + transpose + pad + contiguous, values and gradient
    bitwise (the gradient sums a group's heads in float32, not in the input's bf16)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, G, 8, generator=gen).bfloat16().requires_grad_()
    ref = F.pad(x.float().repeat_interleave(H // G, 2).transpose(1, 2), (0, 0, 0, pad)).contiguous()
    out = _heads(x, H, pad, torch.float32)
    assert out.is_contiguous() and out.dtype == torch.float32 and torch.equal(out, ref)
    w = torch.randn(out.shape, generator=gen)
    (g,) = torch.autograd.grad((out * w).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    assert torch.equal(g, g_ref)
    x64 = torch.randn(2, 3, G, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _heads(t, H, pad, torch.float64), (x64,))
    assert torch.autograd.gradgradcheck(lambda t: _heads(t, H, pad, torch.float64) ** 2, (x64,))


def _saved_dtypes(fn):
    dtypes = []

    def pack(t):
        dtypes.append((t.dtype, tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return dtypes


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_no_int64_per_token_index_is_saved(backend):
    """Nothing of shape ``[B, H, T, *]`` is kept as int64 or int32 for the backward (it was 472 bytes per token x
    head at C = 30: the gather's int64 index and the readout's int32 ``jidx`` and ``off``)."""
    if backend == "triton" and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    T = 70
    x = {n: (t.to(device).requires_grad_() if t is not None else None)
         for n, t in make_inputs(B=1, T=T, H=2, G=1, K=16, V=16, R=6, dtype=torch.float32, seed=1).items()}
    saved = _saved_dtypes(lambda: chunk_dla(**x, capacity=6, tau=0.3, block_size=5, chunk_size=16, backend=backend))
    per_token = [(d, s) for d, s in saved if len(s) == 4 and s[2] == T and s[3] > 1]
    assert any(d == torch.int16 for d, _ in per_token), saved
    assert not [(d, s) for d, s in per_token if d in (torch.int32, torch.int64)], saved


def _inputs(device, G=1):
    x = make_inputs(B=1, T=70, H=2, G=G, K=16, V=16, R=6, dtype=torch.bfloat16, seed=2)
    return {n: (t.to(device).requires_grad_() if t is not None else None) for n, t in x.items()}


KW = dict(capacity=6, tau=0.3, block_size=5, chunk_size=16, backend="triton")


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("gdn", [False, True])
def test_stages_keep_the_callers_qkv(gdn, backend):
    """No float32 head-major copy of q, k or v is kept; the caller's own tensors are, and the caller's saved-tensor
    hooks see them (so ``save_on_cpu`` and friends still apply)."""
    if backend == "triton" and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = _inputs(device)
    if not gdn:
        x["beta"] = None
    elif x["beta"] is None:
        x["beta"] = torch.rand(1, 70, 2, device=device).requires_grad_()
    seen = []

    def pack(t):
        seen.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        o = chunk_dla(**x, **{**KW, "backend": backend})[0]
    ptrs = {t.data_ptr() for t in seen}
    for n in ("q", "k", "v"):
        assert x[n].data_ptr() in ptrs, n  # the source itself is saved
    copies = [F.pad(x[n].float().repeat_interleave(2 // x[n].shape[2], 2).transpose(1, 2), (0, 0, 0, 10))
              for n in ("q", "k", "v")]  # [1, 2, 80, 16]: what the kernels read
    assert not [t for t in seen for c in copies if t.shape == c.shape and t.dtype == c.dtype and torch.equal(t, c)]
    # and the gradients are those of the torch path
    g = torch.autograd.grad(o.float().sum(), [x["q"], x["k"], x["v"]])
    o_ref = chunk_dla(**x, **{**KW, "backend": "torch"})[0]
    g_ref = torch.autograd.grad(o_ref.float().sum(), [x["q"], x["k"], x["v"]])
    for a, b in zip(g, g_ref):
        assert (a.float() - b.float()).norm() <= 2e-2 * b.float().norm()


def test_inplace_change_of_an_input_after_the_forward_is_an_error():
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = _inputs(device)
    x["beta"] = None
    q = x["q"].detach().clone().requires_grad_()
    qq = q * 1  # a non-leaf the caller may change in place
    o = chunk_dla(**{**x, "q": qq}, **KW)[0]
    with torch.no_grad():
        qq.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        o.float().sum().backward()
