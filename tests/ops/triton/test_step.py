"""The Triton decode step == the PyTorch decode step (``dla_step(backend="torch")``), step after step.

On a GPU both run on it; without one, the Triton kernels run under ``TRITON_INTERPRET=1`` (set by conftest).
Decisions (slot counts, information sums' bookkeeping) must be equal; outputs, slots and norms equal to float32
rounding. Prefill with ``chunk_dla`` followed by Triton steps is checked against one pass of ``naive_dla``.
"""

import os

import pytest
import torch

from dla.ops import chunk_dla, dla_step, empty_state, naive_dla, num_levels
from tests.conftest import make_inputs, rel_err

pytest.importorskip("triton")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs a GPU or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
POLICIES = ("dla", "fixed", "single", "fenwick")


def _run(x, steps, state, backend, **kw):
    outs, states = [], []
    for t in range(steps):
        lam = x["lam"][:, t] if x["lam"] is not None else None
        beta = x["beta"][:, t] if x["beta"] is not None else None
        o, state = dla_step(x["q"][:, t], x["k"][:, t], x["v"][:, t], x["g"][:, t], lam, beta, state=state,
                            backend=backend, **kw)
        outs.append(o)
        states.append(state)
    return torch.stack(outs, 1), states


def _width(policy, R, capacity):
    return {"dla": capacity, "fixed": capacity, "fenwick": R, "single": 1}[policy]


@pytest.mark.parametrize("gdn", [False, True], ids=["mamba2", "gdn"])
@pytest.mark.parametrize("policy,score", [("dla", "drift"), ("dla", "write"), ("fixed", "drift"),
                                          ("single", "drift"), ("fenwick", "drift")])
def test_steps_match_torch(policy, gdn, score, record):
    T, H, G, K, V, capacity = 20, 4, 2, 8, 40, 3  # V = 40: two value tiles, the second partial
    R = num_levels(T) if policy == "fenwick" else capacity
    x = make_inputs(B=1, T=T, H=H, G=G, K=K, V=V, R=R, gdn=gdn, dtype=torch.float32, seed=5, decay=0.2)
    x = {n: (t.to(DEVICE) if t is not None else None) for n, t in x.items()}
    kw = dict(tau=0.3, capacity=capacity, policy=policy, block_size=3, score=score, scale=0.7)
    state0 = empty_state(1, H, K, V, _width(policy, R, capacity), device=DEVICE)
    o_ref, s_ref = _run(x, T, state0, "torch", **kw)
    o_tri, s_tri = _run(x, T, state0, "triton", **kw)
    for t, (a, b) in enumerate(zip(s_tri, s_ref)):
        assert torch.equal(a.num_slots, b.num_slots), f"step {t}: num_slots differ"
        assert torch.equal(a.counts, b.counts), f"step {t}: counts differ"
    name = f"triton step vs torch step ({policy}, {'gdn' if gdn else 'mamba2'})"
    assert record(f"{name}, output", rel_err(o_tri, o_ref)) < 2e-5
    assert record(f"{name}, slots", rel_err(s_tri[-1].slots, s_ref[-1].slots)) < 2e-5
    assert record(f"{name}, info", rel_err(s_tri[-1].info, s_ref[-1].info)) < 2e-5
    assert record(f"{name}, open_norm", rel_err(s_tri[-1].open_norm, s_ref[-1].open_norm)) < 2e-5
    if policy == "dla":
        merged = any(bool((b.num_slots == capacity).any()) for b in s_ref[:-1])
        assert merged, "the case must reach a full cache (merges)"


@pytest.mark.parametrize("gdn", [False, True], ids=["mamba2", "gdn"])
def test_prefill_then_triton_steps_equal_one_pass(gdn, record):
    T, head = 40, 28
    x = make_inputs(B=2, T=T, H=2, G=1, K=8, V=6, R=4, gdn=gdn, dtype=torch.float64, seed=2)
    kw = dict(tau=0.3, capacity=4, policy="dla", scale=0.5)
    o_ref = naive_dla(**x, **kw)[0]
    xd = {n: (t.to(DEVICE, torch.float32) if t is not None else None) for n, t in x.items()}
    pre = {n: (t[:, :head] if t is not None else None) for n, t in xd.items()}
    o_pre, state = chunk_dla(**pre, **kw, output_final_state=True, backend="torch")
    state = state.to(dtype=torch.float32)
    rest = {n: (t[:, head:] if t is not None else None) for n, t in xd.items()}
    o_steps, _ = _run(rest, T - head, state, "triton", **kw)
    o = torch.cat([o_pre, o_steps], 1).cpu().double()
    assert record("prefill + triton steps vs one pass (float32)", rel_err(o, o_ref)) < 1e-4


def test_rejects_what_it_does_not_implement():
    x = make_inputs(B=1, T=1, H=2, G=2, K=4, V=4, R=4, dtype=torch.float32)
    state = empty_state(1, 2, 4, 4, 4, device=DEVICE)
    args = [x[n][:, 0].to(DEVICE) for n in ("q", "k", "v", "g", "lam")]
    with pytest.raises(ValueError, match="policy"):
        dla_step(*args, state=state, policy="dla_unbounded", capacity=4, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        dla_step(*args, state=state, capacity=4, backend="cuda")
    with pytest.raises(ValueError, match="state"):
        dla_step(*args, state=state.to(dtype=torch.float64), capacity=4, backend="triton")
