"""The chunked form in plain PyTorch (DESIGN.md section 4): the CPU fallback of every layer.

1. The backbone's chunk pass: pseudo-values (Gated DeltaNet: UT transform per chunk), chunk states ``P_c``
   and the plain output.
2. The segmentation scan (:mod:`dla.ops.dla.scan`), without gradient.
3. The readout: the backbone output weighted by ``lam`` of the open slot, plus, per live boundary ``x``, the
   telescoping term ``dlam * D(x-1, t) q_t^T P_x`` where ``P_x`` is rebuilt from its chunk's state and the
   masked intra-chunk products. Per query chunk only the key chunks holding live boundaries are touched,
   so the cost is ``O(T C)``.

Autograd through these ops gives exact gradients for ``q, k, v, g, beta, lam``.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from dla.ops.common.state import UNUSED_START, DLAState, Segmentation, state_width
from dla.ops.dla.scan import ScanResult, dla_scan
from dla.ops.utils.checks import check_dla_args


def chunk_dla_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    lam: Optional[torch.Tensor] = None,
    beta: Optional[torch.Tensor] = None,
    *,
    scale: Optional[float] = None,
    tau: float = 0.6,
    capacity: int = 30,
    policy: str = "dla",
    block_size: int = 64,
    score: str = "drift",
    initial_state: Optional[DLAState] = None,
    output_final_state: bool = False,
    return_segmentation: bool = False,
    chunk_size: int = 64,
    backend: str = "torch",
    lengths: Optional[torch.Tensor] = None,
):
    """Chunked DLA in PyTorch; arguments and returns as :func:`dla.ops.naive_dla` (additive transition).

    ``chunk_size``: tokens per chunk (any ``>= 1``; 64 matches the kernels). Computation runs in float64
    for float64 inputs and float32 otherwise; the output has the dtype of ``v``.
    ``backend``: ``torch``, or ``triton`` for the Triton segmentation scan and boundary readout (float32; the
    readout's backward recomputes the PyTorch form; needs ``chunk_size >= 16`` and a power of two).
    ``lengths``: ``[B]`` lengths of right-padded rows whose padding has ``k = v = 0``, ``g = 0`` (and ``beta = 0``):
    the scan ignores tokens past them, so final states and decisions are those of the unpadded rows.
    """
    dims = check_dla_args(q, k, v, g, lam, beta, scale=scale, tau=tau, capacity=capacity, policy=policy,
                          block_size=block_size, score=score, slot_transition="additive",
                          initial_state=initial_state)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected an int >= 1, got {chunk_size!r}")
    if backend not in ("torch", "triton"):
        raise ValueError(f"backend: expected 'torch' or 'triton', got {backend!r}")
    if backend == "triton" and (chunk_size < 16 or chunk_size & (chunk_size - 1)):
        raise ValueError(f"chunk_size: the triton backend needs a power of two >= 16, got {chunk_size}")
    B, T, H, K, V, R = dims.B, dims.T, dims.H, dims.K, dims.V, dims.R
    dt = torch.promote_types(v.dtype, torch.float32)
    BT = chunk_size
    NT = max((T + BT - 1) // BT, 1)
    pad = NT * BT - T
    rep = H // dims.G
    # [B, H, Tp, *]: padded tokens write nothing (k = 0) and do not decay (g = 0)
    qh, kh = (F.pad(x.to(dt).repeat_interleave(rep, dim=2).transpose(1, 2), (0, 0, 0, pad)) for x in (q, k))
    vh = F.pad(v.to(dt).transpose(1, 2), (0, 0, 0, pad))
    gh = F.pad(g.to(dt).transpose(1, 2), (0, pad))
    bh = F.pad(beta.to(dt).transpose(1, 2), (0, pad)) if beta is not None else None
    lamh = (lam.to(dt) if lam is not None else torch.ones(B, T, H, R, dtype=dt, device=v.device)).transpose(1, 2)

    S0 = initial_state.slots.to(dt).sum(2) if initial_state is not None else \
        torch.zeros(B, H, K, V, dtype=dt, device=v.device)
    u, P, o_base, S_last, gl = _backbone(qh, kh, vh, gh, bh, S0, BT)

    scan_fn = dla_scan
    if backend == "triton" and dt == torch.float32:
        from dla.ops.dla.scan_triton import dla_scan_triton  # lazy: CPU installs may lack Triton
        scan_fn = dla_scan_triton
    with torch.no_grad():
        N = B * H
        scan = scan_fn(kh.detach().reshape(N, -1, K), u.detach().reshape(N, -1, V), gh.reshape(N, -1), T,
                        chunk_size=BT, policy=policy, tau=tau, capacity=capacity, block_size=block_size,
                        score=score, R=R, initial_state=initial_state,
                        lengths=None if lengths is None else lengths.to(v.device).repeat_interleave(H))
    starts = scan.starts.view(B, H, T, R)
    lam_index = scan.lam_index.view(B, H, T, R)

    # block sums of log-decay: seg[i, c] = sum of chunk totals c..i-1 (0 for c >= i); i, c in 0..NT
    seg = F.pad(_block_segsum(gl[..., -1]), (0, 1))

    o = _readout(qh, kh, u, gl, P, o_base, lamh, starts, lam_index, seg, initial_state, BT, T, backend)
    o = (o * dims.scale)[:, :, :T].transpose(1, 2).to(v.dtype)
    final = None
    if output_final_state:
        width = state_width(policy, capacity, R, int(scan.m.max()))
        final = _final_state(kh, u, gl, P, S_last, seg, scan, initial_state, width, BT)
    if not return_segmentation:
        return o, final
    view = lambda x: x.view(B, H, T, *x.shape[2:]).transpose(1, 2)  # noqa: E731
    segm = Segmentation(score=view(scan.score), boundary=view(scan.boundary), num_slots=view(scan.num_slots),
                        merged=view(scan.merged), starts=view(scan.starts), lam_index=view(scan.lam_index))
    return o, final, segm


def _block_segsum(tot: torch.Tensor) -> torch.Tensor:
    """``[..., NT] -> [..., NT + 1, NT]``: ``out[i, c] = sum_{c <= c' < i} tot[c']`` by a masked cumsum."""
    NT = tot.shape[-1]
    keep = torch.ones(NT + 1, NT, dtype=torch.bool, device=tot.device).tril(-1)  # c < i
    x = tot[..., None, :].expand(*tot.shape[:-1], NT + 1, NT).masked_fill(~keep, 0)
    return x.flip(-1).cumsum(-1).flip(-1)  # sum over c' >= c (and < i by the mask)


def _backbone(q, k, v, g, beta, S0, BT):
    """Chunk pass of the backbone: pseudo-values, chunk-start states, plain output ``q^T S_t``.

    Everything inside a chunk is computed for all chunks at once; only the state recurrence
    ``S_{c+1} = a_c S_c + dS_c`` (Gated DeltaNet: ``S_{c+1} = (a_c I - M_c) S_c + dS_c``) runs over chunks.

    Returns ``u [B, H, Tp, V]``, ``P [B, H, NT, K, V]`` (state before each chunk), ``o [B, H, Tp, V]``, the final
    state and the chunk-local inclusive log-decay cumsums ``gl [B, H, NT, BT]``.
    """
    B, H, Tp, K = k.shape
    V, NT = v.shape[-1], Tp // BT
    qc, kc, vc = (x.view(B, H, NT, BT, x.shape[-1]) for x in (q, k, v))
    gl = g.view(B, H, NT, BT).cumsum(-1)
    mask = torch.ones(BT, BT, dtype=torch.bool, device=k.device).tril()
    D = torch.exp((gl[..., :, None] - gl[..., None, :]).masked_fill(~mask, float("-inf")))  # [B, H, NT, t, s]
    a = torch.exp(gl[..., -1])  # [B, H, NT] decay over each chunk
    kw = kc * torch.exp(gl[..., -1:] - gl)[..., None]  # k_s D(s, chunk end)
    if beta is None:
        dS = kw.transpose(-1, -2) @ vc  # [B, H, NT, K, V]
        Ps, S = [], S0
        for c in range(NT):
            Ps.append(S)
            S = a[:, :, c, None, None] * S + dS[:, :, c]
        P = torch.stack(Ps, 2)
        u = vc
    else:
        # UT transform: (I + A) u = beta (v - exp(gl) k S_c), A[t, s] = beta_t D(t, s) k_t.k_s for s < t
        bc = beta.view(B, H, NT, BT)[..., None]
        A = (bc * D * (kc @ kc.transpose(-1, -2))).masked_fill(~mask.tril(-1), 0)
        eye = torch.eye(BT, dtype=k.dtype, device=k.device)
        solve = lambda rhs: torch.linalg.solve_triangular(A + eye, rhs, upper=False, unitriangular=True)  # noqa
        U0, W = solve(bc * vc), solve(bc * torch.exp(gl)[..., None] * kc)  # u = U0 - W S_c
        M, dS = kw.transpose(-1, -2) @ W, kw.transpose(-1, -2) @ U0  # [B, H, NT, K, K], [B, H, NT, K, V]
        Ps, S = [], S0
        for c in range(NT):
            Ps.append(S)
            S = a[:, :, c, None, None] * S - M[:, :, c] @ S + dS[:, :, c]
        P = torch.stack(Ps, 2)
        u = U0 - W @ P
    o = torch.exp(gl)[..., None] * (qc @ P) + ((qc @ kc.transpose(-1, -2)) * D) @ u
    return u.reshape(B, H, Tp, V), P, o.reshape(B, H, Tp, V), S, gl


def _readout(q, k, u, gl, P, o_base, lam, starts, lam_index, seg, init, BT, T, backend="torch"):
    """``lam_open * o_base`` plus the telescoping boundary terms (real boundaries, then initial-state ones)."""
    Tp = k.shape[2]
    idx0 = lam_index[..., 0].clamp_min(0)
    lam0 = torch.gather(lam, -1, idx0[..., None])[..., 0]  # [B, H, T]
    nxt_valid = lam_index[..., 1:] >= 0
    # dlam[t, r] = lam[idx(r+1)] - lam[idx(r)] across the boundary at the start of the rank-r slot
    lam_r = torch.gather(lam, -1, lam_index.clamp_min(0))
    dlam = torch.where(nxt_valid, lam_r[..., 1:] - lam_r[..., :-1], torch.zeros_like(lam_r[..., 1:]))  # [B,H,T,R-1]
    x = starts[..., :-1]  # boundary positions [B, H, T, R-1]
    real = nxt_valid & (x >= 0)
    o = F.pad(lam0, (0, Tp - T))[..., None] * o_base
    if x.shape[-1] > 0 and backend == "triton":
        from dla.ops.dla.readout_fwd import BoundaryTerms
        o = o + F.pad(BoundaryTerms.apply(q, k, u, gl, P, dlam, x, real, BT), (0, 0, 0, Tp - T))
    elif x.shape[-1] > 0:
        o = o + F.pad(boundary_terms(q, k, u, gl, P, seg, x, dlam, real, BT), (0, 0, 0, Tp - T))
    if init is not None:
        virtual = nxt_valid & (x < 0)
        parts = [_initial_terms(q[:, :, t0:t0 + BT][:, :, :T - t0], gl[:, :, i, :min(BT, T - t0)], seg[:, :, i, 0],
                                x[:, :, t0:t0 + BT], dlam[:, :, t0:t0 + BT], virtual[:, :, t0:t0 + BT], init)
                 for i, t0 in enumerate(range(0, T, BT))]
        o = o + F.pad(torch.cat(parts, 2), (0, 0, 0, Tp - T))
    return o


def boundary_candidates(x: torch.Tensor, real: torch.Tensor, BT: int):
    """Per query chunk, the key chunks that can hold a live boundary, and each boundary's place among them.

    Args:
        x: ``[B, H, T, R1]`` boundary positions; real: ``[B, H, T, R1]`` which of them are live and ``>= 0``.
    Returns:
        ``cand [B, H, NT, R1 + 1]`` sorted candidate chunks (those of the boundaries live before the query chunk,
        and the chunk itself; duplicates possible), ``jidx [B, H, T, R1]`` the first candidate equal to each
        boundary's chunk (-1 where not real), ``off [B, H, T, R1]`` its offset inside that chunk.
    """
    B, H, T, R1 = x.shape
    NT = (T + BT - 1) // BT
    cx = torch.where(real, torch.div(x, BT, rounding_mode="floor"), -1)
    i = torch.arange(NT, device=x.device)
    prev_t = (i * BT - 1).clamp_min(0)
    prev = cx[:, :, prev_t]  # [B, H, NT, R1] chunks of the boundaries live at the token before each chunk
    prev = torch.where((prev >= 0) & (i[:, None] > 0), prev, i[:, None])
    cand = torch.cat([prev, i[None, None, :, None].expand(B, H, NT, 1)], -1).sort(-1).values
    tok_chunk = torch.arange(T, device=x.device) // BT
    rows = cand[:, :, tok_chunk]  # [B, H, T, R1 + 1]
    jidx = torch.searchsorted(rows.contiguous(), cx.clamp_min(0).contiguous())
    jidx = torch.where(real, jidx, -1)
    found = torch.gather(rows, -1, jidx.clamp(0, R1))
    if bool((real & (found != cx)).any()):
        raise RuntimeError("boundary_candidates: a live boundary outside the candidate chunks (internal error)")
    return cand, jidx, (x - cx * BT).clamp(0, BT - 1)


def boundary_terms(q, k, u, gl, P, seg, x, dlam, real, BT):
    """``sum_x dlam_t(x) D(x-1, t) q_t^T P_x`` over each token's live real boundaries: ``[B, H, T, V]``.

    PyTorch, one query chunk at a time, each under activation checkpointing (the backward keeps only inputs).
    """
    B, H, Tp, K = k.shape
    V, T = u.shape[-1], x.shape[2]
    NT = Tp // BT
    cand, jidx, off = boundary_candidates(x, real, BT)
    J = cand.shape[-1]
    Kc, Uc = k.view(B, H, NT, BT, K), u.view(B, H, NT, BT, V)
    outs = []
    for i in range(NT):
        t0, t1 = i * BT, min((i + 1) * BT, T)
        if t1 <= t0:
            break
        ji = jidx[:, :, t0:t1]
        sel = (ji[..., None] == torch.arange(J, device=k.device)).to(q.dtype)  # [B, H, n, R1, J]
        terms = functools.partial(_chunk_terms, i=i, cand=cand[:, :, i], sel=sel, p=off[:, :, t0:t1], BT=BT)
        args = (q[:, :, t0:t1], gl[:, :, i, :t1 - t0], dlam[:, :, t0:t1], P, Kc, Uc, gl, seg[:, :, i])
        if torch.is_grad_enabled() and any(a.requires_grad for a in args):
            outs.append(checkpoint(terms, *args, use_reentrant=False))  # keeps only the inputs for the backward
        else:
            outs.append(terms(*args))
    return torch.cat(outs, 2)


def _chunk_terms(qi, gli, dl, P, Kc, Uc, gl, seg_i, *, i, cand, sel, p, BT):
    """The boundary terms of query chunk ``i``: ``sum_x dlam_t(x) D(x-1, t) q_t^T P_x`` over its live boundaries.

    ``cand [B, H, J]``: candidate key chunks; ``sel [B, H, n, R-1, J]``: which candidate holds each boundary;
    ``p [B, H, n, R-1]``: the boundary's offset inside its key chunk.
    """
    B, H, n, K = qi.shape
    V, NT, J, R1 = Uc.shape[-1], P.shape[2], cand.shape[-1], dl.shape[-1]
    s_idx = torch.arange(BT, device=qi.device)
    # part A: sum_x dlam D(cx - 1, t) q_t^T P_cx
    decA = torch.exp(torch.gather(seg_i, -1, cand)[:, :, None, :] + gli[..., None])  # [B, H, n, J]
    coefA = torch.einsum("bhtr,bhtrj->bhtj", dl, sel) * decA
    Pg = torch.gather(P, 2, cand[..., None, None].expand(B, H, J, K, V))
    part = (coefA[..., None] * torch.einsum("bhtk,bhjkv->bhtjv", qi, Pg)).sum(3)
    # part B: sum_x dlam sum_{cx <= s < x} D(s, t) (q_t . k_s) u_s
    scat = torch.zeros(B, H, n, J, BT, dtype=qi.dtype, device=qi.device)
    scat = scat.scatter_add(-1, p[:, :, :, None, :].expand(B, H, n, J, R1), (dl[..., None] * sel).transpose(-1, -2))
    wsum = torch.cat([scat.flip(-1).cumsum(-1).flip(-1)[..., 1:], scat.new_zeros(B, H, n, J, 1)], -1)  # p > s
    Kg = torch.gather(Kc, 2, cand[..., None, None].expand(B, H, J, BT, K))
    Ug = torch.gather(Uc, 2, cand[..., None, None].expand(B, H, J, BT, V))
    glg = torch.gather(gl, 2, cand[..., None].expand(B, H, J, BT))
    cur = (cand == i)[:, :, None, :, None]
    old = (glg[..., -1:] - glg)[:, :, None] + torch.gather(seg_i, -1, cand + 1)[:, :, None, :, None] \
        + gli[..., None, None]
    same = gli[..., None, None] - glg[:, :, None]
    expo = torch.where(cur, same, old)
    ok_s = ~cur | (s_idx[None, None, None, None, :] <= torch.arange(n, device=qi.device)[None, None, :, None, None])
    W = wsum * torch.exp(expo.masked_fill(~ok_s, float("-inf")))
    qk = torch.einsum("bhtk,bhjsk->bhtjs", qi, Kg)
    return part + torch.einsum("bhtjs,bhjsv->bhtv", W * qk, Ug)


def _initial_terms(qi, gli, seg0, xi, dl, virtual, init):
    """Boundaries between slots of ``initial_state`` (virtual positions ``j - m0 < 0``)."""
    B, H, n, K = qi.shape
    m0 = init.num_slots.to(qi.device)
    S = init.slots.to(qi.dtype)  # [B, H, C0, K, V]
    Vpre = torch.cumsum(S, 2) - S  # V_j = sum_{i < j} S_i
    C0 = S.shape[2]
    j = (xi + m0[:, :, None, None]).clamp(0, C0 - 1)
    sel = torch.nn.functional.one_hot(j, C0).to(qi.dtype) * virtual[..., None]
    coef = torch.einsum("bhtr,bhtrj->bhtj", dl, sel) * torch.exp(seg0[..., None, None] + gli[..., None])
    return (coef[..., None] * torch.einsum("bhtk,bhjkv->bhtjv", qi, Vpre)).sum(3)


def _final_state(k, u, gl, P, S_last, seg, scan: ScanResult, init, M, BT) -> DLAState:
    """Slot states from prefix states at the live boundaries: ``S_j = Pfull(next start) - Pfull(start)``."""
    B, H, _, K = k.shape
    V, NT = u.shape[-1], gl.shape[2]
    pos = _fit(scan.pos.view(B, H, -1), M, UNUSED_START)
    m = scan.m.view(B, H)
    j = torch.arange(M, device=k.device)
    live = j < m[..., None]
    real = live & (pos >= 0)
    x = pos.clamp_min(0)
    cx = torch.div(x, BT, rounding_mode="floor").clamp_max(NT - 1)
    Pg = torch.gather(P, 2, cx[..., None, None].expand(B, H, M, K, V))
    full = torch.exp(torch.gather(seg[:, :, NT], -1, cx))[..., None, None] * Pg  # D(cx - 1, T - 1) P_cx
    Kg = torch.gather(k.view(B, H, NT, BT, K), 2, cx[..., None, None].expand(B, H, M, BT, K))
    Ug = torch.gather(u.view(B, H, NT, BT, V), 2, cx[..., None, None].expand(B, H, M, BT, V))
    glg = torch.gather(gl, 2, cx[..., None].expand(B, H, M, BT))
    w = torch.exp(glg[..., -1:] - glg + torch.gather(seg[:, :, NT], -1, cx + 1)[..., None])
    w = w * (torch.arange(BT, device=k.device) < (x - cx * BT)[..., None])
    full = full + torch.einsum("bhms,bhmsk,bhmsv->bhmkv", w, Kg, Ug)
    full = full * real[..., None, None]
    if init is not None:
        m0 = init.num_slots.to(k.device)
        S = init.slots.to(k.dtype)
        Vpre = torch.cumsum(S, 2) - S
        vj = (pos + m0[..., None]).clamp(0, S.shape[2] - 1)
        virt = torch.gather(Vpre, 2, vj[..., None, None].expand(B, H, M, K, V))
        dec = torch.exp(seg[:, :, NT, 0])[..., None, None, None]
        full = full + dec * virt * (live & (pos < 0))[..., None, None]
    # Pfull at each slot's end: the next slot's start, or the final state for the open slot
    nxt = torch.cat([full[:, :, 1:], torch.zeros_like(full[:, :, :1])], 2)
    is_open = (j == (m[..., None] - 1))[..., None, None]
    nxt = torch.where(is_open, S_last[:, :, None], nxt)
    slots = (nxt - full) * live[..., None, None]
    counts = _fit(scan.counts.view(B, H, -1), M, 0) * live
    info = _fit(scan.info.view(B, H, -1), M, 0) * live
    return DLAState(slots, counts, info, m, scan.open_norm.view(B, H))


def _fit(x: torch.Tensor, width: int, fill) -> torch.Tensor:
    """Cut or pad the last dimension to ``width``."""
    if x.shape[-1] >= width:
        return x[..., :width]
    return F.pad(x, (0, width - x.shape[-1]), value=fill)
