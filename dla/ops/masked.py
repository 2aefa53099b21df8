"""The masked form: ``O = (Q K^T (.) M) U`` with ``M[t, s] = lam[t, idx(rank_t(s))] D(s, t)`` (``docs/design.md``
section 5).

``O(T^2)`` per head, fully parallel and differentiable for a given segmentation: the oracle for gradients.
Gated DeltaNet's pseudo-values come from one ``T x T`` unit-triangular solve (the UT transform over the whole
sequence).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from dla.ops.common.boundary_grad import (TEMPERATURE, BoundaryGrad, initial_open_slot, opening_scores,
                                          scored_openings, slot_gates)
from dla.ops.common.policy import Policy
from dla.ops.common.state import DLAState, Segmentation
from dla.ops.naive import naive_dla
from dla.ops.utils.checks import check_dla_args


def masked_dla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    lam: Optional[torch.Tensor] = None,
    beta: Optional[torch.Tensor] = None,
    *,
    segmentation: Optional[Segmentation] = None,
    scale: Optional[float] = None,
    policy: Union[str, Policy] = "dla",
    tau: Optional[float] = None,
    capacity: Optional[int] = None,
    block_size: Optional[int] = None,
    score: Optional[str] = None,
    initial_state: Optional[DLAState] = None,
    output_final_state: bool = False,
    check_values: Optional[bool] = None,
    boundary_grad: Optional[str] = None,
    boundary_temperature: float = TEMPERATURE,
) -> Tuple[torch.Tensor, Optional[DLAState]]:
    """DLA as one masked ``T x T`` product (reference for outputs and gradients).

    Arguments as :func:`dla.ops.naive_dla` (additive slot transition only). ``segmentation``: the decisions
    to use, e.g. from ``naive_dla(..., return_segmentation=True)``; when ``None`` they are computed by the slot
    form without gradient. Returns ``(o [B, T, H, V], final_state or None)``; ``output_final_state`` is not
    available for ``dla_unbounded`` (its segmentation lists only the ``capacity`` newest slots). With
    ``boundary_grad="ste"`` each weight ``M[t, s]`` is multiplied by the gate of the slot holding ``s`` at ``t``,
    from the scores recomputed differentiably for the given segmentation
    (:func:`dla.ops.common.boundary_grad.opening_scores`).
    """
    pol = Policy.of(policy, tau=tau, capacity=capacity, block_size=block_size, score=score)
    dims = check_dla_args(q, k, v, g, lam, beta, policy=pol, scale=scale, initial_state=initial_state,
                          check_finite=check_values)
    bg = BoundaryGrad.of(boundary_grad, boundary_temperature, pol)
    if output_final_state and pol.kind == "dla_unbounded":
        raise ValueError("output_final_state: masked_dla cannot rebuild dla_unbounded's slots; use naive_dla")
    if v.shape[1] == 0:  # nothing to mask: the slot form returns the (initial) state as it is
        return naive_dla(q, k, v, g, lam, beta, scale=scale, policy=pol, initial_state=initial_state,
                         output_final_state=output_final_state, check_values=False, boundary_grad=boundary_grad,
                         boundary_temperature=boundary_temperature)
    if segmentation is None:
        with torch.no_grad():
            segmentation = naive_dla(q, k, v, g, lam, beta, scale=scale, policy=pol, initial_state=initial_state,
                                     return_segmentation=True, check_values=False)[2]
    B, T, H, K, V, R = dims.B, dims.T, dims.H, dims.K, dims.V, dims.R
    out_dtype, dt = v.dtype, torch.promote_types(v.dtype, torch.float32)
    rep = H // dims.G
    q, k = (x.to(dt).repeat_interleave(rep, dim=2).transpose(1, 2) for x in (q, k))  # [B, H, T, K]
    v, g = v.to(dt).transpose(1, 2), g.to(dt).transpose(1, 2)  # [B, H, T, V], [B, H, T]
    lam = (lam.to(dt) if lam is not None else torch.ones(B, T, H, R, dtype=dt, device=v.device)).transpose(1, 2)

    causal = torch.ones(T, T, dtype=torch.bool, device=v.device).tril()
    # log D(s, t) = sum_{r=s+1..t} g_r, by a masked cumulative sum (no difference of two long sums)
    strict = torch.ones(T, T, dtype=torch.bool, device=v.device).tril(-1)
    logD = torch.cumsum(g[..., :, None].expand(B, H, T, T).masked_fill(~strict, 0), dim=-2)
    logD = torch.where(causal, logD, torch.full_like(logD, float("-inf")))
    D = torch.exp(logD)  # [B, H, t, s]
    D0 = torch.exp(torch.cumsum(g, -1))  # D(-1, t)

    init = initial_state
    m0 = init.num_slots.to(v.device) if init is not None else torch.zeros(B, H, dtype=torch.int64,
                                                                          device=v.device)
    S0 = init.slots.to(dt) if init is not None else torch.zeros(B, H, 1, K, V, dtype=dt, device=v.device)
    if beta is None:
        u = v
    else:
        bt = beta.to(dt).transpose(1, 2)
        A = bt[..., None] * D * (k @ k.transpose(-1, -2)) * (~torch.eye(T, dtype=torch.bool, device=v.device))
        rhs = bt[..., None] * (v - D0[..., None] * torch.einsum("bhtk,bhkv->bhtv", k, S0.sum(2)))
        u = torch.linalg.solve_triangular(A + torch.eye(T, dtype=dt, device=v.device), rhs, upper=False,
                                          unitriangular=True)

    starts = segmentation.starts.to(v.device).transpose(1, 2)  # [B, H, T, R]
    lam_index = segmentation.lam_index.to(v.device).transpose(1, 2)
    pos = torch.arange(T, device=v.device)
    weight = _rank_weight(starts, lam_index, lam, pos)  # [B, H, t, s]
    if bg is not None:
        weight = weight * _gate_weight(bg, pol, segmentation, k, u, g, init, starts, pos)
    o = ((q @ k.transpose(-1, -2)) * weight * D) @ u
    if init is not None:
        j = torch.arange(S0.shape[2], device=v.device)
        virt = j[None, None, :] - m0[..., None]  # [B, H, C0] virtual start of each initial slot
        w0 = _rank_weight(starts, lam_index, lam, virt[:, :, None, :])  # [B, H, t, C0]
        w0 = w0 * (j < m0[..., None])[:, :, None, :]
        o = o + torch.einsum("bht,bhtj,bhtk,bhjkv->bhtv", D0, w0, q, S0)
    o = (o * dims.scale).transpose(1, 2).to(out_dtype)
    if not output_final_state:
        return o, None
    return o, _final_state(segmentation, k, u, D[..., -1, :], D0[..., -1], init, m0, pol)


def _rank_weight(starts, lam_index, lam, pos):
    """``lam[t, idx(rank_t(s))]`` for positions ``pos`` (``[S]`` or ``[B, H, 1, S]``): ``rank = #{starts > s}``."""
    if pos.dim() == 1:
        pos = pos[None, None, None, :]
    rank = (starts[..., None, :] > pos[..., None]).sum(-1).clamp_max(starts.shape[-1] - 1)  # [B, H, t, s]
    idx = torch.gather(lam_index, -1, rank).clamp_min(0)
    return torch.gather(lam, -1, idx)


