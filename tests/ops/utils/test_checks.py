"""Input guards of every DLA entry point: a bad argument is a ValueError naming it and what is allowed (STYLE 11)."""

import math
import re

import pytest
import torch

from dla.ops import POLICIES, SCORES, DLAState, chunk_dla, masked_dla, naive_dla, num_levels
from dla.ops.utils.checks import SLOT_TRANSITIONS

B, T, G, H, K, V, C = 1, 6, 1, 2, 3, 4, 4
ENTRY_POINTS = [naive_dla, masked_dla, chunk_dla]
TENSORS = ["q", "k", "v", "g", "beta", "lam"]
SHAPES = {"q": (B, T, G, K), "k": (B, T, G, K), "v": (B, T, H, V), "g": (B, T, H), "beta": (B, T, H),
          "lam": (B, T, H, C)}


def _inputs(shapes=None, seed=0):
    """Valid inputs (float64); ``shapes`` overrides some of them."""
    shapes = {**SHAPES, **(shapes or {})}
    gen = torch.Generator().manual_seed(seed)
    x = {name: torch.randn(*shape, generator=gen, dtype=torch.float64) for name, shape in shapes.items()}
    x["k"] = torch.nn.functional.normalize(x["k"], dim=-1)
    x["g"] = -x["g"].abs() * 0.3
    x["beta"] = torch.sigmoid(x["beta"])
    x["lam"] = x["lam"].abs() + 0.5
    return x


def _call(fn, *, shapes=None, tensors=None, **kwargs):
    """``fn`` on valid inputs (Gated DeltaNet, capacity ``C``, policy dla) with some arguments replaced."""
    x = _inputs(shapes)
    x.update(tensors or {})
    kwargs = {"tau": 0.5, "capacity": C, "policy": "dla", **kwargs}
    return fn(x["q"], x["k"], x["v"], x["g"], x["lam"], x["beta"], **kwargs)


def _raises(fn, name, *, allowed=(), **call_kwargs):
    """Assert ``fn`` raises a ValueError whose message starts with ``name`` and mentions every ``allowed``."""
    with pytest.raises(ValueError, match=rf"^{re.escape(name)}") as err:
        _call(fn, **call_kwargs)
    for word in allowed:
        assert word in str(err.value), f"{word!r} not in {str(err.value)!r}"
    return str(err.value)


def _state(num_slots=2, width=C, b=B, h=H, k=K, v=V):
    """A hand-built DLAState with ``num_slots`` live slots of one token each."""
    gen = torch.Generator().manual_seed(1)
    slots = torch.randn(b, h, width, k, v, generator=gen, dtype=torch.float64)
    live = torch.arange(width) < num_slots
    slots = slots * live[:, None, None]
    counts = live.long().expand(b, h, width).clone()
    info = torch.zeros(b, h, width, dtype=torch.float64)
    return DLAState(slots, counts, info, torch.full((b, h), num_slots, dtype=torch.int64))


@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("policy", POLICIES)
def test_valid_inputs_run(fn, policy):
    """The baseline every failing case perturbs is itself accepted (so each raise is the perturbation's)."""
    lam = torch.rand(B, T, H, {"single": 1, "fenwick": num_levels(T)}.get(policy, C), dtype=torch.float64) + 0.5
    o = _call(fn, policy=policy, tensors={"lam": lam}, block_size=2)[0]
    assert o.shape == (B, T, H, V) and bool(torch.isfinite(o).all())


# ---------------------------------------------------------------- ranks and shapes

@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("name", TENSORS)
@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_rank(fn, name, delta):
    shape = SHAPES[name][:-1] if delta < 0 else SHAPES[name] + (1,)
    msg = _raises(fn, name, shapes={name: shape})
    assert "dims" in msg


@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("shape", [(B, T, G, K + 1), (B, T + 1, G, K), (B, T, G + 1, K), (B + 1, T, G, K)])
def test_k_shape_differs_from_q(fn, shape):
    _raises(fn, "k", shapes={"k": shape})


@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("shape", [(B + 1, T, H, V), (B, T - 1, H, V), (B, T + 1, H, V)])
def test_v_batch_or_length_mismatch(fn, shape):
    _raises(fn, "v", shapes={"v": shape})


