"""What the backward keeps of DLA's indices: ``lam``'s gather and the readout's per-rank indices in int16, with
the gradients of torch's own gather."""

import os

import pytest
import torch

from dla.ops import chunk_dla
from dla.ops.dla.chunk_torch import _GatherLast, compact_index
from tests.conftest import make_inputs


def test_compact_index_dtypes():
    idx = torch.tensor([[-1, 0, 5]])
    assert compact_index(idx, 30).dtype == torch.int16
    assert compact_index(idx, 40_000).dtype == torch.int32
    assert compact_index(idx, 2 ** 40).dtype == torch.int64
    assert torch.equal(compact_index(idx, 30).long(), idx)


def test_gather_last_matches_torch_gather():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    index = torch.randint(0, 9, (2, 3, 7, 12), generator=gen)  # repeats: their gradients add up
    w = torch.randn(2, 3, 7, 12, dtype=torch.float64, generator=gen)
    out = _GatherLast.apply(x, index)
    assert torch.equal(out, torch.gather(x, -1, index))
    (g,) = torch.autograd.grad((out * w).sum(), x, create_graph=True)
    (g_ref,) = torch.autograd.grad((torch.gather(x, -1, index) * w).sum(), x, create_graph=True)
    assert torch.equal(g, g_ref)
    assert torch.autograd.gradcheck(lambda t: _GatherLast.apply(t, index), (x,))
    assert torch.autograd.gradgradcheck(lambda t: _GatherLast.apply(t, index) ** 2, (x,))


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
