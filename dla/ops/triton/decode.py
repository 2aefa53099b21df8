"""One decode step as two Triton kernels (``docs/design.md`` section 6): what :func:`dla.ops.chunked.decode.step`
computes, decision for decision, without the dozens of small PyTorch launches per layer.

Both kernels run one program per (value tile, batch x head), so a step uses ``B * H * ceil(V / BV)`` programs:

1. ``_step_stats``: per value tile, the pseudo-value tile ``u`` (Gated DeltaNet reads the decayed backbone state,
   the sum of the live slots) and the tile's share of ``y = <S_open, k u^T>``, ``||u||^2`` and ``||S_open||^2``.
2. ``_step_apply``: every program sums the shares in the same order, so all tiles of a head take the same
   decision (score, boundary, merge pair: :mod:`dla.ops.triton.state_machine`, the scan's rules); then it writes
   its tile of every new slot as a sum of a contiguous run of old slots (a merge joins two runs, a Fenwick carry
   several), plus the token's write, and reads the new slots out with ``lam``.

The old state is not modified (new tensors are returned), so a CUDA graph can replay the step over buffers.
Limits: float32 slot states; ``K <= 256``; policies ``dla``, ``fixed``, ``single``, ``fenwick``
(``dla_unbounded`` may have to grow its cache: the PyTorch step serves it).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from dla.ops.common.policy import Policy
from dla.ops.common.score import EPS
from dla.ops.common.state import DLAState
from dla.ops.triton.state_machine import DLA, FENWICK, FIXED, POLICY_ID, entry, lam_index, merge_at, pick_pair, score
from dla.ops.utils.precision import interpreting

@triton.jit
def _step_stats(
    k, v, g, beta, S, m_in, U, part,
    H, G, W,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NV: tl.constexpr,
    IS_GDN: tl.constexpr, USE_LIBDEVICE: tl.constexpr,
):
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    i_g = i_h // (H // G)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    b_k = tl.load(k + (i_b * G + i_g) * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_vv = tl.load(v + i_bh * V + o_v, mask=m_v, other=0.).to(tl.float32)
    g_t = tl.load(g + i_bh).to(tl.float32)
    a = libdevice.exp(g_t) if USE_LIBDEVICE else tl.exp(g_t)
    m = tl.load(m_in + i_bh)
    p_S = S + i_bh * W * K * V + o_k[:, None] * V + o_v[None, :]
    m_kv = m_k[:, None] & m_v[None, :]
    if IS_GDN:
        # u = beta (v - k^T (a * sum_j S_j))
        b_h = tl.zeros([BK, BV], dtype=tl.float32)
        j = 0
        while j < m:
            b_h += tl.load(p_S + j * K * V, mask=m_kv, other=0.)
            j += 1
        b_u = tl.load(beta + i_bh).to(tl.float32) * (b_vv - tl.sum(b_k[:, None] * (a * b_h), 0))
    else:
        b_u = b_vv
    tl.store(U + i_bh * V + o_v, b_u, mask=m_v)
    b_o = tl.load(p_S + (tl.maximum(m, 1) - 1) * K * V, mask=m_kv & (m > 0), other=0.) * a  # decayed open slot
    y = tl.sum(tl.sum(b_k[:, None] * b_o, 0) * b_u, 0)
    p_part = part + (i_bh * NV + i_v) * 3
    tl.store(p_part + 0, y)
    tl.store(p_part + 1, tl.sum(b_u * b_u, 0))
    tl.store(p_part + 2, tl.sum(tl.sum(b_o * b_o, 1), 0))


@triton.jit
def _step_apply(
    q, k, g, lam, S, cnt_in, info_in, m_in, norm_in, U, part,
    S_out, cnt_out, info_out, m_out, norm_out, o,
    H, G, W, R, capacity, block_size, scale, n_el, eps, c_n, sqrt_n_c, tau,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NV: tl.constexpr, MB: tl.constexpr,
    NBITS: tl.constexpr, POLICY: tl.constexpr, USE_DRIFT: tl.constexpr, HAS_NORM: tl.constexpr,
    HAS_LAM: tl.constexpr, USE_LIBDEVICE: tl.constexpr,
):
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    i_g = i_h // (H // G)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    o_r = tl.arange(0, MB)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]

    b_k = tl.load(k + (i_b * G + i_g) * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_q = tl.load(q + (i_b * G + i_g) * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_u = tl.load(U + i_bh * V + o_v, mask=m_v, other=0.)
    g_t = tl.load(g + i_bh).to(tl.float32)
    a = libdevice.exp(g_t) if USE_LIBDEVICE else tl.exp(g_t)
    # the head's statistics: every tile sums the same shares in the same order
    y, uu, xx = 0.0, 0.0, 0.0
    for i in tl.static_range(NV):
        p_part = part + (i_bh * NV + i) * 3
        y += tl.load(p_part + 0)
        uu += tl.load(p_part + 1)
        xx += tl.load(p_part + 2)
    z = tl.sum(b_k * b_k, 0) * uu
    if HAS_NORM:
        x = tl.load(norm_in + i_bh) * a * a
    else:
        x = xx
    m = tl.load(m_in + i_bh)
    m_w = o_r < W
    b_cnt = tl.load(cnt_in + i_bh * W + o_r, mask=m_w, other=0)
    b_info = tl.load(info_in + i_bh * W + o_r, mask=m_w, other=0.)
    empty = m == 0
    info_t = tl.where(empty, 0.0, score(x, y, z, n_el, eps, c_n, sqrt_n_c, USE_DRIFT, True))
    if POLICY == DLA:
        want = (info_t >= tau) & (capacity > 1)
    elif POLICY == FIXED:
        want = (tl.sum(b_cnt, 0) % block_size == 0) & (capacity > 1)
    elif POLICY == FENWICK:
        want = m >= 0
    else:
        want = m < 0
    opened = empty | want

    # merges on the bookkeeping; b_lo tracks the first old slot of each new slot's run
    b_lo = o_r.to(tl.int64)
    m_old = m
    if POLICY == DLA or POLICY == FIXED:
        if opened & (m == capacity) & (capacity >= 2):
            i_m = pick_pair(b_cnt, b_info, m, o_r, MB, True)
            b_lo, b_cnt, b_info = merge_at(b_lo, b_cnt, b_info, i_m, m, o_r, MB)
            m = m - 1
    elif POLICY == FENWICK:
        carry = opened & (m >= 2) & (entry(b_cnt, o_r, m - 1) == entry(b_cnt, o_r, m - 2))
        while carry:
            b_lo, b_cnt, b_info = merge_at(b_lo, b_cnt, b_info, m - 2, m, o_r, MB)
            m = m - 1
            carry = (m >= 2) & (entry(b_cnt, o_r, m - 1) == entry(b_cnt, o_r, m - 2))
    m_merged = m
    at = tl.where(opened, m, tl.maximum(m - 1, 0))  # the slot the token's write goes to
    b_cnt = tl.where(o_r == at, tl.where(opened, 1, b_cnt + 1), b_cnt)
    b_info = tl.where(o_r == at, tl.where(opened, info_t, b_info + info_t), b_info)
    m = m + opened.to(tl.int64)
    b_rank = m - 1 - o_r
    b_idx = lam_index(b_cnt, tl.maximum(b_rank, 0), capacity, POLICY, NBITS)
    if HAS_LAM:
        b_lam = tl.load(lam + i_bh * R + tl.minimum(tl.maximum(b_idx, 0), R - 1), mask=b_rank >= 0, other=0.)
    else:
        b_lam = tl.where(b_rank >= 0, 1.0, 0.0)
    if i_v == 0:
        tl.store(cnt_out + i_bh * W + o_r, b_cnt, mask=m_w)
        tl.store(info_out + i_bh * W + o_r, b_info, mask=m_w)
        tl.store(m_out + i_bh, m)
        tl.store(norm_out + i_bh, tl.where(opened, z, x + 2 * y + z))

    # slot tiles: new slot j = a * (old slots lo_j .. hi_j) (+ the write at slot `at`); readout on the way
    b_s = b_k[:, None] * b_u[None, :]  # [BK, BV] the token's write
    b_o = tl.zeros([BV], dtype=tl.float32)
    p_S = S + i_bh * W * K * V + o_k[:, None] * V + o_v[None, :]
    p_Sn = S_out + i_bh * W * K * V + o_k[:, None] * V + o_v[None, :]
    j = 0
    while j < W:
        lo = entry(b_lo, o_r, j)
        hi = tl.where(j < m_merged - 1, entry(b_lo, o_r, j + 1) - 1, m_old - 1)
        hi = tl.where(j < m_merged, hi, lo - 1)  # slots past the merged ones hold no old state
        b_acc = tl.zeros([BK, BV], dtype=tl.float32)
        src = lo
        while src <= hi:
            b_acc += tl.load(p_S + src * K * V, mask=m_kv, other=0.)
            src += 1
        b_acc = a * b_acc + tl.where(j == at, 1.0, 0.0) * b_s
        tl.store(p_Sn + j * K * V, b_acc, mask=m_kv)
        w_j = entry(b_lam, o_r, j)
        b_o += w_j * tl.sum(b_q[:, None] * b_acc, 0)
        j += 1
    tl.store(o + i_bh * V + o_v, scale * b_o, mask=m_v)


def step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, lam: Optional[torch.Tensor],
         beta: Optional[torch.Tensor], state: DLAState, policy: Policy, scale: float,
         cfg=None) -> Tuple[torch.Tensor, DLAState]:
    """:func:`dla.ops.chunked.decode.step` on the Triton kernels; arguments already checked and the state already of
    the policy's width (``dla_step`` does both). Returns ``o [B, H, V]`` in the dtype of ``v`` and the new
    :class:`DLAState`."""
    if policy.kind == "dla_unbounded":
        raise ValueError("policy: the Triton step does not implement 'dla_unbounded' (its cache may have to grow); "
                         "use backend='torch'")
    if policy.score not in ("drift", "write"):
        raise ValueError(f"score: the Triton step implements 'drift' and 'write', got {policy.score!r}")
    S = state.slots
    if S.dtype != torch.float32:
        raise ValueError(f"state: the Triton step keeps float32 slots, got {S.dtype}")
    B, H, W, K, V = S.shape
    G = q.shape[1]
    if K > 256:
        raise ValueError(f"k: the Triton step holds one key block, K <= 256; got K={K}")
    dev = S.device
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, min(32, triton.next_power_of_2(V)))
    NV = triton.cdiv(V, BV)
    MB = max(2, triton.next_power_of_2(W + 1))
    n = K * V  # the score's constants go as float32 arguments: no host-to-device copy (CUDA-graph capturable)
    libdev = S.is_cuda and not interpreting()
    c = lambda x: x.contiguous()  # noqa: E731
    m = c(state.num_slots)
    U = torch.empty(B, H, V, dtype=torch.float32, device=dev)
    part = torch.empty(B, H, NV, 3, dtype=torch.float32, device=dev)
    grid = (NV, B * H)
    _step_stats[grid](c(k), c(v), c(g), c(beta) if beta is not None else g, c(S), m, U, part, H, G, W,
                      K=K, V=V, BK=BK, BV=BV, NV=NV, IS_GDN=beta is not None, USE_LIBDEVICE=libdev, num_warps=4)
    S_new = torch.empty_like(S)
    cnt, info = torch.empty_like(state.counts), torch.empty_like(state.info)
    m_new = torch.empty_like(m)
    norm = torch.empty(B, H, dtype=torch.float32, device=dev)
    o = torch.empty(B, H, V, dtype=torch.float32, device=dev)
    R = lam.shape[-1] if lam is not None else 1
    nbits = 32 if policy.kind == "fenwick" else 1  # Fenwick levels of slots up to 2^32 - 1 tokens
    _step_apply[grid](
        c(q), c(k), c(g), c(lam) if lam is not None else g, c(S), c(state.counts), c(state.info), m,
        c(state.open_norm.float()) if state.open_norm is not None else g, U, part,
        S_new, cnt, info, m_new, norm, o,
        H, G, W, R, policy.capacity, policy.block_size, float(scale), float(n), EPS, n * EPS,
        (n ** 0.5) * (n * EPS), float(policy.tau),
        K=K, V=V, BK=BK, BV=BV, NV=NV, MB=MB, NBITS=nbits, POLICY=POLICY_ID[policy.kind],
        USE_DRIFT=policy.score == "drift", HAS_NORM=state.open_norm is not None, HAS_LAM=lam is not None,
        USE_LIBDEVICE=libdev, num_warps=4,
    )
    return o.to(v.dtype), DLAState(S_new, cnt, info, m_new, norm, policy)