@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("groups", [3, 4])
def test_qk_heads_must_divide_v_heads(fn, groups):
    # H = 2 value heads: 3 and 4 query/key heads do not divide them
    _raises(fn, "q/k heads", shapes={"q": (B, T, groups, K), "k": (B, T, groups, K)})


@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("name", ["g", "beta"])
@pytest.mark.parametrize("shape", [(B, T, H + 1), (B, T - 1, H), (B + 1, T, H)])
def test_g_beta_wrong_shape(fn, name, shape):
    _raises(fn, name, shapes={name: shape})


@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("shape", [(B, T, H + 1, C), (B, T + 1, H, C), (B + 1, T, H, C)])
def test_lam_wrong_shape(fn, shape):
    _raises(fn, "lam", shapes={"lam": shape})


@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("policy", ["dla", "fixed", "dla_unbounded"])
@pytest.mark.parametrize("entries", [1, C - 1, C + 1])
def test_lam_entries_must_equal_capacity(fn, policy, entries):
    _raises(fn, "lam", allowed=[f"capacity={C}"], policy=policy, shapes={"lam": (B, T, H, entries)})


@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("length", [1, 2, 5, 6, 8, 9, 16, 17])
def test_lam_fenwick_levels(fn, length):
    """``fenwick`` needs at least ``ceil(log2 T) + 1`` levels: that many run, one fewer is an error."""
    need = math.ceil(math.log2(length)) + 1
    shapes = {n: (s[0], length, *s[2:]) for n, s in SHAPES.items()}
    o = _call(fn, policy="fenwick", shapes={**shapes, "lam": (B, length, H, need)})[0]
    assert o.shape == (B, length, H, V)
    o = _call(fn, policy="fenwick", shapes={**shapes, "lam": (B, length, H, need + 2)})[0]
    assert o.shape == (B, length, H, V)
    with pytest.raises(ValueError, match=r"^lam") as err:
        _call(fn, policy="fenwick", shapes={**shapes, "lam": (B, length, H, need - 1)})
    assert f"at least {need} levels" in str(err.value)


# ---------------------------------------------------------------- scalars

@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("tau", [-0.1, -1e-300, float("nan"), float("inf"), float("-inf"), "0.5", True, False])
def test_bad_tau(fn, tau):
    _raises(fn, "tau", allowed=[">= 0", repr(tau)], tau=tau)


@pytest.mark.parametrize("fn", ENTRY_POINTS)
def test_tau_zero_opens_a_slot_at_every_token(fn):
    """``tau = 0`` is allowed: with policy dla every token opens a slot (merging when the cache is full)."""
    x = _inputs()
    ref, _, seg = naive_dla(x["q"], x["k"], x["v"], x["g"], x["lam"], x["beta"], tau=0.0, capacity=C,
                            return_segmentation=True)
    assert bool(seg.boundary.all())
    assert seg.num_slots[:, -1].eq(C).all() and (seg.merged[:, C:] >= 0).all()
    assert seg.starts[:, :, :, 0].eq(torch.arange(T)[None, :, None]).all()
    out = _call(fn, tau=0, **({"return_segmentation": True} if fn is not masked_dla else {}))
    assert (out[0] - ref).norm() <= 1e-12 * ref.norm()
    if fn is not masked_dla:
        assert bool(out[2].boundary.all())


@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("capacity", [0, -1, 2.5, True, False, "4", float("inf")])
def test_bad_capacity(fn, capacity):
    _raises(fn, "capacity", allowed=[">= 1", repr(capacity)], capacity=capacity)


@pytest.mark.parametrize("fn", ENTRY_POINTS)
def test_unknown_policy(fn):
    _raises(fn, "policy", allowed=["'lru'", *POLICIES], policy="lru")


@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("score", ["cosine", "Drift", 3])
def test_unknown_score(fn, score):
    _raises(fn, "score", allowed=list(SCORES), score=score)


@pytest.mark.parametrize("slot_transition", ["per-slot", "multiplicative", None])
def test_unknown_slot_transition(slot_transition):
    # only the slot form offers slot transitions: masked_dla and chunk_dla are additive by construction
    _raises(naive_dla, "slot_transition", allowed=list(SLOT_TRANSITIONS), slot_transition=slot_transition)


@pytest.mark.parametrize("fn", [masked_dla, chunk_dla])
def test_slot_transition_is_not_a_keyword_of_the_additive_forms(fn):
    with pytest.raises(TypeError, match="slot_transition"):
        _call(fn, slot_transition="additive")


