"""Input guards shared by every DLA entry point: errors name the argument, the value and what is allowed.

Shapes, dtypes, devices and the policy are checked on every call (host-side metadata, no synchronisation).
The values (no NaN or inf, ``g <= 0``, Gated DeltaNet keys small enough for a stable delta rule) need one
device-to-host copy: they are checked for CPU tensors always, and for GPU tensors when PyTorch's anomaly
detection is on (``torch.autograd.set_detect_anomaly(True)``) or ``check_values=True`` is passed, so that a
training step on a GPU pays no synchronisation for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from dla.ops.common.policy import Policy
from dla.ops.common.state import DLAState

SLOT_TRANSITIONS = ("additive", "per_slot")
"""How a slot evolves under Gated DeltaNet (``naive_dla`` only): ``additive`` (``docs/design.md`` 2.1: slots decay,
the delta rule acts through the pseudo-value) or ``per_slot`` (Log-Linear GDN: every slot gets the delta
transition)."""

DELTA_RULE_BOUND = 2.0
"""Largest ``beta_t ||k_t||^2`` a Gated DeltaNet input may reach: beyond 2 the transition ``I - beta k k^T`` has an
eigenvalue below -1 and the state grows without bound (the output turns to inf/NaN)."""


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


def _check_tensor(name: str, x, ndim: int, layout: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor {layout}, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims {layout}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype}")


def check_values(named: dict, beta: Optional[torch.Tensor] = None, k: Optional[torch.Tensor] = None) -> None:
    """No NaN or inf in the named tensors, ``g <= 0``, and (with ``beta``) ``beta_t ||k_t||^2 <= 2``: one
    ``aminmax`` reduction per tensor and one host copy for all of them (a NaN propagates through both reductions,
    an inf shows in one)."""
    named = {n: x for n, x in named.items() if x is not None and x.numel()}
    if not named:
        return
    with torch.no_grad():
        ends = [torch.stack(torch.aminmax(x.detach())).to(torch.float64) for x in named.values()]
        if beta is not None and k is not None and beta.numel():
            kk = k.detach().to(torch.float64).pow(2).sum(-1)  # [B, T, G]
            rep = beta.shape[2] // kk.shape[2]
            strength = (beta.detach().to(torch.float64) * kk.repeat_interleave(rep, 2)).amax()
            ends.append(torch.stack([strength, strength]))
        lo, hi = torch.stack(ends).cpu().unbind(1)
    for name, a, b in zip(named, lo.tolist(), hi.tolist()):
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"{name}: contains NaN or inf")
        if name == "g" and b > 0:
            raise ValueError("g: log-decays must be <= 0 (a_t = exp(g_t) <= 1)")
    if len(hi) > len(named) and hi[-1].item() > DELTA_RULE_BOUND:
        raise ValueError(f"k: beta_t ||k_t||^2 reaches {hi[-1].item():.3g} > {DELTA_RULE_BOUND:g}: the delta rule "
                         f"(I - beta k k^T) is unstable and the output would blow up; L2-normalise the keys "
                         f"(the Gated DeltaNet layer's use_qk_l2norm) or keep beta in [0, 1] with unit keys")


def wants_value_check(check: Optional[bool], *tensors) -> bool:
    """``check`` if given, else: CPU inputs always, GPU inputs under anomaly detection (module docstring)."""
    if check is not None:
        return bool(check)
    on_gpu = any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in tensors)
    return not on_gpu or torch.is_anomaly_enabled()


def check_dla_args(q, k, v, g, lam, beta, *, policy: Policy, scale, initial_state: Optional[DLAState],
                   slot_transition: str = "additive", check_finite: Optional[bool] = None,
                   longest: Optional[int] = None) -> Dims:
    """Validate the inputs of ``naive_dla`` / ``masked_dla`` / ``chunk_dla`` (the policy is already a validated
    :class:`Policy`); return their sizes. ``check_finite``: look at the values too (``None``: see the module
    docstring). ``longest``: the longest sequence when ``T`` tokens hold several packed ones (what the ``lam``
    levels of ``fenwick`` follow)."""
    if not isinstance(policy, Policy):
        raise ValueError(f"policy: expected a Policy, got {type(policy).__name__}")
    _check_tensor("q", q, 4, "[B, T, G, K]")
    _check_tensor("k", k, 4, "[B, T, G, K]")
    _check_tensor("v", v, 4, "[B, T, H, V]")
    B, T, G, K = q.shape
    if tuple(k.shape) != tuple(q.shape):
        raise ValueError(f"k: expected the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[0] != B or v.shape[1] != T:
        raise ValueError(f"v: expected batch and length ({B}, {T}) as q, got shape {tuple(v.shape)}")
    H, V = v.shape[2], v.shape[3]
    if G == 0 or H % G != 0:
        raise ValueError(f"q/k heads ({G}) must divide v heads ({H})")
    if K == 0 or V == 0:
        raise ValueError(f"q, k, v: key and value dims must be >= 1, got K={K}, V={V}")
    devices = {t.device for t in (q, k, v, g) if isinstance(t, torch.Tensor)}
    _check_tensor("g", g, 3, "[B, T, H]")
    if tuple(g.shape) != (B, T, H):
        raise ValueError(f"g: expected shape {(B, T, H)} ([B, T, H]), got {tuple(g.shape)}")
    if beta is not None:
        _check_tensor("beta", beta, 3, "[B, T, H]")
        if tuple(beta.shape) != (B, T, H):
            raise ValueError(f"beta: expected shape {(B, T, H)} ([B, T, H]), got {tuple(beta.shape)}")
        devices.add(beta.device)
    if slot_transition not in SLOT_TRANSITIONS:
        raise ValueError(f"slot_transition: unknown {slot_transition!r}; allowed: {', '.join(SLOT_TRANSITIONS)}")
    if scale is None:
        scale = K ** -0.5
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite number or None, got {scale!r}")

    seen = 0
    if initial_state is not None:
        if not isinstance(initial_state, DLAState):
            raise ValueError(f"initial_state: expected a DLAState, got {type(initial_state).__name__}")
        initial_state.check_continues(policy, B, H, K, V)
        seen = int(initial_state.counts.sum(-1).max()) if initial_state.counts.numel() and \
            policy.kind == "fenwick" else 0
        devices.add(initial_state.slots.device)

    R = policy.lam_entries(seen + (T if longest is None else longest))
    if lam is not None:
        _check_tensor("lam", lam, 4, "[B, T, H, R]")
        if tuple(lam.shape[:3]) != (B, T, H):
            raise ValueError(f"lam: expected [B={B}, T={T}, H={H}, R], got {tuple(lam.shape)}")
        need = {"single": "at least 1 entry", "fenwick": f"at least {R} levels (ceil(log2 T) + 1)"}
        if policy.kind in need and lam.shape[3] < R:
            raise ValueError(f"lam: policy {policy.kind!r} needs {need[policy.kind]}, got {lam.shape[3]}")
        if policy.kind not in need and lam.shape[3] != policy.capacity:
            raise ValueError(f"lam: policy {policy.kind!r} needs capacity={policy.capacity} entries, got "
                             f"{lam.shape[3]}")
        devices.add(lam.device)
    if len(devices) > 1:
        raise ValueError(f"inputs: all tensors must be on one device, got {sorted(map(str, devices))}")
    if wants_value_check(check_finite, q, v):
        check_values({"q": q, "k": k, "v": v, "g": g, "beta": beta, "lam": lam}, beta, k)
    return Dims(B=B, T=T, G=G, H=H, K=K, V=V, R=R, scale=float(scale))
