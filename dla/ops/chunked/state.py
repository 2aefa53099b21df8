"""Slot states in the chunked form: the readout terms of an initial state's slots and the final state, both from
the backbone's prefix states (PyTorch, differentiable; used by both backends: they touch ``C`` slots, not ``T``
tokens)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dla.ops.common.policy import Policy
from dla.ops.common.record import ScanResult
from dla.ops.common.state import UNUSED_START, DLAState


def initial_terms(q, ldec, x, dlam, virtual, init: DLAState, piece_bytes: int) -> torch.Tensor:
    """The telescoping terms of the boundaries between slots of ``init`` (virtual positions ``j - m0 < 0``):
    ``[B, H, T, V]``.

    ``q [B, H, T, K]``; ``ldec [B, H, T]``: ``log D(-1, t)``; ``x, dlam, virtual [B, H, T, R1]``. Computed in pieces
    of tokens of about ``piece_bytes`` (one ``split``, so the backward has one node per input, not one per piece).
    """
    B, H, T, K = q.shape
    m0 = init.num_slots.to(q.device)
    S = init.slots.to(q.dtype)  # [B, H, C0, K, V]
    Vpre = (torch.cumsum(S, 2) - S).flatten(2, 3)  # V_j = sum_{i < j} S_i, [B, H, C0 * K, V]
    C0 = S.shape[2]
    j = (x + m0[:, :, None, None]).clamp(0, C0 - 1)
    w = torch.where(virtual, dlam, torch.zeros_like(dlam))
    coef = w.new_zeros(B, H, T, C0).scatter_add(-1, j, w) * torch.exp(ldec)[..., None]  # [B, H, T, C0]
    n = max(1, piece_bytes // (B * H * C0 * K * q.element_size()))
    return torch.cat([(c[..., None] * qp[..., None, :]).flatten(-2) @ Vpre
                      for c, qp in zip(coef.split(n, 2), q.split(n, 2))], 2)


def final_state(k, u, gl, P, S_last, seg, scan: ScanResult, init, width: int, BT: int,
                policy: Policy) -> DLAState:
    """Slot states from prefix states at the live boundaries: ``S_j = Pfull(next start) - Pfull(start)``.

    ``k [B, H, Tp, K]``, ``u [B, H, Tp, V]``, ``gl [B, H, NT, BT]``, ``P [B, H, NT, K, V]``, ``S_last [B, H, K, V]``,
    ``seg [B, H, NT + 1, NT + 1]``; ``width``: the state's slot dimension."""
    B, H, _, K = k.shape
    V, NT = u.shape[-1], gl.shape[2]
    pos = _fit(scan.pos.view(B, H, -1), width, UNUSED_START)
    m = scan.m.view(B, H)
    j = torch.arange(width, device=k.device)
    live = j < m[..., None]
    real = live & (pos >= 0)
    x = pos.clamp_min(0)
    cx = torch.div(x, BT, rounding_mode="floor").clamp_max(NT - 1)
    Pg = torch.gather(P, 2, cx[..., None, None].expand(B, H, width, K, V))
    full = torch.exp(torch.gather(seg[:, :, NT], -1, cx))[..., None, None] * Pg  # D(cx - 1, T - 1) P_cx
    Kg = torch.gather(k.view(B, H, NT, BT, K), 2, cx[..., None, None].expand(B, H, width, BT, K))
    Ug = torch.gather(u.view(B, H, NT, BT, V), 2, cx[..., None, None].expand(B, H, width, BT, V))
    glg = torch.gather(gl, 2, cx[..., None].expand(B, H, width, BT))
    w = torch.exp(glg[..., -1:] - glg + torch.gather(seg[:, :, NT], -1, cx + 1)[..., None])
    w = w * (torch.arange(BT, device=k.device) < (x - cx * BT)[..., None])
    full = full + torch.einsum("bhms,bhmsk,bhmsv->bhmkv", w, Kg, Ug)
    full = full * real[..., None, None]
    if init is not None:
        m0 = init.num_slots.to(k.device)
        S = init.slots.to(k.dtype)
        Vpre = torch.cumsum(S, 2) - S
        vj = (pos + m0[..., None]).clamp(0, S.shape[2] - 1)
        virt = torch.gather(Vpre, 2, vj[..., None, None].expand(B, H, width, K, V))
        dec = torch.exp(seg[:, :, NT, 0])[..., None, None, None]
        full = full + dec * virt * (live & (pos < 0))[..., None, None]
    # Pfull at each slot's end: the next slot's start, or the final state for the open slot
    nxt = torch.cat([full[:, :, 1:], torch.zeros_like(full[:, :, :1])], 2)
    is_open = (j == (m[..., None] - 1))[..., None, None]
    nxt = torch.where(is_open, S_last[:, :, None], nxt)
    slots = (nxt - full) * live[..., None, None]
    counts = _fit(scan.counts.view(B, H, -1), width, 0) * live
    info = _fit(scan.info.view(B, H, -1), width, 0) * live
    return DLAState(slots, counts, info, m, scan.open_norm.view(B, H), policy)


def _fit(x: torch.Tensor, width: int, fill) -> torch.Tensor:
    """Cut or pad the last dimension to ``width``."""
    if x.shape[-1] >= width:
        return x[..., :width]
    return F.pad(x, (0, width - x.shape[-1]), value=fill)
