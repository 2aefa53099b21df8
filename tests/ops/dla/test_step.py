"""Decode step: chunked prefill + one-token steps == one pass of the slot form; constant memory."""

import pytest
import torch

from dla.ops import chunk_dla, dla_step, empty_state, naive_dla, num_levels
from tests.conftest import make_inputs, rel_err

POLICIES = [("dla", 4), ("fixed", 3), ("dla_unbounded", 4), ("fenwick", None), ("single", 1)]


def _steps(x, kw, state, t0, t1):
    outs = []
    for t in range(t0, t1):
        o, state = dla_step(x["q"][:, t], x["k"][:, t], x["v"][:, t], x["g"][:, t], x["lam"][:, t],
                            None if x["beta"] is None else x["beta"][:, t], state=state, **kw)
        outs.append(o[:, None])
    return torch.cat(outs, 1), state


@pytest.mark.parametrize("policy,capacity", POLICIES)
@pytest.mark.parametrize("gdn", [False, True])
@pytest.mark.parametrize("prefill", [0, 17, 64])
def test_prefill_then_steps_equals_one_pass(policy, capacity, gdn, prefill, record):
    T = 80
    R = num_levels(T) if policy == "fenwick" else capacity
    x = make_inputs(B=2, T=T, H=4, G=2, K=4, V=3, R=R, gdn=gdn, seed=prefill + 1)
    kw = dict(policy=policy, capacity=R, tau=0.3, block_size=5)
    o_ref, st_ref = naive_dla(**x, **kw, output_final_state=True)
    if prefill:
        head = {n: (t[:, :prefill] if t is not None else None) for n, t in x.items()}
        o1, state = chunk_dla(**head, **kw, output_final_state=True)
    else:
        o1, state = x["v"][:, :0], empty_state(2, 4, 4, 3, R, dtype=torch.float64)
    o2, state = _steps(x, kw, state, prefill, T)
    assert record("prefill + steps vs one pass (slot form)", rel_err(torch.cat([o1, o2], 1), o_ref)) < 1e-12
    assert bool((state.num_slots == st_ref.num_slots).all())
    w = st_ref.slots.shape[2]
    assert rel_err(state.slots[:, :, :w], st_ref.slots) < 1e-12
    assert bool((state.counts[:, :, :w] == st_ref.counts).all())


def test_float32_steps_decide_as_one_chunked_pass():
    """With the carried open-slot norm, float32 prefill + steps takes the one-pass decisions exactly."""
    T, P = 300, 100
    x = make_inputs(B=2, T=T, H=2, G=2, K=16, V=16, R=8, gdn=True, dtype=torch.float32, seed=3)
    kw = dict(policy="dla", capacity=8, tau=0.4)
    o_ref, st_ref = chunk_dla(**x, **kw, output_final_state=True)
    head = {n: (t[:, :P] if t is not None else None) for n, t in x.items()}
    o1, state = chunk_dla(**head, **kw, output_final_state=True)
    o2, state = _steps(x, kw, state, P, T)
    assert bool((state.num_slots == st_ref.num_slots).all()) and bool((state.counts == st_ref.counts).all())
    assert rel_err(torch.cat([o1, o2], 1), o_ref) < 1e-5


@pytest.mark.parametrize("policy,capacity", [("dla", 4), ("fenwick", None), ("single", 1)])
def test_step_memory_is_constant(policy, capacity):
    R = num_levels(4096) if policy == "fenwick" else capacity
    x = make_inputs(B=1, T=300, H=2, G=2, K=4, V=3, R=R, seed=9)
    kw = dict(policy=policy, capacity=R, tau=0.3)
    state = empty_state(1, 2, 4, 3, R, dtype=torch.float64)
    sizes = []
    for stop in (10, 300):
        _, st = _steps(x, kw, state, 0, stop)
        sizes.append(sum(t.numel() * t.element_size() for t in (st.slots, st.counts, st.info, st.num_slots)))
    assert sizes[0] == sizes[1]


def test_step_rejects_bad_shapes():
    state = empty_state(1, 2, 4, 3, 4)
    with pytest.raises(ValueError, match="q, k"):
        dla_step(torch.zeros(1, 1, 2, 4), torch.zeros(1, 2, 4), torch.zeros(1, 2, 3), torch.zeros(1, 2),
                 state=state)
    with pytest.raises(ValueError, match="policy"):
        dla_step(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), torch.zeros(1, 2, 3), torch.zeros(1, 2),
                 state=state, policy="lru")
