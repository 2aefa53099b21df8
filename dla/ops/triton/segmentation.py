"""The segmentation scan (``docs/design.md`` section 4, step 2) as three Triton kernels: what the PyTorch scan
(:mod:`dla.ops.chunked.segmentation`) computes, decision for decision.

A token's score depends only on the open slot (its start and the tokens since), never on merges: so everything
about a chunk that does not depend on where the open slot started is computed for every possible start, in
parallel, before the sequential part.

1. :func:`dla_scan_gram_kernel`, one program per (chunk, sequence): the Gram terms ``A[t, s] = exp(gl_t - gl_s)
   (k_t . k_s)(u_t . u_s)`` and their row suffix sums ``y[t, j] = sum_{j <= s < t} A[t, s]`` (the open slot's
   ``y`` at token ``t`` when it started at chunk offset ``j``), ``z_t = ||s_t||^2``, and the same suffix sums
   against the previous chunk's tokens (a slot that started there).
2. :func:`dla_scan_scores_kernel`, one single-warp program per (chunk, sequence): for every start ``j`` at once,
   ``x`` by the scan's own recursion and the score ``score[t, j]`` (IEEE divisions and square roots, off the
   sequential path), and ``x_carry`` after the chunk.
3. :func:`dla_scan_kernel`, one program per sequence ``n = (b, h)``, sequential over chunks: the open slot's
   ``y`` against the chunk comes from the tables when the slot started in the previous chunk, else from its state
   at the chunk start ``O [K, V]`` (one product; ``O`` is built only for a slot that outlives a chunk); then its
   ``x`` recursion and scores (one vector); the token loop reads each token's score as one entry (of that vector,
   or of the table at the open slot's start), decides and merges.

Where things live:
- ``O`` lives in a global scratch buffer ``[N, K, V]`` (read and written in ``[scan_block_k, scan_block_v]`` tiles,
  small enough for two programs per SM); the chunk's scores in a per-program scratch ``[N, (BT + 2) * BT]``.
- The slot bookkeeping is register vectors of length ``MB`` (:mod:`dla.ops.triton.state_machine`): an append
  writes entry ``m``, an absorb updates entry ``m - 1``, a merge moves the entries above its pair down by one; the
  per-token record by recency rank ``r = m - 1 - j`` is a scatter store. ``MB`` holds every live slot for ``dla``,
  ``fixed``, ``fenwick`` and ``single``. ``dla_unbounded`` never merges, so its registers are a ring of the ``MB
  >= R`` newest slots and every slot is written to the final arrays when it closes (older slots of an initial
  state are written by the host).

Limits: ``K <= 256`` (one key block in the Gram kernel), any ``V`` (tiled), any ``chunk_size >= 1`` (padded to a
power of two ``>= 16``), any capacity (``MB`` = the next power of two). The tables cost ``(2 BT + 3) BT`` floats
per chunk and sequence (1.65 GB at 65,536 tokens x 48 heads, chunk 64); the scan holds at most
``tuning.scan_table_bytes`` of them, running the three kernels over windows of chunks (the slots, ``O`` and ``x``
carry from one window to the next). float32 on GPU; float64 runs under the interpreter. Scores are computed and
compared with ``tau`` in the input dtype, with IEEE-rounded division and square root and libdevice's ``exp`` on
GPU, so near-threshold decisions agree with the PyTorch scan.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from dla.ops.common.policy import Policy
from dla.ops.common.record import ScanResult, SlotTable, open_slot_start
from dla.ops.common.score import EPS
from dla.ops.common.state import DLAState
from dla.ops.triton.state_machine import (DLA, FENWICK, FIXED, POLICY_ID, UNBOUNDED, UNUSED, entry, lam_index,
                                          merge_at, pick_pair, ranks, score)
from dla.ops.utils.precision import interpreting
from dla.ops.utils.tuning import StageConfig


def table_rows(BT: int) -> int:
    """Rows of ``BT`` floats in each chunk's table: the in-chunk Gram sums and scores (``BT``), ``x_carry``, ``z``,
    the open slot's in-chunk ``y``, and the cross-chunk Gram sums (``BT``)."""
    return 2 * BT + 3