@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("block_size", [0, -2, 1.5, True])
def test_bad_block_size_for_fixed(fn, block_size):
    _raises(fn, "block_size", allowed=[">= 1"], policy="fixed", block_size=block_size)


@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("scale", [float("nan"), float("inf"), "1", True])
def test_bad_scale(fn, scale):
    _raises(fn, "scale", scale=scale)


# ---------------------------------------------------------------- tensor contents and dtypes

@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("name", TENSORS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input(fn, name, bad):
    x = _inputs()[name].clone()
    x.view(-1)[x.numel() // 2] = bad
    _raises(fn, name, allowed=["NaN or inf"], tensors={name: x})


@pytest.mark.parametrize("fn", ENTRY_POINTS)
def test_positive_log_decay(fn):
    g = _inputs()["g"].clone()
    g[0, 3, 1] = 1e-3
    _raises(fn, "g", allowed=["<= 0"], tensors={"g": g})
    g[0, 3, 1] = 0.0  # no decay is allowed
    assert _call(fn, tensors={"g": g})[0].shape == (B, T, H, V)


@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("name", TENSORS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_non_float_dtype(fn, name, dtype):
    x = _inputs()[name].round().to(dtype)
    _raises(fn, name, allowed=["floating-point", str(dtype)], tensors={name: x})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA); not testable on CPU")
def test_tensors_on_different_devices():
    for fn in ENTRY_POINTS:
        for name in ["v", "g", "beta", "lam"]:
            _raises(fn, "inputs", allowed=["one device"], tensors={name: _inputs()[name].cuda()})


# ---------------------------------------------------------------- initial_state

@pytest.mark.parametrize("fn", ENTRY_POINTS)
def test_initial_state_valid_runs(fn):
    o = _call(fn, initial_state=_state())[0]
    assert o.shape == (B, T, H, V) and bool(torch.isfinite(o).all())


@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("bad", ["tensor", "tuple", "dict"])
def test_initial_state_wrong_type(fn, bad):
    s = _state()
    value = {"tensor": s.slots, "tuple": (s.slots, s.counts, s.info, s.num_slots), "dict": vars(s)}[bad]
    _raises(fn, "initial_state", allowed=["DLAState"], initial_state=value)


@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("dim", ["b", "h", "k", "v"])
def test_initial_state_wrong_dims(fn, dim):
    _raises(fn, "initial_state", initial_state=_state(**{dim: {"b": B, "h": H, "k": K, "v": V}[dim] + 1}))


@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("policy", ["dla", "fixed"])
def test_initial_state_more_slots_than_capacity(fn, policy):
    _raises(fn, "initial_state", allowed=[f"capacity={C}"], policy=policy, block_size=2,
            initial_state=_state(num_slots=C + 1, width=C + 2))


# ---------------------------------------------------------------- cu_seqlens (chunk_dla only)

def test_cu_seqlens_valid_runs():
    x = _inputs()
    o, _ = _call(chunk_dla, cu_seqlens=torch.tensor([0, 2, T]))
    ref = torch.cat([naive_dla(*(x[n][:, a:b] for n in ("q", "k", "v", "g", "lam", "beta")), tau=0.5,
                               capacity=C)[0] for a, b in ((0, 2), (2, T))], 1)
    assert (o - ref).norm() <= 1e-12 * ref.norm()


@pytest.mark.parametrize("cu", [[1, T], [1, 3, T], [0, 3, T - 1], [0, 3, T + 1], [0, 4, 2, T], [0, 3, 3, T],
                                [T, 0], [0]], ids=["start1", "start1b", "short", "long", "decreasing", "repeated",
                                                   "reversed", "single"])
def test_cu_seqlens_bad_offsets(cu):
    _raises(chunk_dla, "cu_seqlens", cu_seqlens=torch.tensor(cu))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cu_seqlens_float(dtype):
    _raises(chunk_dla, "cu_seqlens", allowed=["integer"], cu_seqlens=torch.tensor([0, 3, T], dtype=dtype))


def test_cu_seqlens_not_a_1d_tensor():
    _raises(chunk_dla, "cu_seqlens", cu_seqlens=[0, 3, T])
    _raises(chunk_dla, "cu_seqlens", cu_seqlens=torch.tensor([[0, 3, T]]))


def test_cu_seqlens_batch_not_one():
    shapes = {n: (2, *s[1:]) for n, s in SHAPES.items()}
    _raises(chunk_dla, "cu_seqlens", allowed=["batch"], shapes=shapes, cu_seqlens=torch.tensor([0, 3, T]))


# ---------------------------------------------------------------- no tokens, value checks, tuning

@pytest.mark.parametrize("fn", ENTRY_POINTS)
@pytest.mark.parametrize("policy", ["dla", "fenwick"])
def test_no_tokens(fn, policy):
    """``T = 0``: an empty output, the state unchanged (or empty), an empty segmentation; no error."""
    x = _inputs({n: (s[0], 0) + s[2:] for n, s in SHAPES.items()})
    if policy == "fenwick":
        x["lam"] = x["lam"][..., :1]
    out = fn(x["q"], x["k"], x["v"], x["g"], x["lam"], x["beta"], policy=policy, capacity=C,
             output_final_state=True, **({"return_segmentation": True} if fn is not masked_dla else {}))
    assert out[0].shape == (B, 0, H, V)
    assert out[1].num_slots.eq(0).all() and out[1].slots.shape[:2] == (B, H)
    if policy != "dla":
        return
    init = _state()
    o, st = fn(x["q"], x["k"], x["v"], x["g"], x["lam"], x["beta"], tau=0.5, capacity=C, initial_state=init,
               output_final_state=True)[:2]
    assert o.shape == (B, 0, H, V) and torch.equal(st.slots, init.slots)


def test_unstable_delta_rule_is_refused():
    """Keys far from unit norm make ``I - beta k k^T`` expand: the output would be all NaN; the op says why."""
    x = _inputs()
    x["k"] = x["k"] * 1e3
    for fn in ENTRY_POINTS:
        with pytest.raises(ValueError, match=r"^k: beta_t \|\|k_t\|\|\^2 reaches .*normalise the keys"):
            fn(x["q"], x["k"], x["v"], x["g"], x["lam"], x["beta"], capacity=C)
    # without beta (Mamba-2) the same keys are fine
    assert torch.isfinite(chunk_dla(x["q"], x["k"], x["v"], x["g"], x["lam"], capacity=C)[0]).all()


def test_value_checks_can_be_skipped():
    """``check_values=False`` skips the one host sync (the GPU default outside anomaly mode)."""
    x = _inputs()
    x["v"][0, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="^v: contains NaN"):
        chunk_dla(x["q"], x["k"], x["v"], x["g"], x["lam"], x["beta"], capacity=C)
    o = chunk_dla(x["q"], x["k"], x["v"], x["g"], x["lam"], x["beta"], capacity=C, check_values=False)[0]
    assert o.isnan().any()


def test_states_record_their_policy():
    x = _inputs()
    for fn in ENTRY_POINTS:
        st = fn(x["q"], x["k"], x["v"], x["g"], x["lam"], x["beta"], tau=0.5, capacity=C, output_final_state=True)[1]
        assert st.policy is not None and st.policy.kind == "dla" and st.policy.capacity == C, fn
        assert st.clone().policy == st.policy and st.to(dtype=torch.float32).policy == st.policy


@pytest.mark.parametrize("field, value", [("max_tile", 16), ("scan_block_v", 24), ("key_warps", 0),
                                          ("pair_tile_bytes", 0), ("torch_group_bytes", 1.5)])
def test_bad_tuning(field, value):
    from dla.ops import Tuning

    with pytest.raises(ValueError, match=rf"^tuning.{field}"):
        Tuning(**{field: value})
    with pytest.raises(ValueError, match="tuning: unknown field 'tile'"):
        Tuning().replace(tile=3)
    with pytest.raises(ValueError, match="^tuning: expected"):
        _call(chunk_dla, tuning={"max_tile": 32})


def test_packed_sequences_need_one_state_row_each():
    x = _inputs({n: (1, 10) + s[2:] for n, s in SHAPES.items()})
    with pytest.raises(ValueError, match=r"^initial_state: packed sequences take one row per sequence \(2\)"):
        chunk_dla(x["q"], x["k"], x["v"], x["g"], x["lam"], x["beta"], capacity=C, initial_state=_state(b=1),
                  cu_seqlens=torch.tensor([0, 4, 10]))
