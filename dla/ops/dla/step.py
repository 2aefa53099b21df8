"""One decode step of DLA in PyTorch (DESIGN.md section 6): constant memory and time in the context length.

Fixed shapes and no host synchronisation (except ``dla_unbounded``, whose cache may have to grow), so a
generation loop can be captured in a CUDA graph. Decisions use the open slot's norm as the chunked scan
carries it (``DLAState.open_norm``), so ``chunk_dla`` prefill followed by steps decides as one pass.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from dla.ops.common.merge import lam_index, pick_merge, wants_boundary
from dla.ops.common.score import SCORES
from dla.ops.common.state import POLICIES, DLAState
from dla.ops.dla.chunk import _has_triton


def empty_state(B: int, H: int, K: int, V: int, width: int, dtype=torch.float32, device=None) -> DLAState:
    """An empty slot cache of ``width`` slots (what a sequence starts from)."""
    return DLAState(torch.zeros(B, H, width, K, V, dtype=dtype, device=device),
                    torch.zeros(B, H, width, dtype=torch.int64, device=device),
                    torch.zeros(B, H, width, dtype=dtype, device=device),
                    torch.zeros(B, H, dtype=torch.int64, device=device),
                    torch.zeros(B, H, dtype=dtype, device=device))


def dla_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    lam: Optional[torch.Tensor] = None,
    beta: Optional[torch.Tensor] = None,
    *,
    state: DLAState,
    scale: Optional[float] = None,
    tau: float = 0.6,
    capacity: int = 30,
    policy: str = "dla",
    block_size: int = 64,
    score: str = "drift",
    backend: Optional[str] = None,
) -> Tuple[torch.Tensor, DLAState]:
    """Advance every sequence of the batch by one token.

    Args:
        q, k: ``[B, G, K]``; v: ``[B, H, V]``; g: ``[B, H]`` log-decay; lam: ``[B, H, R]`` or ``None`` (ones);
        beta: ``[B, H]`` (Gated DeltaNet) or ``None``.
        state: the cache to continue from (``chunk_dla(..., output_final_state=True)`` or :func:`empty_state`);
            not modified.
        scale, tau, capacity, policy, block_size, score: as :func:`dla.ops.naive_dla`.
        backend: ``torch``, ``triton`` (:mod:`dla.ops.dla.step_triton`: float32 slots, policies ``dla``,
            ``fixed``, ``single``, ``fenwick``; on CPU only under ``TRITON_INTERPRET=1``), or ``None``: ``triton``
            for CUDA float32 states of those policies when Triton is installed, else ``torch``.

    Returns:
        ``o [B, H, V]`` in the dtype of ``v`` and the new :class:`DLAState` (float32 or float64 slots).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy: unknown {policy!r}; allowed: {', '.join(POLICIES)}")
    if q.dim() != 3 or k.shape != q.shape or v.dim() != 3 or g.shape != v.shape[:2]:
        raise ValueError(f"dla_step: expected q, k [B, G, K], v [B, H, V], g [B, H]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}, g {tuple(g.shape)}")
    B, H, V = v.shape
    K = q.shape[-1]
    if H % q.shape[1]:
        raise ValueError(f"q/k heads ({q.shape[1]}) must divide v heads ({H})")
    rep = H // q.shape[1]
    dt = state.slots.dtype
    R = lam.shape[-1] if lam is not None else 1
    width = {"dla": capacity, "fixed": capacity, "fenwick": R, "single": 1}.get(policy, state.slots.shape[2])
    state = _widen(state, width)
    if backend not in (None, "torch", "triton"):
        raise ValueError(f"backend: expected None, 'torch' or 'triton', got {backend!r}")
    if backend is None:
        backend = "triton" if (state.slots.is_cuda and dt == torch.float32 and policy != "dla_unbounded"
                               and score in ("drift", "write") and _has_triton()) else "torch"
    if backend == "triton":
        from dla.ops.dla.step_triton import dla_step_triton  # lazy: CPU installs may lack Triton

        return dla_step_triton(q, k, v, g, lam, beta, state=state, scale=K ** -0.5 if scale is None else scale,
                               tau=tau, capacity=capacity, policy=policy, block_size=block_size, score=score)
    S, n, info, m = state.slots, state.counts, state.info, state.num_slots
    W = S.shape[2]
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
    I_t = torch.where(empty, torch.zeros_like(x), SCORES[score](x, y, z, K * V))
    want = wants_boundary(policy, I_t, tau, n.sum(-1), block_size, capacity)
    opened = empty | want
    if policy in ("dla", "fixed") and capacity >= 2:
        full = opened & (m == capacity)
        S, n, info, m = _merge(S, n, info, m, pick_merge(info, n, m), full)
    elif policy == "fenwick":
        for _ in range(W):  # at most one carry per level; a fixed count keeps the step free of host syncs
            carry = opened & (m >= 2) & (_at(n, m - 1) == _at(n, m - 2))
            S, n, info, m = _merge(S, n, info, m, (m - 2).clamp_min(0), carry)
    elif policy == "dla_unbounded" and bool((opened & (m == W)).any()):
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
    idx = lam_index(policy, rank.clamp_min(0), n, capacity)
    lam_t = lam.to(dt) if lam is not None else torch.ones(B, H, 1, dtype=dt, device=S.device)
    w = torch.gather(lam_t, -1, idx.clamp(0, lam_t.shape[-1] - 1)) * live
    sc = K ** -0.5 if scale is None else scale
    o = sc * torch.einsum("bhj,bhk,bhjkv->bhv", w, qh, S)
    return o.to(v.dtype), DLAState(S, n, info, m, norm)


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


def _widen(state: DLAState, width: int) -> DLAState:
    C = state.slots.shape[2]
    if C >= width:
        return state
    return DLAState(F.pad(state.slots, (0, 0, 0, 0, 0, width - C)), F.pad(state.counts, (0, width - C)),
                    F.pad(state.info, (0, width - C)), state.num_slots, state.open_norm)