@triton.jit
def u_tile(u, i_n, c, Tp, i_v, o_t, o_v, m_t, V: tl.constexpr, BV: tl.constexpr):
    """Value tile ``i_v`` of the chunk starting at ``c``: ``u [BT, BV]``."""
    o_vv = i_v * BV + o_v
    return tl.load(u + (i_n * Tp + c + o_t[:, None]) * V + o_vv[None, :], mask=m_t[:, None] & (o_vv < V)[None, :],
                   other=0)


@triton.jit
def state_tiles(k, O, i_n, i_kn, c, Tp, i_k, i_v, o_t, o_kt, o_v, m_t, K: tl.constexpr, V: tl.constexpr,
                BKT: tl.constexpr, BV: tl.constexpr):
    """Key tile ``i_k`` of the chunk starting at ``c`` (``k [BT, BKT]``, row ``i_kn`` of ``k``) and the open slot's
    state tile (``O [BKT, BV]``, value tile ``i_v``), with ``O``'s pointers and mask for a store back."""
    o_kk = i_k * BKT + o_kt
    o_vv = i_v * BV + o_v
    m_kk = o_kk < K
    b_k = tl.load(k + (i_kn * Tp + c + o_t[:, None]) * K + o_kk[None, :], mask=m_t[:, None] & m_kk[None, :],
                  other=0)
    p_O = O + (i_n * K + o_kk[:, None]) * V + o_vv[None, :]
    m_O = m_kk[:, None] & (o_vv < V)[None, :]
    return b_k, tl.load(p_O, mask=m_O, other=0), p_O, m_O


@triton.jit
def advance_open(k, u, g, O, i_n, i_kn, c, Tp, open_start, o_t, o_kt, o_v,
                 K: tl.constexpr, V: tl.constexpr, CS: tl.constexpr, BKT: tl.constexpr, BV: tl.constexpr,
                 USE_LIBDEVICE: tl.constexpr, DOT: tl.constexpr):
    """``O <-`` the open slot's state at the end of the chunk starting at ``c`` (decayed ``O`` if the slot
    started before that chunk, plus the chunk's writes from the slot's start on), a ``[BKT, BV]`` tile at a time
    (small tiles: two programs fit on an SM)."""
    m_t = (o_t < CS) & (c + o_t < Tp)
    loc = open_start - c
    b_gl = tl.cumsum(tl.load(g + i_n * Tp + c + o_t, mask=m_t, other=0), 0)
    gl_last = tl.sum(tl.where(o_t == CS - 1, b_gl, 0.0), 0)
    b_d = tl.where(m_t & (o_t >= loc), gl_last - b_gl, float("-inf"))  # [BT]
    b_w = libdevice.exp(b_d) if USE_LIBDEVICE else tl.exp(b_d)
    d_last = libdevice.exp(gl_last) if USE_LIBDEVICE else tl.exp(gl_last)
    for i_v in range(tl.cdiv(V, BV)):
        b_u = u_tile(u, i_n, c, Tp, i_v, o_t, o_v, m_t, V, BV)
        for i_k in range(tl.cdiv(K, BKT)):
            b_k, b_O, p_O, m_O = state_tiles(k, O, i_n, i_kn, c, Tp, i_k, i_v, o_t, o_kt, o_v, m_t, K, V, BKT,
                                             BV)
            b_O = tl.where(loc < 0, d_last * b_O, 0.0) + \
                tl.dot(tl.trans(b_k * b_w[:, None]), b_u, input_precision=DOT)
            tl.store(p_O, b_O, mask=m_O)


