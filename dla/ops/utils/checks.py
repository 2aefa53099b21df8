"""Input guards shared by every DLA entry point: errors name the argument, the value and what is allowed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from dla.ops.common.score import SCORES
from dla.ops.common.state import POLICIES, SLOT_TRANSITIONS, DLAState, num_levels


@dataclass(frozen=True)
class Dims:
    """Sizes read off validated inputs."""

    B: int
    T: int
    G: int  # query/key heads
    H: int  # value heads (the heads of the op)
    K: int
    V: int
    R: int  # lam entries: capacity, Fenwick levels, or 1
    scale: float


def _check_tensor(name: str, x: torch.Tensor, ndim: int, layout: str, values: Optional[list] = None) -> None:
    """Type, rank and dtype of ``x``; its values are checked later (appended to ``values``, if given)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor {layout}, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims {layout}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    if values is not None and x.numel():
        values.append((name, x))


def _check_values(values: list) -> None:
    """No NaN or inf in the named tensors, and ``g <= 0``: one ``aminmax`` reduction per tensor and one host sync
    for all of them (a NaN propagates through both reductions, an inf shows in one)."""
    if not values:
        return
    with torch.no_grad():
        ends = torch.stack([torch.stack(torch.aminmax(x.detach())).to(torch.float64) for _, x in values])
        lo, hi = ends.cpu().unbind(1)
    for (name, _), a, b in zip(values, lo.tolist(), hi.tolist()):
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"{name}: contains NaN or inf")
        if name == "g" and b > 0:
            raise ValueError("g: log-decays must be <= 0 (a_t = exp(g_t) <= 1)")


def check_dla_args(q, k, v, g, lam, beta, *, scale, tau, capacity, policy, block_size, score, slot_transition,
                   initial_state: Optional[DLAState], check_finite: bool = True) -> Dims:
    """Validate the arguments of ``naive_dla`` / ``masked_dla`` / ``chunk_dla``; return their sizes.
    ``check_finite``: also look at the values (no NaN or inf, ``g <= 0``; one host sync)."""
    values = [] if check_finite else None
    _check_tensor("q", q, 4, "[B, T, G, K]", values)
    _check_tensor("k", k, 4, "[B, T, G, K]", values)
    _check_tensor("v", v, 4, "[B, T, H, V]", values)
    B, T, G, K = q.shape
    if tuple(k.shape) != tuple(q.shape):
        raise ValueError(f"k: expected the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[0] != B or v.shape[1] != T:
        raise ValueError(f"v: expected batch and length ({B}, {T}) as q, got shape {tuple(v.shape)}")
    H, V = v.shape[2], v.shape[3]
    if G == 0 or H % G != 0:
        raise ValueError(f"q/k heads ({G}) must divide v heads ({H})")
    devices = {t.device for t in (q, k, v, g) if isinstance(t, torch.Tensor)}
    _check_tensor("g", g, 3, "[B, T, H]", values)
    if tuple(g.shape) != (B, T, H):
        raise ValueError(f"g: expected shape {(B, T, H)} ([B, T, H]), got {tuple(g.shape)}")
    if beta is not None:
        _check_tensor("beta", beta, 3, "[B, T, H]", values)
        if tuple(beta.shape) != (B, T, H):
            raise ValueError(f"beta: expected shape {(B, T, H)} ([B, T, H]), got {tuple(beta.shape)}")
        devices.add(beta.device)
    if policy not in POLICIES:
        raise ValueError(f"policy: unknown {policy!r}; allowed: {', '.join(POLICIES)}")
    if score not in SCORES:
        raise ValueError(f"score: unknown {score!r}; allowed: {', '.join(SCORES)}")
    if slot_transition not in SLOT_TRANSITIONS:
        raise ValueError(f"slot_transition: unknown {slot_transition!r}; allowed: {', '.join(SLOT_TRANSITIONS)}")
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity: expected an int >= 1, got {capacity!r}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
        raise ValueError(f"tau: expected a finite number >= 0 (0 opens a slot at every token), got {tau!r}")
    if policy == "fixed" and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size: policy 'fixed' needs an int >= 1, got {block_size!r}")
    if scale is None:
        scale = K ** -0.5
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite number or None, got {scale!r}")

    seen = 0
    if initial_state is not None:
        if not isinstance(initial_state, DLAState):
            raise ValueError(f"initial_state: expected a DLAState, got {type(initial_state).__name__}")
        s = initial_state.slots
        if s.dim() != 5 or s.shape[0] != B or s.shape[1] != H or s.shape[3] != K or s.shape[4] != V:
            raise ValueError(f"initial_state.slots: expected [B={B}, H={H}, C, K={K}, V={V}], got {tuple(s.shape)}")
        if tuple(initial_state.counts.shape) != tuple(s.shape[:3]) or \
                tuple(initial_state.info.shape) != tuple(s.shape[:3]):
            raise ValueError("initial_state: counts and info must be [B, H, C] like slots[..., 0, 0]")
        if tuple(initial_state.num_slots.shape) != (B, H):
            raise ValueError(f"initial_state.num_slots: expected [{B}, {H}], got "
                             f"{tuple(initial_state.num_slots.shape)}")
        if policy in ("dla", "fixed") and int(initial_state.num_slots.max()) > capacity:
            raise ValueError(f"initial_state: holds {int(initial_state.num_slots.max())} slots, more than "
                             f"capacity={capacity}")
        if policy == "single" and int(initial_state.num_slots.max()) > 1:
            raise ValueError("initial_state: policy 'single' continues from at most one slot")
        seen = int(initial_state.counts.sum(-1).max()) if initial_state.counts.numel() else 0
        devices.add(s.device)

    R = {"single": 1, "fenwick": num_levels(seen + T)}.get(policy, capacity)
    if lam is not None:
        _check_tensor("lam", lam, 4, "[B, T, H, R]", values)
        if tuple(lam.shape[:3]) != (B, T, H):
            raise ValueError(f"lam: expected [B={B}, T={T}, H={H}, R], got {tuple(lam.shape)}")
        need = {"single": "at least 1 entry", "fenwick": f"at least {R} levels (ceil(log2 T) + 1)"}
        if policy in need and lam.shape[3] < R:
            raise ValueError(f"lam: policy {policy!r} needs {need[policy]}, got {lam.shape[3]}")
        if policy not in need and lam.shape[3] != capacity:
            raise ValueError(f"lam: policy {policy!r} needs capacity={capacity} entries, got {lam.shape[3]}")
        devices.add(lam.device)
    if len(devices) > 1:
        raise ValueError(f"inputs: all tensors must be on one device, got {sorted(map(str, devices))}")
    if values is not None:
        _check_values(values)
    return Dims(B=B, T=T, G=G, H=H, K=K, V=V, R=R, scale=float(scale))
