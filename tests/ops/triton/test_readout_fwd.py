"""The whole op on the Triton backend equals the PyTorch backend (CPU: Triton's interpreter, float32, tiny shapes)."""

import os

import pytest
import torch

from dla.ops import chunk_dla, num_levels
from tests.conftest import make_inputs, rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs a GPU or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("policy,capacity", [("dla", 4), ("fenwick", None), ("fixed", 3), ("dla_unbounded", 3)])
@pytest.mark.parametrize("gdn", [False, True])
@pytest.mark.parametrize("T", [1, 45, 70])
def test_triton_readout_matches_torch(policy, capacity, gdn, T, record):
    R = num_levels(T) if policy == "fenwick" else capacity
    x = make_inputs(B=1, T=T, H=2, G=1, K=8, V=12, R=R, gdn=gdn, dtype=torch.float32, seed=T, requires_grad=True)
    x = {n: (t.detach().to(DEVICE).requires_grad_() if t is not None else None) for n, t in x.items()}
    kw = dict(policy=policy, capacity=R, tau=0.3, block_size=5, chunk_size=16)
    o_tri, st_tri = chunk_dla(**x, **kw, backend="triton", output_final_state=True)
    o_ref, st_ref = chunk_dla(**x, **kw, backend="torch", output_final_state=True)
    assert record("triton readout vs torch, float32 output", rel_err(o_tri, o_ref)) < 1e-5
    assert rel_err(st_tri.slots, st_ref.slots) < 1e-6
    names = [n for n, t in x.items() if t is not None]
    do = torch.randn_like(o_ref)
    g_tri = torch.autograd.grad((o_tri * do).sum(), [x[n] for n in names])
    g_ref = torch.autograd.grad((o_ref * do).sum(), [x[n] for n in names])
    for n, a, b in zip(names, g_tri, g_ref):
        assert record(f"triton readout vs torch, float32 gradient d{n}", rel_err(a, b)) < 1e-5, n


def test_triton_readout_continues_from_initial_state():
    x = make_inputs(B=2, T=50, H=2, G=2, K=8, V=8, R=4, gdn=True, dtype=torch.float32, seed=2)
    x = {n: (t.to(DEVICE) if t is not None else None) for n, t in x.items()}
    head = {n: (t[:, :20] if t is not None else None) for n, t in x.items()}
    tail = {n: (t[:, 20:] if t is not None else None) for n, t in x.items()}
    kw = dict(capacity=4, tau=0.3, chunk_size=16)
    _, st = chunk_dla(**head, **kw, output_final_state=True, backend="torch")
    o_tri, _ = chunk_dla(**tail, **kw, initial_state=st, backend="triton")
    o_ref, _ = chunk_dla(**tail, **kw, initial_state=st, backend="torch")
    assert rel_err(o_tri, o_ref) < 1e-5


def test_triton_backend_rejects_small_chunks():
    x = make_inputs(B=1, T=8, H=1, G=1, K=4, V=4, R=2, dtype=torch.float32)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_dla(**x, capacity=2, chunk_size=8, backend="triton")