@triton.jit(do_not_specialize=["Tp", "C0", "WIN"])
def dla_scan_gram_kernel(
    k, u, g, tab, Tp, C0, WIN,
    K: tl.constexpr, V: tl.constexpr, CS: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_LIBDEVICE: tl.constexpr, DOT: tl.constexpr, HG: tl.constexpr, ROWS: tl.constexpr,
):
    """First half of each chunk's table (``tab [N, WIN, ROWS, BT]`` for chunks ``C0 ..``; one program per
    (chunk, sequence)): rows ``t < BT`` receive ``y[t, j] = sum_{j <= s < t} A[t, s]``, the Gram suffix sums
    (``A[t, s] = exp(gl_t - gl_s) (k_t . k_s)(u_t . u_s)``: the open slot's ``y`` at token ``t`` when it started at
    chunk offset ``j``), row ``BT + 1`` receives ``z_t = ||s_t||^2``. :func:`dla_scan_scores_kernel` turns them into
    scores.

    Row ``BT + 3 + j`` receives ``yx[t, j] = sum_{j <= s < CS} exp(gl_t + gl'[CS-1] - gl'[s])
    (k_t . k'_s)(u_t . u'_s)`` over the previous chunk's tokens ``s`` (primed): the ``y`` of token ``t`` against an
    open slot that started at offset ``j`` of the previous chunk, decay included (zeros for chunk 0)."""
    i_w = tl.program_id(0).to(tl.int64)  # chunk C0 + i_w, row i_w of the table's window of WIN chunks
    i_n = tl.program_id(1).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    c = (C0 + i_w) * CS
    m_t = (o_t < CS) & (c + o_t < Tp)
    m_p = (o_t < CS) & (c > 0)  # the previous chunk's tokens: all real where it exists
    b_k = tl.load(k + ((i_n // HG) * Tp + c + o_t[:, None]) * K + o_k[None, :],
                  mask=m_t[:, None] & (o_k < K)[None, :], other=0)  # one row of k per group of HG sequences
    b_g = tl.load(g + i_n * Tp + c + o_t, mask=m_t, other=0)
    b_gl = tl.cumsum(b_g, 0)  # chunk-local: differences of a global cumsum lose precision
    b_kk = tl.sum(b_k * b_k, 1)  # [BT]
    b_Ak = tl.dot(b_k, tl.trans(b_k), input_precision=DOT)  # [BT, BT]
    b_uu = tl.zeros([BT], dtype=b_g.dtype)
    b_Au = tl.zeros([BT, BT], dtype=b_g.dtype)
    b_Aux = tl.zeros([BT, BT], dtype=b_g.dtype)
    for i_v in range(tl.cdiv(V, BV)):
        b_u = u_tile(u, i_n, c, Tp, i_v, o_t, o_v, m_t, V, BV)
        b_uu += tl.sum(b_u * b_u, 1)
        b_Au += tl.dot(b_u, tl.trans(b_u), input_precision=DOT)
        b_Aux += tl.dot(b_u, tl.trans(u_tile(u, i_n, c - CS, Tp, i_v, o_t, o_v, m_p, V, BV)),
                        input_precision=DOT)
    b_d = tl.where((o_t[:, None] > o_t[None, :]) & m_t[:, None], b_gl[:, None] - b_gl[None, :], float("-inf"))
    b_A = (libdevice.exp(b_d) if USE_LIBDEVICE else tl.exp(b_d)) * b_Ak * b_Au  # [BT, BT] Gram, s < t
    p_tab = tab + (i_n * WIN + i_w) * ROWS * BT
    tl.store(p_tab + o_t[:, None] * BT + o_t[None, :], tl.cumsum(b_A, 1, reverse=True))
    tl.store(p_tab + (BT + 1) * BT + o_t, b_kk * b_uu)
    b_kp = tl.load(k + ((i_n // HG) * Tp + c - CS + o_t[:, None]) * K + o_k[None, :],
                   mask=m_p[:, None] & (o_k < K)[None, :], other=0)
    b_gp = tl.cumsum(tl.load(g + i_n * Tp + c - CS + o_t, mask=m_p, other=0), 0)
    gp_last = tl.sum(tl.where(o_t == CS - 1, b_gp, 0.0), 0)
    b_dx = tl.where(m_t[:, None] & m_p[None, :], b_gl[:, None] + (gp_last - b_gp)[None, :], float("-inf"))
    b_X = (libdevice.exp(b_dx) if USE_LIBDEVICE else tl.exp(b_dx)) * \
        tl.dot(b_k, tl.trans(b_kp), input_precision=DOT) * b_Aux  # [t, s]
    # stored [j, t]: the sequential kernel reads one start's column as a contiguous row
    tl.store(p_tab + (BT + 3 + o_t[None, :]) * BT + o_t[:, None], tl.cumsum(b_X, 1, reverse=True))


@triton.jit(do_not_specialize=["Tp", "C0", "WIN"])
def dla_scan_scores_kernel(
    g, tab, consts, Tp, C0, WIN, CS: tl.constexpr, BT: tl.constexpr,
    USE_DRIFT: tl.constexpr, USE_RN: tl.constexpr, USE_LIBDEVICE: tl.constexpr, ROWS: tl.constexpr,
):
    """Second half of each chunk's table, after :func:`dla_scan_gram_kernel`; one program (one warp) per (chunk,
    sequence), vectors over the start ``j``:

    - rows ``t < BT`` become ``score[t, j]``, token ``t``'s score when the open slot started at chunk offset
      ``j < t`` (entries ``j >= t`` are meaningless), with ``x`` by the scan's own recursion (``x = x_carry
      exp(2 g_t)``, then ``x_carry = x + 2 y + z``);
    - row ``BT`` receives ``x_carry`` after the chunk's last token for each start ``j``;
    - row ``BT + 2`` receives ``y[t, 0]`` (the open slot's ``y`` inside the chunk when it started before it, less
      the part against its state at the chunk start).

    The sequential kernel then reads a token's score as one entry: the IEEE divisions and square roots of every
    candidate start run here, in parallel, instead of on its token loop's critical path.
    """
    i_w = tl.program_id(0).to(tl.int64)
    i_n = tl.program_id(1).to(tl.int64)
    o_t = tl.arange(0, BT)
    n_el, eps, c_n = tl.load(consts + 0), tl.load(consts + 1), tl.load(consts + 2)
    sqrt_n_c = tl.load(consts + 3)
    c = (C0 + i_w) * CS
    p_tab = tab + (i_n * WIN + i_w) * ROWS * BT
    b_x = tl.zeros([BT], dtype=tab.dtype.element_ty)
    for t in range(BT):
        b_y = tl.load(p_tab + t * BT + o_t)  # y[t, j]
        z_t = tl.load(p_tab + (BT + 1) * BT + t)
        g_t = 2 * tl.load(g + i_n * Tp + c + t, mask=(t < CS) & (c + t < Tp), other=0)
        b_xt = b_x * (libdevice.exp(g_t) if USE_LIBDEVICE else tl.exp(g_t))
        tl.store(p_tab + (BT + 2) * BT + t + o_t * 0, b_y, mask=o_t == 0)
        tl.store(p_tab + t * BT + o_t, score(b_xt, b_y, z_t, n_el, eps, c_n, sqrt_n_c, USE_DRIFT, USE_RN))
        b_x = tl.where(o_t == t, z_t, b_xt + 2 * b_y + z_t)  # opened at t, or absorbed by the slot from j < t
    tl.store(p_tab + BT * BT + o_t, b_x)


@triton.jit(do_not_specialize=["T", "Tp", "NT", "LAST", "C0", "C1", "WIN"])
def dla_scan_kernel(
    k, u, g, O, W, tab, consts, seen, lengths, m_init, x_init,
    pos, cnt, info, m_final, x_final,
    o_score, o_boundary, o_num_slots, o_merged, o_starts, o_lam,
    T, Tp, NT, LAST, C0, C1, WIN, M, R, capacity, block_size,
    K: tl.constexpr, V: tl.constexpr, CS: tl.constexpr, BT: tl.constexpr, BKT: tl.constexpr, BV: tl.constexpr,
    MB: tl.constexpr, NBITS: tl.constexpr, POLICY: tl.constexpr, USE_DRIFT: tl.constexpr, USE_RN: tl.constexpr,
    USE_LIBDEVICE: tl.constexpr, DOT: tl.constexpr, HG: tl.constexpr, ROWS: tl.constexpr,
):
    i_n = tl.program_id(0).to(tl.int64)
    i_kn = i_n // HG  # the row of k: one per group of HG sequences
    o_t = tl.arange(0, BT)
    o_kt = tl.arange(0, BKT)
    o_v = tl.arange(0, BV)
    o_r = tl.arange(0, MB)
    # score constants in the input dtype: n = K * V, eps, n * eps, sqrt(n) * n * eps, tau
    n_el, eps, c_n = tl.load(consts + 0), tl.load(consts + 1), tl.load(consts + 2)
    sqrt_n_c, tau = tl.load(consts + 3), tl.load(consts + 4)
    p_slots = i_n * M
    # this program's scratch: rows 0..BT-1 the chunk's scores, BT: those with the open slot from before it, BT+1: its y
    p_W = W + i_n * (BT + 2) * BT
    seen_n = tl.load(seen + i_n)
    len_n = tl.load(lengths + i_n)  # tokens past it change nothing (right padding)
    m = tl.load(m_init + i_n)
    x_carry = tl.load(x_init + i_n)
    # the slot cache, chronological: register entry p holds slot j = m-1-rank(p) (the newest MB for a ring)
    b_rank = ranks(m, o_r, MB)
    m_live = b_rank < m
    b_pos = tl.load(pos + p_slots + m - 1 - b_rank, mask=m_live, other=UNUSED)  # [MB]
    b_cnt = tl.load(cnt + p_slots + m - 1 - b_rank, mask=m_live, other=0)  # [MB]
    b_info = tl.load(info + p_slots + m - 1 - b_rank, mask=m_live, other=0)  # [MB]
    open_start = tl.where(m > 0, entry(b_pos, b_rank, 0), UNUSED)

    # while, not for: the interpreter (numpy >= 2) cannot take a runtime int as a range bound
    i_c = C0  # this launch: chunks C0 .. C1 - 1, the table's window
    while i_c < C1:
        c = i_c * CS
        # a slot that started in the previous chunk needs no state (its y comes from the cross-chunk table); one
        # that started two chunks back gets its state built over both chunks; older ones move it over one chunk
        lazy = (i_c > 0) & (open_start >= c - CS)  # open_start < 0: an initial state's slot, or none
        if i_c > 0:
            if (open_start >= 0) & (open_start >= c - 2 * CS) & (open_start < c - CS):
                advance_open(k, u, g, O, i_n, i_kn, c - 2 * CS, Tp, open_start, o_t, o_kt, o_v, K, V, CS,
                             BKT, BV, USE_LIBDEVICE, DOT)
                tl.debug_barrier()
            if not lazy:
                # the open slot's state moves over the previous chunk here, where no scalar loop state is live
                advance_open(k, u, g, O, i_n, i_kn, c - CS, Tp, open_start, o_t, o_kt, o_v, K, V, CS, BKT, BV,
                             USE_LIBDEVICE, DOT)
                tl.debug_barrier()  # O is read below by other threads
        # the slot open at the chunk start started before it: its y against O, then its x recursion and scores
        m_t = (o_t < CS) & (c + o_t < Tp)
        p_tab = tab + (i_n * WIN + i_c - C0) * ROWS * BT
        b_gl = tl.cumsum(tl.load(g + i_n * Tp + c + o_t, mask=m_t, other=0), 0)
        if lazy:  # the cross-chunk table's row for the slot's start in the previous chunk (decay included)
            b_yo = tl.load(p_tab + (BT + 3 + tl.maximum(open_start - (c - CS), 0)) * BT + o_t)
        else:
            b_yo = tl.zeros([BT], dtype=b_gl.dtype)
            for i_v in range(tl.cdiv(V, BV)):
                b_kO = tl.zeros([BT, BV], dtype=b_gl.dtype)
                for i_k in range(tl.cdiv(K, BKT)):
                    b_k, b_O, _, _ = state_tiles(k, O, i_n, i_kn, c, Tp, i_k, i_v, o_t, o_kt, o_v, m_t, K, V,
                                                 BKT, BV)
                    b_kO += tl.dot(b_k, b_O, input_precision=DOT)
                b_yo += tl.sum(b_kO * u_tile(u, i_n, c, Tp, i_v, o_t, o_v, m_t, V, BV), 1)
            b_yo = (libdevice.exp(b_gl) if USE_LIBDEVICE else tl.exp(b_gl)) * b_yo  # [BT] <decayed O, s_t>
        b_y = b_yo + tl.load(p_tab + (BT + 2) * BT + o_t)  # plus the chunk's own tokens s < t
        b_z = tl.load(p_tab + (BT + 1) * BT + o_t)
        tl.store(p_W + (BT + 1) * BT + o_t, b_y)
        tl.store(p_W + o_t[:, None] * BT + o_t[None, :], tl.load(p_tab + o_t[:, None] * BT + o_t[None, :]))
        tl.debug_barrier()  # the recursion below reads what other threads wrote
        # the scan's recursion of x, token by token: scalar loads (no reductions), x_t placed into a vector
        b_x = tl.zeros([BT], dtype=b_gl.dtype)
        x_o = x_carry
        for tt in tl.static_range(BT):
            g_t = 2 * tl.load(g + i_n * Tp + c + tt, mask=(tt < CS) & (c + tt < Tp), other=0)
            x_t = x_o * (libdevice.exp(g_t) if USE_LIBDEVICE else tl.exp(g_t))
            b_x = tl.where(o_t == tt, x_t, b_x)
            x_o = x_t + 2 * tl.load(p_W + (BT + 1) * BT + tt) + tl.load(p_tab + (BT + 1) * BT + tt)
        tl.store(p_W + BT * BT + o_t, score(b_x, b_y, b_z, n_el, eps, c_n, sqrt_n_c, USE_DRIFT, USE_RN))
        tl.debug_barrier()  # the token loop reads what other threads wrote

        n_tok = tl.where(i_c == NT - 1, LAST, CS)
        # a token's score: row BT (open slot from before the chunk) or entry [t, start] of the chunk's table;
        # loaded one token ahead for both outcomes of the current decision (off the loop's latency)
        info_next = tl.load(p_W + BT * BT)
        tt = 0
        while tt < n_tok:
            t = c + tt
            loc = open_start - c
            t_n = tl.minimum(tt + 1, BT - 1)
            info_keep = tl.load(p_W + tl.where(loc < 0, BT * BT + t_n, t_n * BT + loc))
            info_open = tl.load(p_W + t_n * BT + tt)
            empty = m == 0
            info_t = tl.where(empty, 0.0, info_next)
            if POLICY == DLA or POLICY == UNBOUNDED:
                want = info_t >= tau
            elif POLICY == FIXED:
                want = (seen_n + t) % block_size == 0
            elif POLICY == FENWICK:
                want = m >= 0
            else:
                want = m < 0
            if POLICY == DLA or POLICY == FIXED:
                want = want & (capacity > 1)  # capacity 1: the slot absorbs every token
            active = t < len_n
            opened = (empty | want) & active
            merged = m * 0 - 1
            if POLICY == DLA or POLICY == FIXED:
                if opened & (m == capacity) & (capacity >= 2):
                    i_m = pick_pair(b_cnt, b_info, m, o_r, MB, USE_RN)
                    b_pos, b_cnt, b_info = merge_at(b_pos, b_cnt, b_info, i_m, m, o_r, MB)
                    merged = m * 0 + i_m
                    m = m - 1
            elif POLICY == FENWICK:
                # binary carry: while the two newest slots hold equal counts, merge them
                carry = opened & (m >= 2) & (entry(b_cnt, o_r, m - 1) == entry(b_cnt, o_r, m - 2))
                while carry:
                    b_pos, b_cnt, b_info = merge_at(b_pos, b_cnt, b_info, m - 2, m, o_r, MB)
                    merged = m - 2
                    m = m - 1
                    carry = (m >= 2) & (entry(b_cnt, o_r, m - 1) == entry(b_cnt, o_r, m - 2))
            if POLICY == UNBOUNDED:
                # the closing slot never changes again: write it out before the ring can drop it
                m_w = (ranks(m, o_r, MB) == 0) & opened & (m > 0)
                tl.store(pos + p_slots + m - 1 + o_r * 0, b_pos, mask=m_w)
                tl.store(cnt + p_slots + m - 1 + o_r * 0, b_cnt, mask=m_w)
                tl.store(info + p_slots + m - 1 + o_r * 0, b_info, mask=m_w)
            if opened:
                m_new = o_r == m % MB
                b_pos = tl.where(m_new, t, b_pos)
                b_cnt = tl.where(m_new, 1, b_cnt)
                b_info = tl.where(m_new, info_t, b_info)
                m = m + 1
            elif active:
                m_open = o_r == (m - 1 + MB) % MB
                b_cnt = tl.where(m_open, b_cnt + 1, b_cnt)
                b_info = tl.where(m_open, b_info + info_t, b_info)
            open_start = tl.where(opened, t, open_start)
            info_next = tl.where(opened, info_open, info_keep)

            p_tok = i_n * T + t
            tl.store(o_score + p_tok, info_t)
            tl.store(o_boundary + p_tok, opened.to(tl.int8))
            tl.store(o_num_slots + p_tok, m)
            tl.store(o_merged + p_tok, merged)
            # the live-slot record by recency rank: live entries scatter to their rank, the rest is unused
            b_rank = ranks(m, o_r, MB)
            m_live = b_rank < m
            p_rec = p_tok * R
            tl.store(o_starts + p_rec + b_rank, b_pos, mask=m_live & (b_rank < R))
            tl.store(o_lam + p_rec + b_rank, lam_index(b_cnt, b_rank, capacity, POLICY, NBITS),
                     mask=m_live & (b_rank < R))
            tl.store(o_starts + p_rec + o_r, tl.full([MB], UNUSED, tl.int64), mask=(o_r >= m) & (o_r < R))
            tl.store(o_lam + p_rec + o_r, tl.full([MB], -1, tl.int64), mask=(o_r >= m) & (o_r < R))
            tt += 1
        # x_carry after the chunk: the table's entry for the open slot's start, or the recursion above
        loc = open_start - c
        x_carry = tl.where(loc < 0, x_o, tl.load(p_tab + BT * BT + tl.maximum(loc, 0)))
        tl.debug_barrier()  # the next chunk rewrites the scratch other threads read
        i_c += 1

    # live entries to their chronological slot; free entries (only while m <= MB) keep their unused values
    b_rank = ranks(m, o_r, MB)
    o_j = tl.where(b_rank < m, m - 1 - b_rank, o_r)
    m_j = o_j < M
    tl.store(pos + p_slots + o_j, b_pos, mask=m_j)
    tl.store(cnt + p_slots + o_j, b_cnt, mask=m_j)
    tl.store(info + p_slots + o_j, b_info, mask=m_j)
    tl.store(m_final + i_n, m)
    tl.store(x_final + i_n, x_carry)


@torch.no_grad()
def scan(k: torch.Tensor, u: torch.Tensor, g: torch.Tensor, T: int, *, policy: Policy, chunk_size: int, R: int,
         initial_state: Optional[DLAState], lengths: Optional[torch.Tensor] = None, heads_per_group: int = 1,
         cfg: Optional[StageConfig] = None) -> ScanResult:
    """Decide boundaries and merges for ``N`` sequences; arguments and returns as :func:`dla.ops.chunked.segmentation.scan`
    (integer fields equal, scores to rounding: matrix products and sums run in another order).

    Args:
        k: ``[N / heads_per_group, Tp, K]``, one row per group of ``heads_per_group`` consecutive sequences (heads
            sharing their keys, read from the cache by the group's programs), ``Tp`` a multiple of ``chunk_size``,
            ``K <= 256``.
        u: ``[N, Tp, V]`` values or pseudo-values, float32 or float64 (``k`` and ``g`` are cast to its dtype).
        g: ``[N, Tp]`` log-decays.
        cfg: its ``tuning`` gives the warps, the state tile and the table budget. Products take three TF32 passes
            (float32-accurate) for float32 on a GPU, IEEE float32 or float64 otherwise, whatever ``cfg.dot``.

    Example::

        res = scan(k, u, g, T, policy=Policy("dla", tau=0.6, capacity=30), chunk_size=64, R=30, initial_state=None)
    """
    tuning = (cfg or StageConfig()).tuning
    N, Tp, V = u.shape
    K = k.shape[-1]
    dt, dev = u.dtype, u.device
    if isinstance(heads_per_group, bool) or not isinstance(heads_per_group, int) or heads_per_group < 1 or \
            k.dim() != 3 or k.shape[0] * heads_per_group != N or k.shape[1] != Tp:
        raise ValueError(f"k: expected [N / heads_per_group, Tp, K] = [{N} / {heads_per_group!r}, {Tp}, K] for u "
                         f"{tuple(u.shape)}, got {tuple(k.shape)}")
    if dt not in (torch.float32, torch.float64):
        raise ValueError(f"u: expected float32 or float64, got {dt}")
    if tuple(g.shape) != (N, Tp):
        raise ValueError(f"g: expected [N={N}, Tp={Tp}], got {tuple(g.shape)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1 or Tp % chunk_size:
        raise ValueError(f"chunk_size: expected an int >= 1 dividing Tp={Tp}, got {chunk_size!r}")
    if K > 256:
        raise ValueError(f"k: the Triton scan holds one key block, K <= 256; got K={K}")
    if policy.score not in ("drift", "write"):
        raise ValueError(f"score: the Triton scan implements 'drift' and 'write', got {policy.score!r}")
    interpret = interpreting()
    DOT = "tf32x3" if dt == torch.float32 and u.is_cuda and not interpret else "ieee"
    m0 = int(initial_state.num_slots.max()) if initial_state is not None else 0
    M = max(policy.slot_bound(R, m0, T), initial_state.counts.shape[-1] if initial_state is not None else 0)
    slots = SlotTable(N, M, dt, dev, initial_state)
    seen, O, x0 = open_slot_start(initial_state, N, K, V, dt, dev, slots)
    O = O.contiguous()
    BT = max(triton.next_power_of_2(chunk_size), 16)
    W = torch.empty(N, (BT + 2) * BT, dtype=dt, device=dev)  # per-program scratch of one chunk's scores
    n = K * V
    # the constants as torch rounds Python scalars into the tensors' dtype
    consts = torch.tensor([float(n), EPS, n * EPS, (n ** 0.5) * (n * EPS), policy.tau], dtype=dt, device=dev)
    live_bound = 1 if policy.kind == "dla_unbounded" else M  # dla_unbounded keeps only the newest MB in registers
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
    if N == 0 or T == 0:
        out.boundary, out.m = out.boundary.bool(), slots.m.clone()
        return out
    if lengths is None:
        lengths = torch.full((N,), T, dtype=torch.int64, device=dev)
    elif tuple(lengths.shape) != (N,):
        raise ValueError(f"lengths: expected [N={N}], got {tuple(lengths.shape)}")
    lengths = lengths.to(dev, torch.int64).contiguous()
    NT = triton.cdiv(T, chunk_size)  # chunks past T decide nothing
    k, u, g = k.to(dt).contiguous(), u.contiguous(), g.to(dt).contiguous()
    BK, BV = max(triton.next_power_of_2(K), 16), min(max(triton.next_power_of_2(V), 16), 32)
    USE_LIBDEVICE = dt == torch.float32 and u.is_cuda and not interpret
    BKT, BVT = min(BK, tuning.scan_block_k), min(BV, tuning.scan_block_v)
    # each chunk's scores for every start inside it, in parallel: windows of WIN chunks bound the tables
    ROWS = table_rows(BT)
    per_chunk = N * ROWS * BT * u.element_size()
    WIN = max(1, min(NT, tuning.scan_table_bytes // per_chunk))
    tab = torch.empty(N, WIN, ROWS, BT, dtype=dt, device=dev)
    m_in, x_in = slots.m.contiguous(), x0.contiguous()
    for c0 in range(0, NT, WIN):
        c1 = min(NT, c0 + WIN)
        dla_scan_gram_kernel[(c1 - c0, N)](k, u, g, tab, Tp, c0, WIN, K=K, V=V, CS=chunk_size, BT=BT, BK=BK,
                                           BV=BV, USE_LIBDEVICE=USE_LIBDEVICE, DOT=DOT, HG=heads_per_group,
                                           ROWS=ROWS, num_warps=4)
        dla_scan_scores_kernel[(c1 - c0, N)](g, tab, consts, Tp, c0, WIN, CS=chunk_size, BT=BT,
                                             USE_DRIFT=policy.score == "drift", USE_RN=dt == torch.float32,
                                             USE_LIBDEVICE=USE_LIBDEVICE, ROWS=ROWS, num_warps=1)
        # the slots, the open slot's state O and x continue from the previous window (in place)
        dla_scan_kernel[(N,)](
            k, u, g, O, W, tab, consts, seen.contiguous(), lengths, m_in, x_in,
            out.pos, out.counts, out.info, out.m, out.open_norm,
            out.score, out.boundary, out.num_slots, out.merged, out.starts, out.lam_index,
            T, Tp, NT, T - (NT - 1) * chunk_size, c0, c1, WIN, M, R, policy.capacity,
            policy.block_size if policy.kind == "fixed" else 1,
            K=K, V=V, CS=chunk_size, BT=BT, BKT=BKT, BV=BVT,
            MB=MB, NBITS=nbits, POLICY=POLICY_ID[policy.kind], USE_DRIFT=policy.score == "drift",
            USE_RN=dt == torch.float32, USE_LIBDEVICE=USE_LIBDEVICE, DOT=DOT, HG=heads_per_group, ROWS=ROWS,
            num_warps=tuning.scan_warps,
        )
        m_in, x_in = out.m, out.open_norm
    out.boundary = out.boundary.bool()
    return out
