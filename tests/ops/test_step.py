"""Decode step: chunked prefill + one-token steps == one pass of the slot form; constant memory."""

import pytest
import torch

from dla.ops import DLAState, chunk_dla, dla_step, empty_state, naive_dla, num_levels
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
    with pytest.raises(ValueError, match="^q: expected \\[B, G, K\\]"):
        dla_step(torch.zeros(1, 1, 2, 4), torch.zeros(1, 2, 4), torch.zeros(1, 2, 3), torch.zeros(1, 2),
                 state=state, capacity=4)
    with pytest.raises(ValueError, match="q, k"):
        dla_step(torch.zeros(1, 2, 4), torch.zeros(1, 2, 5), torch.zeros(1, 2, 3), torch.zeros(1, 2),
                 state=state, capacity=4)
    with pytest.raises(ValueError, match="^policy"):
        dla_step(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), torch.zeros(1, 2, 3), torch.zeros(1, 2),
                 state=state, policy="lru")
    with pytest.raises(ValueError, match="^state.slots"):
        dla_step(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), torch.zeros(1, 2, 5), torch.zeros(1, 2),
                 state=state, capacity=4)


def _prefill(capacity, policy="dla", T=40):
    x = make_inputs(B=1, T=T, H=2, G=2, K=4, V=3, R=capacity, seed=4)
    _, state = chunk_dla(**x, policy=policy, capacity=capacity, tau=0.0, output_final_state=True)
    tok = [x[n][:, 0] if x[n] is not None else None for n in ("q", "k", "v", "g")]
    return x, state, tok


def test_state_from_a_larger_capacity_is_refused():
    """A state of capacity 8 stepped with capacity 4 would hold 9 slots in an 8-slot cache and drop the token's
    write; it is refused, whether the state records its policy or not."""
    x, state, (q, k, v, g) = _prefill(8)
    assert state.policy.capacity == 8 and int(state.num_slots.max()) == 8
    lam = torch.ones(1, 2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="^state: built by policy 'dla' with capacity=8"):
        dla_step(q, k, v, g, lam, state=state, capacity=4, tau=0.0)
    bare = DLAState(state.slots, state.counts, state.info, state.num_slots, state.open_norm)  # no record
    with pytest.raises(ValueError, match="^state: holds 8 slots, more than capacity=4"):
        dla_step(q, k, v, g, lam, state=bare, capacity=4, tau=0.0)


def test_state_from_another_policy_is_refused():
    _, state, (q, k, v, g) = _prefill(4)
    with pytest.raises(ValueError, match="^state: built by policy 'dla'"):
        dla_step(q, k, v, g, None, state=state, policy="fixed", capacity=4)
    with pytest.raises(ValueError, match="^initial_state: built by policy 'dla'"):
        x = make_inputs(B=1, T=5, H=2, G=2, K=4, V=3, R=4, seed=5)
        chunk_dla(**x, policy="fixed", capacity=4, initial_state=state)


def test_step_without_a_state_starts_fresh():
    """``state=None`` is an empty cache (as fla's recurrent ops start fresh on None): equal to the first token of a
    chunked pass."""
    x = make_inputs(B=2, T=3, H=4, G=2, K=4, V=3, R=4, seed=6)
    o_ref, _ = chunk_dla(**x, capacity=4, tau=0.3)
    o, state = dla_step(*(x[n][:, 0] if x[n] is not None else None for n in ("q", "k", "v", "g", "lam", "beta")),
                        capacity=4, tau=0.3)
    assert torch.allclose(o, o_ref[:, 0], atol=1e-12)
    assert state.slots.dtype == torch.float64 and state.policy.capacity == 4 and state.num_slots.eq(1).all()
