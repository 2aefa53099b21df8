"""The slot form: ``docs/design.md`` section 3 token by token, literally. The specification in code.

Cost ``O(T C K V)`` per head with Python loops over batch, heads and tokens: a reference for tests and for
reading, not for training. Every faster implementation is tested against this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch

from dla.ops.common.boundary_grad import TEMPERATURE, BoundaryGrad
from dla.ops.common.merge import pick_merge
from dla.ops.common.policy import Policy
from dla.ops.common.score import SCORES
from dla.ops.common.state import DLAState, Segmentation, empty_segmentation
from dla.ops.utils.checks import check_dla_args


@dataclass
class _Slot:
    S: torch.Tensor  # [K, V]
    n: int
    info: torch.Tensor  # 0-d, the computation dtype (densities compare equal across implementations)
    start: int
    gate: Optional[torch.Tensor] = None  # the boundary gradient's gate (value 1); None: no gate


def naive_dla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    lam: Optional[torch.Tensor] = None,
    beta: Optional[torch.Tensor] = None,
    *,
    scale: Optional[float] = None,
    policy: Union[str, Policy] = "dla",
    tau: Optional[float] = None,
    capacity: Optional[int] = None,
    block_size: Optional[int] = None,
    score: Optional[str] = None,
    slot_transition: str = "additive",
    initial_state: Optional[DLAState] = None,
    output_final_state: bool = False,
    return_segmentation: bool = False,
    check_values: Optional[bool] = None,
    boundary_grad: Optional[str] = None,
    boundary_temperature: float = TEMPERATURE,
) -> Union[Tuple[torch.Tensor, Optional[DLAState]], Tuple[torch.Tensor, Optional[DLAState], Segmentation]]:
    """Dynamic Linear Attention, slot form (reference).

    Args:
        q: ``[B, T, G, K]`` queries; ``G`` divides ``H`` (query/key groups shared by ``H // G`` heads).
        k: ``[B, T, G, K]`` keys.
        v: ``[B, T, H, V]`` values.
        g: ``[B, T, H]`` log-decays ``g_t <= 0`` (``a_t = exp(g_t)``).
        lam: ``[B, T, H, R]`` positive readout weights, by recency rank (``R = capacity``) or, for ``fenwick``,
            by level (``R >= ceil(log2 T) + 1``). ``None`` means all ones (the backbone's output).
        beta: ``[B, T, H]`` delta-rule strengths: Gated DeltaNet. ``None``: scalar-gated linear attention /
            Mamba-2 (``u_t = v_t``).
        scale: readout scale, default ``K ** -0.5`` (Mamba-2 uses 1).
        policy: a :class:`~dla.ops.Policy`, or its kind (``single`` | ``fenwick`` | ``fixed`` | ``dla_unbounded`` |
            ``dla``, ``docs/design.md`` section 3.1) completed by the next four arguments.
        tau: boundary threshold, ``I_t >= tau`` opens a slot; finite, ``>= 0`` (0: every token opens one).
            Default 0.6.
        capacity: ``C >= 1``, the most live slots (``dla``, ``fixed``; the number of ``lam`` entries for
            ``dla_unbounded``); ignored by ``single`` and ``fenwick``. Default 30.
        block_size: the ``fixed`` policy opens a slot every ``block_size`` tokens (absolute positions). Default 64.
        score: ``drift`` (default, the paper's) or ``write``; see :mod:`dla.ops.common.score`.
        slot_transition: ``additive`` (``docs/design.md`` 2.1: slots decay, the delta rule acts through the pseudo-value)
            or ``per_slot`` (Log-Linear GDN: every slot gets ``a_t (I - beta_t k_t k_t^T)``). Same for ``beta=None``.
        initial_state: a :class:`DLAState` to continue from (e.g. the final state of a previous call).
        output_final_state: also return the final :class:`DLAState`.
        return_segmentation: also return the :class:`Segmentation`.
        check_values: look at the values (no NaN or inf, ``g <= 0``, a stable delta rule); ``None``: for CPU
            inputs (a host sync on GPU).
        boundary_grad: ``None`` (default: the decisions pass no gradient) or ``"ste"``: each slot a score opened
            multiplies its readout by ``1 + p - stopgrad(p)``, ``p = sigmoid((I_a - tau) / boundary_temperature)``
            (value 1: the outputs do not change), so that the score gets a gradient (``docs/design.md`` 3.2);
            policies ``dla`` and ``dla_unbounded`` only. Here autograd of the literal slot form: the reference.
        boundary_temperature: ``> 0``, the gate's temperature (default 0.1).

    Returns:
        ``o [B, T, H, V]`` in the dtype of ``v``, the final state (or ``None``), and the segmentation if asked.
        Computation runs in float64 for float64 inputs and float32 otherwise.

    Example:
        >>> B, T, H, K, V = 1, 16, 2, 8, 8
        >>> q, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
        >>> v, g = torch.randn(B, T, H, V), -torch.rand(B, T, H)
        >>> o, state = naive_dla(q, k, v, g, torch.ones(B, T, H, 4), capacity=4, output_final_state=True)
        >>> o.shape, int(state.num_slots.max()) <= 4
        (torch.Size([1, 16, 2, 8]), True)
    """
    pol = Policy.of(policy, tau=tau, capacity=capacity, block_size=block_size, score=score)
    dims = check_dla_args(q, k, v, g, lam, beta, policy=pol, scale=scale, initial_state=initial_state,
                          slot_transition=slot_transition, check_finite=check_values)
    bg = BoundaryGrad.of(boundary_grad, boundary_temperature, pol)
    B, T, H, K, V, R = dims.B, dims.T, dims.H, dims.K, dims.V, dims.R
    rep = H // dims.G
    out_dtype, dt = v.dtype, torch.promote_types(v.dtype, torch.float32)
    q, k, v, g = (x.to(dt) for x in (q, k, v, g))
    beta = beta.to(dt) if beta is not None else None
    lam = lam.to(dt) if lam is not None else torch.ones(B, T, H, R, dtype=dt, device=v.device)
    score_fn = SCORES[pol.score]

    o = torch.zeros(B, T, H, V, dtype=dt, device=v.device)
    seg = empty_segmentation(B, T, H, R, dt, v.device)
    finals: List[List[List[_Slot]]] = []
    for b in range(B):
        finals.append([])
        for h in range(H):
            slots = _initial_slots(initial_state, b, h, dt)
            seen = sum(s.n for s in slots)
            for t in range(T):
                kt, qt, vt, at = k[b, t, h // rep], q[b, t, h // rep], v[b, t, h], torch.exp(g[b, t, h])
                # 1. decay (per_slot: the whole delta transition)
                if beta is not None and slot_transition == "per_slot":
                    for s in slots:
                        s.S = at * (s.S - beta[b, t, h] * torch.outer(kt, kt @ s.S))
                else:
                    for s in slots:
                        s.S = at * s.S
                # 2. the write s_t = k_t u_t^T
                if beta is None:
                    ut = vt
                elif slot_transition == "per_slot":
                    ut = beta[b, t, h] * vt
                else:
                    backbone = sum(s.S for s in slots) if slots else torch.zeros(K, V, dtype=dt, device=v.device)
                    ut = beta[b, t, h] * (vt - kt @ backbone)
                st = torch.outer(kt, ut)
                merged = -1
                if not slots:  # 3. first token: open a slot
                    info, opened = torch.zeros((), dtype=dt, device=v.device), True
                    slots.append(_Slot(st, 1, info, t))
                else:  # 4. information score against the open slot
                    S_open = slots[-1].S
                    x, y, z = (S_open * S_open).sum(), (S_open * st).sum(), (kt @ kt) * (ut @ ut)
                    info = score_fn(x, y, z, K * V)
                    opened = bool(pol.wants_boundary(info, seen + t))
                    if opened:  # 5. merge when full, then append
                        merged = _make_room(slots, pol)
                        slots.append(_Slot(st, 1, info, t, bg.gate(info, pol.tau) if bg is not None else None))
                    else:
                        slots[-1].S = S_open + st
                        slots[-1].n += 1
                        slots[-1].info = slots[-1].info + info
                # 6. readout over the live slots, newest first
                idx = pol.lam_indices(torch.tensor([s.n for s in reversed(slots)]))
                for r, (s, li) in enumerate(zip(reversed(slots), idx.tolist())):
                    weight = lam[b, t, h, li] if s.gate is None else lam[b, t, h, li] * s.gate
                    o[b, t, h] += weight * (qt @ s.S)
                    if r < R:
                        seg.starts[b, t, h, r], seg.lam_index[b, t, h, r] = s.start, li
                seg.score[b, t, h], seg.boundary[b, t, h] = info, opened
                seg.num_slots[b, t, h], seg.merged[b, t, h] = len(slots), merged
            finals[-1].append(slots)
    o = (o * dims.scale).to(out_dtype)
    final = _pack_state(finals, pol, R, K, V, dt, v.device) if output_final_state else None
    return (o, final, seg) if return_segmentation else (o, final)


def _make_room(slots: List[_Slot], policy: Policy) -> int:
    """Merge before a new slot is appended; return the merged pair's index or -1."""
    merged = -1
    if policy.merges and len(slots) == policy.capacity:
        merged = int(pick_merge(torch.stack([s.info for s in slots]),
                                torch.tensor([s.n for s in slots]), torch.tensor(len(slots))))
        _merge_pair(slots, merged)
    elif policy.kind == "fenwick":  # binary carry: equal-sized closed slots merge, newest pairs first
        while len(slots) >= 2 and slots[-1].n == slots[-2].n:
            merged = len(slots) - 2
            _merge_pair(slots, merged)
    return merged


def _merge_pair(slots: List[_Slot], i: int) -> None:
    a, b = slots[i], slots.pop(i + 1)
    slots[i] = _Slot(a.S + b.S, a.n + b.n, a.info + b.info, a.start, a.gate)


def _initial_slots(state: Optional[DLAState], b: int, h: int, dt: torch.dtype) -> List[_Slot]:
    if state is None:
        return []
    m = int(state.num_slots[b, h])
    return [_Slot(state.slots[b, h, j].to(dt).clone(), int(state.counts[b, h, j]), state.info[b, h, j].to(dt),
                  j - m) for j in range(m)]


def _pack_state(finals, policy: Policy, R, K, V, dt, device) -> DLAState:
    B, H = len(finals), len(finals[0]) if finals else 0
    width = policy.state_width(R, max([len(s) for row in finals for s in row] + [1]))
    state = DLAState(torch.zeros(B, H, width, K, V, dtype=dt, device=device),
                     torch.zeros(B, H, width, dtype=torch.int64, device=device),
                     torch.zeros(B, H, width, dtype=dt, device=device),
                     torch.zeros(B, H, dtype=torch.int64, device=device), torch.zeros(B, H, dtype=dt, device=device),
                     policy)
    for b in range(B):
        for h in range(H):
            for j, s in enumerate(finals[b][h]):
                state.slots[b, h, j], state.counts[b, h, j], state.info[b, h, j] = s.S, s.n, s.info
            state.num_slots[b, h] = len(finals[b][h])
            if finals[b][h]:
                state.open_norm[b, h] = (finals[b][h][-1].S ** 2).sum()
    return state
