"""The readout of the chunked form in PyTorch (``docs/design.md`` section 4, step 3; ``docs/math.md`` section 7).

    o_t = scale * (lam_{t, open} * o_base_t + sum over live boundaries x of dlam_t(x) D(x-1, t) q_t^T P_x)

Three stages, each a forward and a backward:

- :func:`lam_fwd` / :func:`lam_bwd`: ``lam0`` (the open slot's weight) and ``dlam`` (the telescoping differences
  across each live boundary) from ``lam`` and the live-slot record.
- :func:`readout_fwd` / :func:`readout_bwd`: the boundary terms. Per query chunk only the distinct key chunks
  holding live boundaries are touched (:func:`readout_plan`), a group of query chunks at a time; the backward
  recomputes each group and accumulates into one buffer per input, so its memory stays linear in the chunks.
- :func:`combine_fwd` / :func:`combine_bwd`: ``scale * (lam0 * o_base + terms)`` in the caller's layout and dtype.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from dla.ops.chunked.layout import chunk_segsum
from dla.ops.utils.index import compact_index


# ---------------------------------------------------------------- lam weights

def lam_fwd(lam: torch.Tensor, lam_index: torch.Tensor, dtype: torch.dtype):
    """``lam0 [B, H, T]`` (the open slot's ``lam``) and ``dlam [B, H, T, R - 1]`` (``lam[idx(r+1)] - lam[idx(r)]``
    across the boundary at the start of the rank-``r`` slot, 0 where rank ``r + 1`` is not live), in ``dtype``.

    Args:
        lam: ``[B, T, H, RL]`` the caller's weights; lam_index: ``[B, H, T, R]`` the record (-1: not live).
    Returns:
        ``lam0, dlam`` and the record in a compact integer type (what :func:`lam_bwd` reads).
    """
    lam_t = lam.to(dtype).transpose(1, 2)  # [B, H, T, RL]
    lam_r = torch.gather(lam_t, -1, lam_index.clamp_min(0))  # [B, H, T, R]
    dlam = torch.where(lam_index[..., 1:] >= 0, lam_r[..., 1:] - lam_r[..., :-1], torch.zeros_like(lam_r[..., 1:]))
    return lam_r[..., 0], dlam, compact_index(lam_index, lam.shape[-1])


def lam_bwd(index: torch.Tensor, g0: Optional[torch.Tensor], gd: Optional[torch.Tensor], lam_shape,
            lam_dtype: torch.dtype) -> torch.Tensor:
    """Gradient of :func:`lam_fwd` for ``lam`` (``[B, T, H, RL]`` in ``lam_dtype``), from those of ``lam0`` and
    ``dlam`` (``None``: zero); entries read by several ranks sum their gradients."""
    B, T, H, RL = lam_shape
    idx = index.long()
    grad_r = torch.zeros(idx.shape, dtype=(g0 if g0 is not None else gd).dtype, device=idx.device)
    if g0 is not None:
        grad_r[..., 0] = g0
    if gd is not None and gd.shape[-1]:
        step = torch.where(idx[..., 1:] >= 0, gd, torch.zeros_like(gd))
        grad_r[..., 1:] += step
        grad_r[..., :-1] -= step
    dlam = grad_r.new_zeros(B, H, T, RL).scatter_add(-1, idx.clamp_min(0), grad_r)
    return dlam.transpose(1, 2).to(lam_dtype)


# ---------------------------------------------------------------- the plan: where each query chunk looks

def candidate_chunks(x: torch.Tensor, real: torch.Tensor, BT: int) -> torch.Tensor:
    """``cand [B, H, NT, R1 + 1]``: per query chunk, the sorted chunks of the boundaries live at the token before it
    (real ones; the chunk itself in place of the others) and the chunk itself. Reads only those ``NT`` tokens."""
    B, H, T, R1 = x.shape
    NT = (T + BT - 1) // BT
    i = torch.arange(NT, device=x.device)
    prev_t = (i * BT - 1).clamp_min(0)
    xp, rp = x[:, :, prev_t], real[:, :, prev_t]  # [B, H, NT, R1]
    prev = torch.where(rp & (xp >= 0) & (i[:, None] > 0), torch.div(xp, BT, rounding_mode="floor"), i[:, None])
    return torch.cat([prev, i[None, None, :, None].expand(B, H, NT, 1)], -1).sort(-1).values


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
    cx = torch.where(real, torch.div(x, BT, rounding_mode="floor"), -1)
    cand = candidate_chunks(x, real, BT)
    tok_chunk = torch.arange(T, device=x.device) // BT
    rows = cand[:, :, tok_chunk]  # [B, H, T, R1 + 1]
    jidx = torch.searchsorted(rows.contiguous(), cx.clamp_min(0).contiguous())
    jidx = torch.where(real, jidx, -1)
    found = torch.gather(rows, -1, jidx.clamp(0, R1))
    if bool((real & (found != cx)).any()):
        raise RuntimeError("boundary_candidates: a live boundary outside the candidate chunks (internal error)")
    return cand, jidx, (x - cx * BT).clamp(0, BT - 1)


def readout_plan(x, real, BT, Tp, candidates=None):
    """Where the PyTorch readout looks: each query chunk's distinct candidate key chunks, and each boundary's place.

    Args:
        x, real: ``[B, H, T, R1]`` as :func:`boundary_candidates`; Tp: padded length.
        candidates: :func:`boundary_candidates`' result, if already computed.
    Returns:
        ``cand [B, H, NT, J]``: the distinct candidates of :func:`boundary_candidates`, in order, first; the rest of
        the row repeats the query chunk and holds no boundary. ``pos [B, H, Tp, R1]``: each real boundary's place
        ``j * BT + offset`` among the tokens of ``cand``'s row (0 for the others and for padding). ``widths``: per
        query chunk, the most distinct candidates over batch rows and heads (a list; the only host sync), so
        that repeats cost nothing.
    """
    cand, jidx, off = boundary_candidates(x, real, BT) if candidates is None else candidates
    B, H, NT, J = cand.shape
    first = F.pad(cand[..., 1:] != cand[..., :-1], (1, 0), value=True)  # sorted: repeats are adjacent
    rank = first.long().cumsum(-1) - 1  # place among the distinct candidates
    own = torch.arange(NT, device=cand.device).view(1, 1, NT, 1).expand(B, H, NT, J)
    compact = own.scatter(-1, rank, cand)  # a repeat writes its first occurrence's value to the same place
    at = (torch.arange(x.shape[2], device=x.device) // BT * J)[:, None] + jidx.clamp_min(0)  # [B, H, T, R1]
    jc = torch.gather(rank.flatten(2), -1, at.flatten(2)).view_as(jidx)
    pos = F.pad(torch.where(real, jc * BT + off, 0), (0, 0, 0, Tp - x.shape[2]))
    return compact, pos, (rank[..., -1] + 1).amax((0, 1)).tolist()


# ---------------------------------------------------------------- the boundary terms

def readout_fwd(qh, kh, u, gl, P, dlam, x, real, BT: int, *, cfg, q=None, k=None):
    """``sum_x dlam_t(x) D(x-1, t) q_t^T P_x`` over each token's live real boundaries.

    Args:
        qh, kh: ``[B, H, Tp, K]`` per-head queries and keys; u: ``[B, H, Tp, V]``; gl: ``[B, H, NT, BT]``;
        P: ``[B, H, NT, K, V]``; dlam, x, real: ``[B, H, T, R1]`` (``x`` boundary positions, ``real``: live and
        ``>= 0``). cfg: :class:`~dla.ops.utils.tuning.StageConfig` (its ``tuning.torch_group_bytes``). q, k:
        unused (the caller's tensors, for the Triton stage).
    Returns:
        ``terms [B, H, T, V]``, the tensors :func:`readout_bwd` needs (``cand, pos, real``) and the group widths.
    """
    T, Tp = x.shape[2], kh.shape[2]
    cand, pos, widths = readout_plan(x, real, BT, Tp)
    dl = F.pad(torch.where(real, dlam, torch.zeros_like(dlam)), (0, 0, 0, Tp - T))
    seg = chunk_segsum(gl)
    group_bytes = cfg.tuning.torch_group_bytes
    parts = [_group_terms(*args) for _, args, _ in _groups(qh, kh, u, gl, P, seg, dl, cand, pos, widths, BT,
                                                            group_bytes)]
    return torch.cat(parts, 2).flatten(2, 3)[:, :, :T], (cand, pos, real), widths


def readout_bwd(grad, q, k, u, gl, P, dlam, plan, widths, BT: int, needs, *, cfg, heads: Callable):
    """Gradients ``(dqh, dkh, du, dgl, dP, ddlam)`` of :func:`readout_fwd` (``None`` where ``needs`` is off).

    ``grad [B, H, T, V]``; ``q, k``: the caller's tensors, ``heads(x)`` their per-head copies; ``plan, widths``:
    what :func:`readout_fwd` returned. Per group of query chunks: gather the candidates' slices, recompute the
    group's terms, differentiate them, and add the slices' gradients into one buffer per input (``index_add_``
    over the candidate chunks). ``gl`` also reaches the output through the chunks' decay sums ``seg``.
    """
    cand, pos, real = plan
    nq, nk, nu, ngl, nP, ndl = needs
    T, Tp = dlam.shape[2], u.shape[2]
    qh, kh = heads(q), heads(k)
    gl_leaf = gl.detach().requires_grad_(bool(ngl))
    with torch.enable_grad():
        seg = chunk_segsum(gl_leaf)
    dl = F.pad(torch.where(real, dlam, torch.zeros_like(dlam)), (0, 0, 0, Tp - T)).detach()
    dq, dk, du, dgl, dP, dseg, ddl = _terms_backward(
        F.pad(grad, (0, 0, 0, Tp - T)), qh.detach(), kh.detach(), u.detach(), gl.detach(), P.detach(),
        seg.detach(), dl, cand, pos, widths, BT, (nq, nk, nu, ngl, nP, ngl, ndl), cfg.tuning.torch_group_bytes)
    if ngl:
        dgl = dgl + torch.autograd.grad(seg, gl_leaf, dseg)[0]
    if ndl:
        ddl = torch.where(real, ddl[:, :, :T], torch.zeros_like(dlam))
    return dq, dk, du, dgl, dP, ddl


def _terms_backward(grad, q, k, u, gl, P, seg, dl, cand, pos, widths, BT, needs, group_bytes):
    """Gradients of the group terms with respect to ``q, k, u, gl, P, seg, dl`` (``needs``: which of the seven).
    Exact: autograd of the forward's own ops, group by group."""
    B, H, Tp, K = q.shape
    V, NT = u.shape[-1], Tp // BT
    out = [t.new_zeros(t.shape) if need else None for t, need in zip((q, k, u, gl, P, seg, dl), needs)]
    dq, dk, du, dgl, dP, dseg, ddl = out
    if not any(needs):
        return out
    gradc = grad.reshape(B, H, NT, BT, V)
    # the source of each argument of _group_terms, in order: q, gl, dl, P, k, u, gl, seg
    source = (0, 3, 6, 4, 1, 2, 3, 5)
    for (i0, i1), args, rows in _groups(q, k, u, gl, P, seg, dl, cand, pos, widths, BT, group_bytes):
        leaves = [a.detach().requires_grad_(needs[src]) for a, src in zip(args[:8], source)]
        want = [a for a in leaves if a.requires_grad]
        with torch.enable_grad():
            res = _group_terms(*leaves, *args[8:])
            got = iter(torch.autograd.grad(res, want, gradc[:, :, i0:i1]))
        gq, ggl_q, gdl, gP, gk, gu, ggl_c, gseg = (next(got) if a.requires_grad else None for a in leaves)
        flat = rows.flatten()
        if dq is not None:
            dq.view(B, H, NT, BT, K)[:, :, i0:i1] += gq
        if ddl is not None:
            ddl.view(B, H, NT, BT, -1)[:, :, i0:i1] += gdl
        if dseg is not None:
            dseg[:, :, i0:i1] += gseg
        if dgl is not None:
            dgl[:, :, i0:i1] += ggl_q
            dgl.view(B * H * NT, BT).index_add_(0, flat, ggl_c.reshape(-1, BT))
        for buf, gr in ((dP, gP), (dk, gk), (du, gu)):
            if buf is not None:
                buf.view(B * H * NT, -1).index_add_(0, flat, gr.reshape(flat.numel(), -1))
    return out


def _groups(q, k, u, gl, P, seg, dl, cand, pos, widths, BT, group_bytes):
    """Yield ``((i0, i1), args of _group_terms, flat candidate rows)`` for groups of consecutive query chunks.

    A group of ``G`` chunks takes the first ``J = max(widths[i0:i1])`` candidates of each; ``G`` grows while the
    group's largest tensors (``[G, BT, J, BT]`` weights, gathered states) stay within ``group_bytes``.
    """
    B, H, Tp, K = q.shape
    V, NT = u.shape[-1], Tp // BT
    per_cand = B * H * (8 * BT * BT + 2 * K * V + 2 * BT * (K + V) + BT * K) * q.element_size()
    qc, dlc, posc = (t.reshape(B, H, NT, BT, -1) for t in (q, dl, pos))
    Pf, kf, uf, glf = P.reshape(-1, K, V), k.reshape(-1, BT, K), u.reshape(-1, BT, V), gl.reshape(-1, BT)
    base = (torch.arange(B * H, device=q.device) * NT).view(B, H, 1, 1)
    i0 = 0
    while i0 < NT:
        i1, J = i0 + 1, widths[i0]
        while i1 < NT and (i1 + 1 - i0) * max(J, widths[i1]) * per_cand <= group_bytes:
            J = max(J, widths[i1])
            i1 += 1
        cg = cand[:, :, i0:i1, :J]
        rows = base + cg  # [B, H, G, J] rows of the flattened chunk dimension
        cur = cg == torch.arange(i0, i1, device=q.device)[:, None]
        yield (i0, i1), (qc[:, :, i0:i1], gl[:, :, i0:i1], dlc[:, :, i0:i1], Pf[rows], kf[rows], uf[rows],
                         glf[rows], seg[:, :, i0:i1], cg, posc[:, :, i0:i1], cur), rows
        i0 = i1


def _group_terms(qg, glq, dl, Pg, Kg, Ug, glg, segq, cand, pos, cur):
    """The boundary terms of ``G`` query chunks against their ``J`` candidate key chunks each: ``[B, H, G, BT, V]``.

    Args:
        qg: ``[B, H, G, BT, K]`` queries; glq: ``[B, H, G, BT]`` their chunk-local log-decay cumsums;
        dl: ``[B, H, G, BT, R1]`` ``dlam`` of each token's real boundaries (0 for the others);
        Pg, Kg, Ug, glg: ``[B, H, G, J, ...]`` the candidates' chunk states, keys, (pseudo-)values, ``gl``;
        segq: ``[B, H, G, NT + 1]`` the query chunks' rows of ``seg`` (block sums of log-decay);
        cand: ``[B, H, G, J]`` candidate chunks; pos: ``[B, H, G, BT, R1]`` each boundary's place ``j * BT +
        offset`` among the candidates' tokens; cur: ``[B, H, G, J]`` whether the candidate is the query chunk.

    Part A: ``sum_x dlam D(cx BT - 1, t) q_t^T P_cx``; part B: ``sum_x dlam sum_{cx BT <= s < x} D(s, t) (q_t.k_s)
    u_s`` (``docs/math.md`` 7.4).
    """
    BT, J = qg.shape[-2], cand.shape[-1]
    # scat[t, j, p]: sum of dlam of the boundaries at offset p of candidate j
    scat = dl.new_zeros(*dl.shape[:-1], J * BT).scatter_add(-1, pos, dl).unflatten(-1, (J, BT))
    # part A: one matmul over (candidate, key channel)
    coefA = scat.sum(-1) * torch.exp(torch.gather(segq, -1, cand)[..., None, :] + glq[..., None])  # [..., t, J]
    part = (coefA[..., None] * qg[..., None, :]).flatten(-2) @ Pg.flatten(-3, -2)
    # part B: W[t, j, s] = sum_{p > s} scat[t, j, p], times D(s, t) (causal inside the query chunk itself)
    W = F.pad(scat.flip(-1).cumsum(-1).flip(-1)[..., 1:], (0, 1))
    old = glg[..., -1:] - glg + torch.gather(segq, -1, cand + 1)[..., None]  # log D(s, end of chunk i - 1)
    expo = torch.where(cur[..., None], -glg, old)[..., None, :, :] + glq[..., :, None, None]
    s_idx = torch.arange(BT, device=qg.device)
    ok = ~cur[..., None, :, None] | (s_idx <= s_idx[:, None])[:, None, :]
    W = W * torch.exp(expo.masked_fill(~ok, float("-inf")))
    qk = qg @ Kg.flatten(-3, -2).transpose(-1, -2)  # [..., t, J * BT]
    return part + (W.flatten(-2) * qk) @ Ug.flatten(-3, -2)


# ---------------------------------------------------------------- the output

def combine_fwd(lam0, o_base, terms, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """``o [B, T, H, V]`` in ``dtype``: ``scale * (lam0 * o_base + terms)`` over the first ``T`` rows.
    ``lam0 [B, H, T]``, ``o_base [B, H, Tp, V]``, ``terms [B, H, T, V]`` or ``None`` (no boundary terms)."""
    T, Tp = lam0.shape[-1], o_base.shape[2]
    o = F.pad(lam0, (0, Tp - T))[..., None] * o_base
    if terms is not None:
        o = o + F.pad(terms, (0, 0, 0, Tp - T))
    return (o * scale)[:, :, :T].transpose(1, 2).to(dtype)


def combine_bwd(do, lam0, o_base, scale: float, has_terms: bool):
    """Gradients of :func:`combine_fwd` for ``lam0, o_base, terms`` (``terms``: ``None`` if absent)."""
    T, Tp = lam0.shape[-1], o_base.shape[2]
    g = F.pad(do.to(o_base.dtype).transpose(1, 2), (0, 0, 0, Tp - T)) * scale  # [B, H, Tp, V]
    d_lam0 = (g * o_base).sum(-1)[:, :, :T]
    d_ob = g * F.pad(lam0, (0, Tp - T))[..., None]
    return d_lam0, d_ob, g[:, :, :T] if has_terms else None


