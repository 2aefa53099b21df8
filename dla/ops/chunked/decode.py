"""One decode step in PyTorch (``docs/design.md`` section 6): constant memory and time in the context length.

Fixed shapes and no host synchronisation (except ``dla_unbounded``, whose cache may have to grow), so a
generation loop can be captured in a CUDA graph. Decisions use the open slot's norm as the chunked scan
carries it (``DLAState.open_norm``), so a ``chunk_dla`` prefill followed by steps decides as one pass.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from dla.ops.common.merge import pick_merge
from dla.ops.common.policy import Policy
from dla.ops.common.score import SCORES
from dla.ops.common.state import DLAState


def step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, lam: Optional[torch.Tensor],
         beta: Optional[torch.Tensor], state: DLAState, policy: Policy, scale: float,
         cfg=None) -> Tuple[torch.Tensor, DLAState]:
    """Advance every sequence by one token; arguments as :func:`dla.ops.dla_step`, already checked, ``state`` of
    the policy's width (``cfg`` unused). Returns ``o [B, H, V]`` in ``v``'s dtype and the new state."""
    S, n, info, m = state.slots, state.counts, state.info, state.num_slots
    B, H, W, K, V = S.shape
    dt = S.dtype
    rep = H // q.shape[1]
    qh, kh = (x.to(dt).repeat_interleave(rep, dim=1) for x in (q, k))  # [B, H, K]
    a = torch.exp(g.to(dt))
    S = S * a[..., None, None, None]
    if beta is None:
        u = v.to(dt)
    else:
        u = beta.to(dt)[..., None] * (v.to(dt) - torch.einsum("bhk,bhkv->bhv", kh, S.sum(2)))
    s = kh[..., :, None] * u[..., None, :]  # [B, H, K, V]
    rows = torch.arange(W, device=S.device)
    last = (m - 1).clamp_min(0)
    S_open = torch.gather(S, 2, last[..., None, None, None].expand(B, H, 1, K, V))[:, :, 0]
    x = state.open_norm.to(dt) * a * a if state.open_norm is not None else (S_open * S_open).sum((-1, -2))
    y = (S_open * s).sum((-1, -2))
    z = (kh * kh).sum(-1) * (u * u).sum(-1)
    empty = m == 0
    I_t = torch.where(empty, torch.zeros_like(x), SCORES[policy.score](x, y, z, K * V))
    opened = empty | policy.wants_boundary(I_t, n.sum(-1))
    if policy.merges and policy.capacity >= 2:
        full = opened & (m == policy.capacity)
        S, n, info, m = _merge(S, n, info, m, pick_merge(info, n, m), full)
    elif policy.kind == "fenwick":
        for _ in range(W):  # at most one carry per level; a fixed count keeps the step free of host syncs
            carry = opened & (m >= 2) & (_at(n, m - 1) == _at(n, m - 2))
            S, n, info, m = _merge(S, n, info, m, (m - 2).clamp_min(0), carry)
    elif policy.kind == "dla_unbounded" and bool((opened & (m == W)).any()):
        S, n, info = F.pad(S, (0, 0, 0, 0, 0, W)), F.pad(n, (0, W)), F.pad(info, (0, W))
        W, rows = 2 * W, torch.arange(2 * W, device=S.device)
    at = torch.where(opened, m, (m - 1).clamp_min(0))
    hit = (rows == at[..., None])  # [B, H, W]
    S = torch.where((hit & opened[..., None])[..., None, None], s[:, :, None], S + hit[..., None, None] * s[:, :, None])
    n = torch.where(hit, torch.where(opened[..., None], 1, n + 1), n)
    info = torch.where(hit, torch.where(opened[..., None], I_t[..., None], info + I_t[..., None]), info)
    m = m + opened.long()
    norm = torch.where(opened, z, x + 2 * y + z)
    # readout: rank r = m - 1 - j; lam index by policy
    rank = m[..., None] - 1 - rows
    live = rank >= 0
    idx = policy.lam_index(rank.clamp_min(0), n)
    lam_t = lam.to(dt) if lam is not None else torch.ones(B, H, 1, dtype=dt, device=S.device)
    w = torch.gather(lam_t, -1, idx.clamp(0, lam_t.shape[-1] - 1)) * live
    o = scale * torch.einsum("bhj,bhk,bhjkv->bhv", w, qh, S)
    return o.to(v.dtype), DLAState(S, n, info, m, norm, policy)


def _at(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, -1, i.clamp_min(0)[..., None])[..., 0]


def _merge(S, n, info, m, i, mask):
    """Where ``mask``: merge the adjacent pair ``(i, i+1)`` of every cache (fixed shapes)."""
    W = S.shape[2]
    j = torch.arange(W, device=S.device)
    src = (j + (j > i[..., None]).long()).clamp_max(W - 1)  # [B, H, W]
    nxt = (i + 1).clamp_max(W - 1)
    at_i = (j == i[..., None])
    top = j >= (m[..., None] - 1)
    S_new = torch.gather(S, 2, src[..., None, None].expand_as(S))
    S_new = S_new + at_i[..., None, None] * torch.gather(S, 2, nxt[..., None, None, None].expand(
        *S.shape[:2], 1, *S.shape[3:]))
    n_new = torch.gather(n, 2, src) + at_i * _at(n, nxt)[..., None]
    info_new = torch.gather(info, 2, src) + at_i * _at(info, nxt)[..., None]
    S_new, n_new, info_new = S_new * ~top[..., None, None], n_new * ~top, info_new * ~top
    mk = mask[..., None]
    return (torch.where(mk[..., None, None], S_new, S), torch.where(mk, n_new, n), torch.where(mk, info_new, info),
            m - mask.long())