def _gate_weight(bg: BoundaryGrad, policy: Policy, seg: Segmentation, k, u, g, init, starts, pos):
    """``[B, H, t, s]``: the gate of the slot that holds token ``s`` at ``t`` (1 for slots from before the call)."""
    B, H, T, K = k.shape
    N, V = B * H, u.shape[-1]
    opened = seg.boundary.to(k.device).transpose(1, 2).reshape(N, T)
    carry, fresh = initial_open_slot(init, N, K, V, k.dtype, k.device)
    scored = scored_openings(opened, fresh)
    info = opening_scores(k.reshape(N, T, K), u.reshape(N, T, V), g.reshape(N, T), opened, scored, carry,
                          policy.score)
    gates = slot_gates(bg, policy.tau, info, scored).view(B, H, T)
    R = starts.shape[-1]
    rank = (starts[..., None, :] > pos[:, None]).sum(-1)  # [B, H, t, s]
    start = torch.gather(starts, -1, rank.clamp_max(R - 1))
    if not policy.merges:  # dla_unbounded: a slot past the record's ranks starts at the last opening <= s
        last_open = torch.where(opened, pos, -1).cummax(-1).values.view(B, H, 1, T)
        start = torch.where(rank < R, start, last_open.expand_as(start))
    at = torch.gather(gates[:, :, None, :].expand(B, H, T, T), -1, start.clamp(0, T - 1))
    return torch.where(start >= 0, at, torch.ones_like(at))


def _final_state(seg, k, u, D_last, D0_last, init, m0, policy: Policy) -> DLAState:
    """Slots at the last token: each live slot is the decayed sum of its tokens (and initial slots)."""
    B, H, T, K = k.shape
    starts = seg.starts[:, -1].to(k.device)  # [B, H, R] newest first
    m = seg.num_slots[:, -1].to(k.device)  # [B, H]
    R = starts.shape[-1]
    rank_of = lambda p: (starts[..., None, :] > p[..., None]).sum(-1)  # noqa: E731
    pos = torch.arange(T, device=k.device).expand(B, H, T)
    member = rank_of(pos)[..., None] == torch.arange(R, device=k.device)  # [B, H, T, R]
    weight = member.to(k.dtype) * D_last[..., None]
    slots_nf = torch.einsum("bhtr,bhtk,bhtv->bhrkv", weight, k, u)
    counts_nf = member.sum(2)
    info_nf = torch.einsum("bhtr,bht->bhr", member.to(k.dtype), seg.score.transpose(1, 2).to(k.dtype))
    if init is not None:
        j = torch.arange(init.slots.shape[2], device=k.device)
        live = j[None, None] < m0[..., None]
        imember = (rank_of(j[None, None] - m0[..., None])[..., None] == torch.arange(R, device=k.device)) \
            & live[..., None]  # [B, H, C0, R]
        slots_nf = slots_nf + D0_last[..., None, None, None] * torch.einsum(
            "bhjr,bhjkv->bhrkv", imember.to(k.dtype), init.slots.to(k.dtype))
        counts_nf = counts_nf + torch.einsum("bhjr,bhj->bhr", imember.long(), init.counts.to(k.device))
        info_nf = info_nf + torch.einsum("bhjr,bhj->bhr", imember.to(k.dtype), init.info.to(k.dtype))
    # newest-first -> chronological
    order = (m[..., None] - 1 - torch.arange(R, device=k.device)).clamp_min(0)
    keep = torch.arange(R, device=k.device) < m[..., None]
    chrono = lambda x: torch.gather(x, 2, order.view(B, H, R, *([1] * (x.dim() - 3))).expand_as(x))  # noqa: E731
    mask = lambda x: x * keep.view(B, H, R, *([1] * (x.dim() - 3))).to(x.dtype)  # noqa: E731
    slots = mask(chrono(slots_nf))
    open_slot = torch.gather(slots, 2, (m - 1).clamp_min(0).view(B, H, 1, 1, 1).expand(B, H, 1, K, slots.shape[-1]))
    return DLAState(slots, mask(chrono(counts_nf)), mask(chrono(info_nf)), m, (open_slot ** 2).sum((2, 3, 4)),
                    policy)
