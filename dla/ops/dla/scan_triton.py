"""The segmentation scan (DESIGN.md section 4, step 2) as one Triton kernel: what :func:`dla.ops.dla.scan.dla_scan`
computes, decision for decision.

One program per sequence ``n = (b, h)``, sequential over chunks. Per chunk: the open slot's state at the chunk
start ``O [K, V]`` gives ``y`` for an open slot that started before the chunk (one mat-vec), the Gram terms
``exp(gl_t - gl_s) (k_t . k_s)(u_t . u_s)`` give it for one that started inside (two ``tl.dot``); a scalar loop over
the chunk's tokens scores, decides boundaries and merges; at the chunk end ``O`` moves to the next chunk start.

Where things live:
- ``O`` lives in a global scratch buffer ``[N, K, V]`` (read and written once per chunk, tiled over ``V``), so
  registers hold only the ``[BT, BK]`` keys, one ``[BT, BV]`` value tile and two ``[BT, BT]`` Gram blocks.
- The slot bookkeeping (start, count, information sum) is three register vectors of length ``MB`` ordered by
  recency rank (0 = open slot): the record of the ``R`` newest is a slice, an append is a shift by one, a merge of
  the chronological pair ``(i, i+1)`` is a merge of the ranks ``(m-2-i, m-1-i)``. ``MB`` holds every live slot
  for ``dla``, ``fixed``, ``fenwick`` and ``single``. ``dla_unbounded`` never merges, so its registers keep only
  the ``MB >= R`` newest slots and every slot is written to the final arrays when it closes (older slots of an
  initial state are written by the host).

Limits: ``K <= 256`` (one key block), any ``V`` (tiled), any ``chunk_size >= 1`` (padded to a power of two
``>= 16``), any capacity (``MB`` = the next power of two; merges cost ``O(MB^2)`` per boundary). float32 on GPU;
float64 runs under the interpreter (on an H100 at ``K = V = 128`` it needs more shared memory than there is).
Scores are computed and compared with ``tau`` in the input dtype, with IEEE-rounded division and square root and
libdevice's ``exp`` on GPU, so near-threshold decisions agree with the reference.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from dla.ops.common.score import EPS, SCORES
from dla.ops.common.state import POLICIES, UNUSED_START, DLAState
from dla.ops.dla.scan import ScanResult, _Slots

_UNUSED = tl.constexpr(UNUSED_START)
_POLICY_ID = {name: i for i, name in enumerate(POLICIES)}  # single, fenwick, fixed, dla_unbounded, dla
_SINGLE = tl.constexpr(_POLICY_ID["single"])
_FENWICK = tl.constexpr(_POLICY_ID["fenwick"])
_FIXED = tl.constexpr(_POLICY_ID["fixed"])
_UNBOUNDED = tl.constexpr(_POLICY_ID["dla_unbounded"])
_DLA = tl.constexpr(_POLICY_ID["dla"])


@triton.jit
def _score(x, y, z, n, eps, c_n, sqrt_n_c, USE_DRIFT: tl.constexpr, USE_RN: tl.constexpr):
    """``score.py``'s ``drift_score`` / ``write_score``, operation for operation, with ``v = S_open + s_t`` (drift)
    or ``v = s_t`` (write): ``w2 = ||v||^2``, ``d2 = w2 - x`` passed exactly. USE_RN: IEEE-rounded sqrt and
    division (float32 on NVIDIA: plain sqrt and / are approximate there; float64 is always rounded)."""
    x = tl.maximum(x, 0.0)
    if USE_DRIFT:
        w2 = tl.maximum(x + 2 * y + z, 0.0)
        d2 = 2 * y + z
    else:
        w2 = tl.maximum(z, 0.0)
        d2 = w2 - x
    p = tl.sqrt_rn(x) if USE_RN else tl.sqrt(x)
    w = tl.sqrt_rn(w2) if USE_RN else tl.sqrt(w2)
    rho_x = tl.sqrt_rn(tl.div_rn(x, n) + eps) if USE_RN else tl.sqrt(x / n + eps)
    rho_w = tl.sqrt_rn(tl.div_rn(w2, n) + eps) if USE_RN else tl.sqrt(w2 / n + eps)
    if USE_DRIFT:
        # p w - <S_open, v> = (z - (w - p)^2) / 2 with w - p = (2y + z) / (p + w)
        pw = tl.where(p + w > 0, p + w, 1.0)
        d = tl.where(p + w > 0, tl.div_rn(d2, pw) if USE_RN else d2 / pw, 0.0)
        angle = tl.div_rn(z - d * d, rho_w * rho_x) if USE_RN else (z - d * d) / (rho_w * rho_x)
    else:
        angle = tl.div_rn(2 * (p * w - y), rho_w * rho_x) if USE_RN else 2 * (p * w - y) / (rho_w * rho_x)
    # |N(v)| - |N(S_open)| without cancellation (score.py::_norm_gap)
    sp = tl.sqrt_rn(p * p + c_n) if USE_RN else tl.sqrt(p * p + c_n)
    sw = tl.sqrt_rn(w * w + c_n) if USE_RN else tl.sqrt(w * w + c_n)
    den = (w * sp + p * sw) * sw * sp
    safe = tl.where(den > 0, den, 1.0)
    gap = tl.where(den > 0, tl.div_rn(sqrt_n_c * d2, safe) if USE_RN else sqrt_n_c * d2 / safe, 0.0)
    num = tl.sqrt_rn(tl.maximum(gap * gap + angle, 0.0)) if USE_RN else tl.sqrt(tl.maximum(gap * gap + angle, 0.0))
    return tl.div_rn(num, tl.div_rn(p, rho_x) + eps) if USE_RN else num / (p / rho_x + eps)


@triton.jit
def _push(b_pos, b_cnt, b_info, t, info_t, o_r):
    """Append the slot ``(t, 1, info_t)`` as rank 0: every rank moves one older (the last one drops)."""
    m_sh = o_r[None, :] == o_r[:, None] - 1  # [MB, MB] out[r] = b[r - 1]
    b_pos = tl.where(o_r == 0, t, tl.sum(tl.where(m_sh, b_pos[None, :], 0), 1))
    b_cnt = tl.where(o_r == 0, 1, tl.sum(tl.where(m_sh, b_cnt[None, :], 0), 1))
    b_info = tl.where(o_r == 0, info_t, tl.sum(tl.where(m_sh, b_info[None, :], 0.0), 1))
    return b_pos, b_cnt, b_info


@triton.jit
def _merge(b_pos, b_cnt, b_info, m, o_r, PICK: tl.constexpr, USE_RN: tl.constexpr):
    """Merge the ranks ``(q, q + 1)`` into rank ``q`` (older start, summed count and information); return the
    arrays and ``q``. PICK: ``q`` of the pair of lowest density ``(I_a + I_b) / (n_a + n_b)``, ties to the oldest
    pair (largest ``q``, i.e. smallest chronological index); otherwise ``q = 0`` (Fenwick carry)."""
    m_sh = o_r[None, :] == o_r[:, None] + 1  # [MB, MB] out[r] = b[r + 1]
    s_pos = tl.sum(tl.where(m_sh, b_pos[None, :], 0), 1)
    s_cnt = tl.sum(tl.where(m_sh, b_cnt[None, :], 0), 1)
    s_info = tl.sum(tl.where(m_sh, b_info[None, :], 0.0), 1)
    if PICK:
        m_valid = o_r < m - 1
        b_n = tl.where(m_valid, b_cnt + s_cnt, 1).to(b_info.dtype)
        b_dens = tl.div_rn(b_info + s_info, b_n) if USE_RN else (b_info + s_info) / b_n
        b_dens = tl.where(m_valid, b_dens, float("inf"))
        q = tl.max(tl.where(m_valid & (b_dens == tl.min(b_dens, 0)), o_r, -1), 0)
    else:
        q = tl.max(o_r * 0, 0)
    b_pos = tl.where(o_r < q, b_pos, s_pos)
    b_cnt = tl.where(o_r < q, b_cnt, tl.where(o_r == q, b_cnt + s_cnt, s_cnt))
    b_info = tl.where(o_r < q, b_info, tl.where(o_r == q, b_info + s_info, s_info))
    m_top = o_r >= m - 1  # the rank freed at the old end
    return tl.where(m_top, _UNUSED, b_pos), tl.where(m_top, 0, b_cnt), tl.where(m_top, 0.0, b_info), q


@triton.jit
def _lam_index(b_cnt, o_r, capacity, POLICY: tl.constexpr, NBITS: tl.constexpr):
    if POLICY == _FENWICK:
        # level of a closed slot: bit_length(count)
        b_lvl = tl.zeros_like(b_cnt)
        for i_b in tl.static_range(NBITS):
            b_lvl += ((b_cnt >> i_b) > 0).to(b_cnt.dtype)
        return tl.where(o_r == 0, 0, b_lvl)
    elif POLICY == _UNBOUNDED:
        return tl.minimum(o_r, capacity - 1)
    elif POLICY == _SINGLE:
        return o_r * 0
    else:
        return o_r


@triton.jit(do_not_specialize=["T", "Tp", "NT", "LAST"])
def dla_scan_kernel(
    k, u, g, O, consts, seen, lengths, m_init, x_init,
    pos, cnt, info, m_final, x_final,
    o_score, o_boundary, o_num_slots, o_merged, o_starts, o_lam,
    T, Tp, NT, LAST, M, R, capacity, block_size,
    K: tl.constexpr, V: tl.constexpr, CS: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    MB: tl.constexpr, NBITS: tl.constexpr, POLICY: tl.constexpr, USE_DRIFT: tl.constexpr, USE_RN: tl.constexpr,
    USE_LIBDEVICE: tl.constexpr,
):
    i_n = tl.program_id(0).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    o_r = tl.arange(0, MB)
    m_k = o_k < K
    # score constants in the input dtype: n = K * V, eps, n * eps, sqrt(n) * n * eps, tau
    n_el, eps, c_n = tl.load(consts + 0), tl.load(consts + 1), tl.load(consts + 2)
    sqrt_n_c, tau = tl.load(consts + 3), tl.load(consts + 4)
    p_slots = i_n * M
    seen_n = tl.load(seen + i_n)
    len_n = tl.load(lengths + i_n)  # tokens past it change nothing (right padding)
    m = tl.load(m_init + i_n)
    x_carry = tl.load(x_init + i_n)
    # the slot cache by recency rank: rank r is the chronological slot m-1-r
    m_live = o_r < m
    b_pos = tl.load(pos + p_slots + m - 1 - o_r, mask=m_live, other=_UNUSED)  # [MB]
    b_cnt = tl.load(cnt + p_slots + m - 1 - o_r, mask=m_live, other=0)  # [MB]
    b_info = tl.load(info + p_slots + m - 1 - o_r, mask=m_live, other=0)  # [MB]
    open_start = tl.where(m > 0, tl.sum(tl.where(o_r == 0, b_pos, 0), 0), _UNUSED)

    # while, not for: the interpreter (numpy >= 2) cannot take a runtime int as a range bound
    i_c = 0
    while i_c < NT:
        c = i_c * CS
        m_t = (o_t < CS) & (c + o_t < Tp)
        p_k = k + (i_n * Tp + c + o_t[:, None]) * K + o_k[None, :]
        b_k = tl.load(p_k, mask=m_t[:, None] & m_k[None, :], other=0)  # [BT, BK]
        b_g = tl.load(g + i_n * Tp + c + o_t, mask=m_t, other=0)  # [BT]
        b_gl = tl.cumsum(b_g, 0)  # chunk-local: differences of a global cumsum lose precision
        b_kk = tl.sum(b_k * b_k, 1)  # [BT]
        b_Ak = tl.dot(b_k, tl.trans(b_k), input_precision="ieee")  # [BT, BT]
        b_uu = tl.zeros([BT], dtype=b_g.dtype)
        b_yo = tl.zeros([BT], dtype=b_g.dtype)
        b_Au = tl.zeros([BT, BT], dtype=b_g.dtype)
        for i_v in range(tl.cdiv(V, BV)):
            o_vv = i_v * BV + o_v
            m_v = o_vv < V
            p_u = u + (i_n * Tp + c + o_t[:, None]) * V + o_vv[None, :]
            b_u = tl.load(p_u, mask=m_t[:, None] & m_v[None, :], other=0)  # [BT, BV]
            p_O = O + (i_n * K + o_k[:, None]) * V + o_vv[None, :]
            b_O = tl.load(p_O, mask=m_k[:, None] & m_v[None, :], other=0)  # [BK, BV]
            b_uu += tl.sum(b_u * b_u, 1)
            b_Au += tl.dot(b_u, tl.trans(b_u), input_precision="ieee")
            b_yo += tl.sum(tl.dot(b_k, b_O, input_precision="ieee") * b_u, 1)
        b_z = b_kk * b_uu  # [BT] ||s_t||^2
        b_yo = (libdevice.exp(b_gl) if USE_LIBDEVICE else tl.exp(b_gl)) * b_yo  # [BT] <decayed O, s_t>
        b_d = tl.where((o_t[:, None] > o_t[None, :]) & m_t[:, None], b_gl[:, None] - b_gl[None, :], float("-inf"))
        b_A = (libdevice.exp(b_d) if USE_LIBDEVICE else tl.exp(b_d)) * b_Ak * b_Au  # [BT, BT] Gram, s < t

        b_sc = tl.zeros([BT], dtype=b_g.dtype)
        b_bd = tl.zeros([BT], dtype=tl.int32)
        b_ns = tl.zeros([BT], dtype=tl.int64)
        b_mg = tl.full([BT], -1, dtype=tl.int64)
        n_tok = tl.where(i_c == NT - 1, LAST, CS)
        tt = 0
        while tt < n_tok:
            t = c + tt
            m_tt = o_t == tt
            g_t = 2 * tl.sum(tl.where(m_tt, b_g, 0.0), 0)
            z_t = tl.sum(tl.where(m_tt, b_z, 0.0), 0)
            x = x_carry * (libdevice.exp(g_t) if USE_LIBDEVICE else tl.exp(g_t))
            loc = open_start - c  # the open slot's start, chunk-relative
            # y: against O if the slot started before the chunk, plus its tokens s < t inside the chunk
            y = tl.where(loc < 0, tl.sum(tl.where(m_tt, b_yo, 0.0), 0), 0.0) + \
                tl.sum(tl.where(m_tt[:, None] & (o_t[None, :] >= loc), b_A, 0.0))
            empty = m == 0
            info_t = tl.where(empty, 0.0, _score(x, y, z_t, n_el, eps, c_n, sqrt_n_c, USE_DRIFT, USE_RN))
            if POLICY == _DLA or POLICY == _UNBOUNDED:
                want = info_t >= tau
            elif POLICY == _FIXED:
                want = (seen_n + t) % block_size == 0
            elif POLICY == _FENWICK:
                want = m >= 0
            else:
                want = m < 0
            if POLICY == _DLA or POLICY == _FIXED:
                want = want & (capacity > 1)  # capacity 1: the slot absorbs every token
            active = t < len_n
            opened = (empty | want) & active
            merged = m * 0 - 1
            if POLICY == _DLA or POLICY == _FIXED:
                if opened & (m == capacity) & (capacity >= 2):
                    b_pos, b_cnt, b_info, q = _merge(b_pos, b_cnt, b_info, m, o_r, True, USE_RN)
                    merged = m - 2 - q
                    m = m - 1
            elif POLICY == _FENWICK:
                # binary carry: while the two newest slots hold equal counts, merge them
                n_01 = tl.sum(tl.where(o_r == 0, b_cnt, 0) - tl.where(o_r == 1, b_cnt, 0))  # n_open - n_previous
                carry = opened & (m >= 2) & (n_01 == 0)
                while carry:
                    b_pos, b_cnt, b_info, q = _merge(b_pos, b_cnt, b_info, m, o_r, False, USE_RN)
                    merged = m - 2
                    m = m - 1
                    n_01 = tl.sum(tl.where(o_r == 0, b_cnt, 0) - tl.where(o_r == 1, b_cnt, 0))
                    carry = (m >= 2) & (n_01 == 0)
            if POLICY == _UNBOUNDED:
                # the closing slot never changes again: write it out before it can leave the registers
                m_w = (o_r == 0) & opened & (m > 0)
                tl.store(pos + p_slots + m - 1 - o_r, b_pos, mask=m_w)
                tl.store(cnt + p_slots + m - 1 - o_r, b_cnt, mask=m_w)
                tl.store(info + p_slots + m - 1 - o_r, b_info, mask=m_w)
            if opened:
                b_pos, b_cnt, b_info = _push(b_pos, b_cnt, b_info, t, info_t, o_r)
                m = m + 1
            else:
                b_cnt = tl.where((o_r == 0) & active, b_cnt + 1, b_cnt)
                b_info = tl.where((o_r == 0) & active, b_info + info_t, b_info)
            x_carry = tl.where(active, tl.where(opened, z_t, x + 2 * y + z_t), x_carry)
            open_start = tl.where(opened, t, open_start)

            b_sc = tl.where(m_tt, info_t, b_sc)
            b_bd = tl.where(m_tt, opened.to(tl.int32), b_bd)
            b_ns = tl.where(m_tt, m, b_ns)
            b_mg = tl.where(m_tt, merged, b_mg)
            m_live = o_r < m
            p_rec = (i_n * T + t) * R + o_r
            tl.store(o_starts + p_rec, tl.where(m_live, b_pos, _UNUSED), mask=o_r < R)
            tl.store(o_lam + p_rec, tl.where(m_live, _lam_index(b_cnt, o_r, capacity, POLICY, NBITS), -1),
                     mask=o_r < R)
            tt += 1
        m_rec = (o_t < CS) & (c + o_t < T)
        tl.store(o_score + i_n * T + c + o_t, b_sc, mask=m_rec)
        tl.store(o_boundary + i_n * T + c + o_t, b_bd.to(tl.int8), mask=m_rec)
        tl.store(o_num_slots + i_n * T + c + o_t, b_ns, mask=m_rec)
        tl.store(o_merged + i_n * T + c + o_t, b_mg, mask=m_rec)

        # O <- the open slot's state at the next chunk start
        loc = open_start - c
        gl_last = tl.sum(tl.where(o_t == CS - 1, b_gl, 0.0), 0)
        b_d = tl.where(m_t & (o_t >= loc), gl_last - b_gl, float("-inf"))  # [BT]
        b_kw = tl.load(p_k, mask=m_t[:, None] & m_k[None, :], other=0) * \
            (libdevice.exp(b_d) if USE_LIBDEVICE else tl.exp(b_d))[:, None]  # [BT, BK]
        d_last = libdevice.exp(gl_last) if USE_LIBDEVICE else tl.exp(gl_last)
        for i_v in range(tl.cdiv(V, BV)):
            o_vv = i_v * BV + o_v
            m_v = o_vv < V
            p_u = u + (i_n * Tp + c + o_t[:, None]) * V + o_vv[None, :]
            b_u = tl.load(p_u, mask=m_t[:, None] & m_v[None, :], other=0)  # [BT, BV]
            p_O = O + (i_n * K + o_k[:, None]) * V + o_vv[None, :]
            b_O = tl.load(p_O, mask=m_k[:, None] & m_v[None, :], other=0)  # [BK, BV]
            b_O = tl.where(loc < 0, d_last * b_O, 0.0) + tl.dot(tl.trans(b_kw), b_u, input_precision="ieee")
            tl.store(p_O, b_O, mask=m_k[:, None] & m_v[None, :])
        tl.debug_barrier()  # the next chunk reads O written by other threads
        i_c += 1

    # chronological slot j = m-1-r for the live ranks; the free ranks r >= m fill positions r >= m
    o_j = tl.where(o_r < m, m - 1 - o_r, o_r)
    m_j = o_j < M
    tl.store(pos + p_slots + o_j, b_pos, mask=m_j)
    tl.store(cnt + p_slots + o_j, b_cnt, mask=m_j)
    tl.store(info + p_slots + o_j, b_info, mask=m_j)
    tl.store(m_final + i_n, m)
    tl.store(x_final + i_n, x_carry)


def dla_scan_triton(k: torch.Tensor, u: torch.Tensor, g: torch.Tensor, T: int, *, chunk_size: int, policy: str,
                    tau: float, capacity: int, block_size: int, score: str, R: int,
                    initial_state: Optional[DLAState], lengths: Optional[torch.Tensor] = None) -> ScanResult:
    """Decide boundaries and merges for ``N`` sequences; arguments and returns as :func:`dla.ops.dla.scan.dla_scan`.

    Args:
        k: ``[N, Tp, K]`` keys (heads expanded), ``Tp`` a multiple of ``chunk_size``, ``K <= 256``.
        u: ``[N, Tp, V]`` values or pseudo-values, float32 or float64 (``k`` and ``g`` are cast to its dtype).
        g: ``[N, Tp]`` log-decays.
        T: real length; R: entries per token in the live-slot record.
        lengths: ``[N]`` per-sequence lengths ``<= T`` (right padding with ``k = u = 0``, ``g = 0``: tokens past
            them change nothing), or ``None``.
    Returns:
        :class:`ScanResult`, equal to ``dla_scan``'s on the same inputs (integer fields exactly, scores to
        rounding: matrix products and sums run in another order).

    Example::

        res = dla_scan_triton(k, u, g, T, chunk_size=64, policy="dla", tau=0.6, capacity=30, block_size=64,
                              score="drift", R=30, initial_state=None)
    """
    N, Tp, K = k.shape
    V = u.shape[-1]
    dt, dev = u.dtype, u.device
    if dt not in (torch.float32, torch.float64):
        raise ValueError(f"u: expected float32 or float64, got {dt}")
    if tuple(u.shape[:2]) != (N, Tp) or tuple(g.shape) != (N, Tp):
        raise ValueError(f"u, g: expected [N={N}, Tp={Tp}, V] and [N, Tp], got {tuple(u.shape)}, {tuple(g.shape)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1 or Tp % chunk_size:
        raise ValueError(f"chunk_size: expected an int >= 1 dividing Tp={Tp}, got {chunk_size!r}")
    if K > 256:
        raise ValueError(f"k: the Triton scan holds one key block, K <= 256; got K={K}")
    if policy not in _POLICY_ID:
        raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")
    if score not in ("drift", "write"):
        raise ValueError(f"score: the Triton scan implements 'drift' and 'write', got {score!r} "
                         f"(registered: {sorted(SCORES)})")
    m0 = int(initial_state.num_slots.max()) if initial_state is not None else 0
    M = max({"single": 1, "fenwick": R + 1, "dla_unbounded": m0 + T + 1}.get(policy, capacity),
            initial_state.counts.shape[-1] if initial_state is not None else 0)
    slots = _Slots(N, M, dt, dev, initial_state)
    if initial_state is not None:
        seen = initial_state.counts.reshape(N, -1).sum(-1).to(dev)
        O = initial_state.slots.reshape(N, -1, K, V).to(dev, dt)[slots.rows, (slots.m - 1).clamp_min(0)]
        O = O * (slots.m > 0)[:, None, None]
    else:
        seen = torch.zeros(N, dtype=torch.int64, device=dev)
        O = torch.zeros(N, K, V, dtype=dt, device=dev)
    x0 = (O * O).sum((-1, -2))
    if initial_state is not None and initial_state.open_norm is not None:
        x0 = initial_state.open_norm.reshape(N).to(dev, dt)  # the recursion's value, as a one-pass scan has it
    O = O.contiguous()
    n = K * V
    # the constants as torch rounds Python scalars into the tensors' dtype
    consts = torch.tensor([float(n), EPS, n * EPS, (n ** 0.5) * (n * EPS), tau], dtype=dt, device=dev)
    live_bound = 1 if policy == "dla_unbounded" else M  # dla_unbounded keeps only the newest MB in registers
    MB = max(triton.next_power_of_2(max(live_bound, R)), 2)
    nbits = max(int(seen.max()) + T if N else T, 1).bit_length()

    out = ScanResult(
        score=torch.empty(N, T, dtype=dt, device=dev), boundary=torch.empty(N, T, dtype=torch.int8, device=dev),
        num_slots=torch.empty(N, T, dtype=torch.int64, device=dev),
        merged=torch.empty(N, T, dtype=torch.int64, device=dev),
        starts=torch.empty(N, T, R, dtype=torch.int64, device=dev),
        lam_index=torch.empty(N, T, R, dtype=torch.int64, device=dev),
        pos=slots.pos.contiguous(), counts=slots.n.contiguous(), info=slots.info.contiguous(),
        m=torch.empty(N, dtype=torch.int64, device=dev), open_norm=x0.clone())
    if N == 0:
        out.boundary = out.boundary.bool()
        return out
    if lengths is None:
        lengths = torch.full((N,), T, dtype=torch.int64, device=dev)
    elif tuple(lengths.shape) != (N,):
        raise ValueError(f"lengths: expected [N={N}], got {tuple(lengths.shape)}")
    lengths = lengths.to(dev, torch.int64).contiguous()
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    NT = triton.cdiv(T, chunk_size)  # chunks past T decide nothing
    dla_scan_kernel[(N,)](
        k.to(dt).contiguous(), u.contiguous(), g.to(dt).contiguous(), O, consts, seen.contiguous(), lengths,
        slots.m.contiguous(), x0.contiguous(),
        out.pos, out.counts, out.info, out.m, out.open_norm,
        out.score, out.boundary, out.num_slots, out.merged, out.starts, out.lam_index,
        T, Tp, NT, T - (NT - 1) * chunk_size, M, R, capacity, block_size if policy == "fixed" else 1,
        K=K, V=V, CS=chunk_size, BT=max(triton.next_power_of_2(chunk_size), 16),
        BK=max(triton.next_power_of_2(K), 16), BV=min(max(triton.next_power_of_2(V), 16), 64),
        MB=MB, NBITS=nbits, POLICY=_POLICY_ID[policy], USE_DRIFT=score == "drift", USE_RN=dt == torch.float32,
        USE_LIBDEVICE=dt == torch.float32 and u.is_cuda and not interpret,
        num_warps=4,
    )
    out.boundary = out.boundary.bool()
    return out
