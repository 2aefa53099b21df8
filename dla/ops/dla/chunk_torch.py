"""The chunked form in plain PyTorch (DESIGN.md section 4): the CPU fallback of every layer.

1. The backbone's chunk pass: pseudo-values (Gated DeltaNet: UT transform per chunk), chunk states ``P_c``
   and the plain output.
2. The segmentation scan (:mod:`dla.ops.dla.scan`), without gradient.
3. The readout: the backbone output weighted by ``lam`` of the open slot, plus, per live boundary ``x``, the
   telescoping term ``dlam * D(x-1, t) q_t^T P_x`` where ``P_x`` is rebuilt from its chunk's state and the
   masked intra-chunk products. Per query chunk only the distinct key chunks holding live boundaries are
   touched, so the cost is ``O(T C)`` (at worst; typically a few key chunks per query chunk).

Gradients are exact for ``q, k, v, g, beta, lam``: autograd, except for two hand-written backwards that keep the
backward's memory traffic linear in the number of chunks: Gated DeltaNet's chunk-state recurrence
(:class:`_ChunkStates`, the reverse recurrence) and the boundary readout (:class:`_BoundaryTerms`: recompute per
group of query chunks, differentiate the gathered slices, accumulate into one buffer per input). The scalar-decay
backbone's chunk states are in closed form (:func:`_decayed_states`), plain autograd.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from dla.ops.common.state import UNUSED_START, DLAState, Segmentation, state_width
from dla.ops.dla.scan import ScanResult, dla_scan, fixed_schedule
from dla.ops.utils.checks import check_dla_args
from dla.ops.utils.precision import resolve_precision
from dla.ops.utils.saved import Rebuild, compact_index


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
    precision: Optional[str] = None,
    lengths: Optional[torch.Tensor] = None,
):
    """Chunked DLA in PyTorch; arguments and returns as :func:`dla.ops.naive_dla` (additive transition).

    ``chunk_size``: tokens per chunk (any ``>= 1``; 64 matches the kernels). Computation runs in float64
    for float64 inputs and float32 otherwise; the output has the dtype of ``v``.
    ``backend``: ``torch``, or ``triton`` for the Triton segmentation scan, boundary readout and backbone chunk
    pass of either backbone, forward and backward (float32; needs ``chunk_size >= 16`` and a power of two).
    ``precision``: the operands of the ``tl.dot`` products of the Triton backbone and readout kernels (the scan
    keeps float32-accurate products, so decisions do not depend on it; the torch backend ignores it): ``ieee``,
    ``tf32``, ``tf32x3``, ``bf16`` or ``fp16`` (:mod:`dla.ops.utils.precision`; float32 accumulation, states and
    gradients in every mode), or ``None`` (auto): on a GPU ``bf16`` for bfloat16 ``v`` and ``tf32x3``
    otherwise; ``ieee`` under ``TRITON_INTERPRET=1``.
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
    dot = resolve_precision(precision, v.is_cuda, dtype=v.dtype)
    B, T, H, K, V, R = dims.B, dims.T, dims.H, dims.K, dims.V, dims.R
    dt = torch.promote_types(v.dtype, torch.float32)
    BT = chunk_size
    NT = max((T + BT - 1) // BT, 1)
    pad = NT * BT - T
    # [B, H, Tp, *]: padded tokens write nothing (k = 0) and do not decay (g = 0); contiguous, so every kernel
    # wrapper reads these storages instead of making its own copy
    heads = lambda x: _heads(x, H, pad, dt)  # noqa: E731
    qh, kh, vh = heads(q), heads(k), heads(v)
    # the Triton Functions keep the caller's q, k, v for their backward and rebuild these copies there
    rebuild = Rebuild([(qh, q), (kh, k), (vh, v)], heads) if backend == "triton" else None
    gh = F.pad(g.to(dt).transpose(1, 2), (0, pad)).contiguous()
    bh = F.pad(beta.to(dt).transpose(1, 2), (0, pad)).contiguous() if beta is not None else None
    lam_all = lam if lam is not None else torch.ones(B, T, H, R, dtype=dt, device=v.device)  # [B, T, H, R]

    S0 = initial_state.slots.to(dt).sum(2) if initial_state is not None else \
        torch.zeros(B, H, K, V, dtype=dt, device=v.device)
    if backend == "triton" and dt == torch.float32 and bh is None:
        from dla.ops.dla.backbone_triton import backbone_triton  # lazy: CPU installs may lack Triton
        u, P, o_base, S_last, gl = backbone_triton(qh, kh, vh, gh, bh, S0, BT, dot_precision=dot,
                                                     rebuild=rebuild)
    elif backend == "triton" and dt == torch.float32:
        from dla.ops.dla.backbone_gdn_triton import backbone_gdn_triton
        u, P, o_base, S_last, gl = backbone_gdn_triton(qh, kh, vh, gh, bh, S0, BT, dot_precision=dot,
                                                         rebuild=rebuild)
    else:
        u, P, o_base, S_last, gl = _backbone(qh, kh, vh, gh, bh, S0, BT)

    if policy in ("single", "fenwick") and initial_state is None and not output_final_state and \
            not return_segmentation:
        # boundaries that do not depend on the data, and nobody asked for scores or a state: no scan
        starts, lam_index = (x.expand(B, H, T, R) for x in fixed_schedule(policy, T, R, v.device))
    else:
        scan_fn, keys = dla_scan, kh.detach().reshape(B * H, -1, K)
        if backend == "triton" and dt == torch.float32:
            from dla.ops.dla import scan_triton  # lazy: CPU installs may lack Triton
            from dla.ops.dla.readout_fwd import grouped_copy

            scan_fn = scan_triton.dla_scan_triton
            G = k.shape[2]
            if scan_triton.GROUPED_KEYS and G < H:  # the keys once per group of heads (shared in the cache)
                scan_fn = functools.partial(scan_fn, heads_per_group=H // G)
                keys = grouped_copy(k.detach(), kh.shape[2]).reshape(B * G, -1, K)
        with torch.no_grad():
            N = B * H
            scan = scan_fn(keys, u.detach().reshape(N, -1, V), gh.reshape(N, -1), T,
                           chunk_size=BT, policy=policy, tau=tau, capacity=capacity, block_size=block_size,
                           score=score, R=R, initial_state=initial_state,
                           lengths=None if lengths is None else lengths.to(v.device).repeat_interleave(H))
        starts = scan.starts.view(B, H, T, R)
        lam_index = scan.lam_index.view(B, H, T, R)

    # block sums of log-decay: seg[i, c] = sum of chunk totals c..i-1 (0 for c >= i); i, c in 0..NT
    seg = F.pad(_block_segsum(gl[..., -1]), (0, 1))

    o = _readout(qh, kh, u, gl, P, o_base, lam_all, starts, lam_index, seg, initial_state, BT, T, backend, dot,
                 rebuild, dims.scale, v.dtype)
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


def _heads(x: torch.Tensor, H: int, pad: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, T, G, D] -> [B, H, T + pad, D]`` contiguous in ``dtype``: group ``h // (H / G)`` for head ``h``, zero
    padding. One pass over the output (a repeat, a transpose, a pad and a contiguous copy would each make one:
    1.6 GB per pass for ``q`` at 65,536 tokens x 48 heads, K = 128). The backward is one sum over each group's
    heads in ``dtype`` (then cast to ``x``'s dtype), the gradient of that repeat form; twice differentiable."""
    return _Heads.apply(x, H, pad, dtype)


class _Heads(torch.autograd.Function):
    """:func:`_heads`: a Function rather than an in-place copy into a new tensor, whose autograd node
    (``CopySlices``) would clone the whole ``[B, H, T + pad, D]`` gradient before reducing it."""

    @staticmethod
    def forward(ctx, x, H, pad, dtype):
        B, T, G, D = x.shape
        ctx.shape, ctx.x_dtype = (B, T, G, D), x.dtype
        if x.is_cuda and _has_triton():
            from dla.ops.dla.heads_triton import heads_copy  # a bandwidth-bound kernel, not torch's strided copy

            return heads_copy(x, H, pad, dtype)
        out = torch.empty(B, H, T + pad, D, dtype=dtype, device=x.device)
        if pad:
            out[:, :, T:].zero_()
        out[:, :, :T].view(B, G, H // G, T, D).copy_(x.transpose(1, 2)[:, :, None])
        return out

    @staticmethod
    def backward(ctx, grad):
        B, T, G, D = ctx.shape
        g = grad[:, :, :T].unflatten(1, (G, -1))  # [B, G, H / G, T, D]
        g = g.sum(2) if g.shape[2] > 1 else g[:, :, 0]
        return g.transpose(1, 2).to(ctx.x_dtype), None, None, None


def _block_segsum(tot: torch.Tensor) -> torch.Tensor:
    """``[..., NT] -> [..., NT + 1, NT]``: ``out[i, c] = sum_{c <= c' < i} tot[c']`` by a masked cumsum."""
    NT = tot.shape[-1]
    keep = torch.ones(NT + 1, NT, dtype=torch.bool, device=tot.device).tril(-1)  # c < i
    x = tot[..., None, :].expand(*tot.shape[:-1], NT + 1, NT).masked_fill(~keep, 0)
    return x.flip(-1).cumsum(-1).flip(-1)  # sum over c' >= c (and < i by the mask)


def _backbone(q, k, v, g, beta, S0, BT):
    """Chunk pass of the backbone: pseudo-values, chunk-start states, plain output ``q^T S_t``.

    Everything inside a chunk is computed for all chunks at once. The chunk states of the scalar-decay backbone
    (``S_{c+1} = a_c S_c + dS_c``) come in closed form (:func:`_decayed_states`); Gated DeltaNet's
    (``S_{c+1} = (a_c I - M_c) S_c + dS_c``) from a loop over chunks whose backward is the reverse loop
    (:class:`_ChunkStates`).

    Returns ``u [B, H, Tp, V]``, ``P [B, H, NT, K, V]`` (state before each chunk), ``o [B, H, Tp, V]``, the final
    state and the chunk-local inclusive log-decay cumsums ``gl [B, H, NT, BT]``.
    """
    B, H, Tp, K = k.shape
    V, NT = v.shape[-1], Tp // BT
    qc, kc, vc = (x.view(B, H, NT, BT, x.shape[-1]) for x in (q, k, v))
    gl = g.view(B, H, NT, BT).cumsum(-1)
    egl = torch.exp(gl)  # D(chunk start - 1, t)
    mask = torch.ones(BT, BT, dtype=torch.bool, device=k.device).tril()
    D = torch.exp((gl[..., :, None] - gl[..., None, :]).masked_fill(~mask, float("-inf")))  # [B, H, NT, t, s]
    kw = kc * torch.exp(gl[..., -1:] - gl)[..., None]  # k_s D(s, chunk end)
    if beta is None:
        dS = kw.transpose(-1, -2) @ vc  # [B, H, NT, K, V]
        states = _decayed_states(gl[..., -1], dS.flatten(-2), S0.flatten(-2)).unflatten(-1, (K, V))
        P, S = states[:, :, :NT], states[:, :, NT]
        u = vc
    else:
        # UT transform: (I + A) u = beta (v - exp(gl) k S_c), A[t, s] = beta_t D(t, s) k_t.k_s for s < t
        bc = beta.view(B, H, NT, BT)[..., None]
        A = (((bc * kc) @ kc.transpose(-1, -2)) * D).tril(-1)
        # one solve for both right-hand sides; unitriangular: the (zero) diagonal of A is read as 1
        UW = torch.linalg.solve_triangular(A, bc * torch.cat([vc, egl[..., None] * kc], -1), upper=False,
                                           unitriangular=True)
        U0, W = UW[..., :V], UW[..., V:]  # u = U0 - W S_c
        dSM = kw.transpose(-1, -2) @ UW  # [B, H, NT, K, V + K]
        dS, M = dSM[..., :V], dSM[..., V:]
        trans = torch.exp(gl[..., -1])[..., None, None] * torch.eye(K, dtype=k.dtype, device=k.device) - M
        P, S = _ChunkStates.apply(trans, dS, S0)
        u = U0 - W @ P
    o = egl[..., None] * (qc @ P) + ((qc @ kc.transpose(-1, -2)) * D) @ u
    return u.reshape(B, H, Tp, V), P, o.reshape(B, H, Tp, V), S, gl


def _decayed_states(tot: torch.Tensor, X: torch.Tensor, X0: torch.Tensor, block: int = 16) -> torch.Tensor:
    """``Y [..., N + 1, F]`` with ``Y_0 = X0``, ``Y_{c+1} = exp(tot_c) Y_c + X_c``, without a loop over ``c``.

    ``Y_i = sum_j exp(sum_{j <= c < i} tot_c) X_{j-1}`` (``X_{-1} = X0``) is one matmul with a lower-triangular
    ``[N + 1, N + 1]`` matrix of block sums (:func:`_block_segsum`: sums of ``tot``, never differences of a long
    cumulative sum, DESIGN.md section 4). For ``N > block`` the chunks are grouped in blocks of ``block``: the
    same matmul inside each block from a zero start, this function again over the block totals for the states at
    the block starts, and one decayed broadcast of those; the work is ``O(N block F)`` instead of ``O(N^2 F)``.
    The backward is autograd's (matmuls, no loop).
    """
    N = tot.shape[-1]
    if N <= block:
        L = torch.exp(F.pad(_block_segsum(tot), (0, 1))).tril()  # L[i, j]: weight of X_{j-1} in Y_i
        return L @ torch.cat([X0[..., None, :], X], -2)
    nb = -(-N // block)
    pad = nb * block - N  # padding chunks: no decay, no input
    seg = _block_segsum(F.pad(tot, (0, pad)).unflatten(-1, (nb, block)))  # [..., nb, block + 1, block]
    L = torch.exp(F.pad(seg, (0, 1))).tril()  # [..., nb, block + 1, block + 1]
    local = L[..., 1:] @ F.pad(X, (0, 0, 0, pad)).unflatten(-2, (nb, block))  # [..., nb, block + 1, F]
    starts = _decayed_states(seg[..., block, 0], local[..., block, :], X0, block)  # [..., nb + 1, F]
    Y = L[..., :1] * starts[..., :nb, None, :] + local
    return torch.cat([Y[..., :block, :].flatten(-3, -2), starts[..., nb:, :]], -2)[..., :N + 1, :]


class _ChunkStates(torch.autograd.Function):
    """``P_c`` (``c < NT``) and ``S_NT`` of ``S_{c+1} = A_c S_c + X_c``, ``S_0 = S0``, for matrices ``A_c``.

    Inputs ``A [B, H, NT, K, K]``, ``X [B, H, NT, K, V]``, ``S0 [B, H, K, V]``. The forward writes the states into
    one buffer; the backward runs the reverse recurrence ``lam_c = dP_c + A_c^T lam_{c+1}`` (``lam_NT = dS_NT``),
    so that ``dX_c = lam_{c+1}``, ``dA_c = lam_{c+1} P_c^T``, ``dS0 = lam_0``: no per-chunk autograd nodes and no
    full-size gradient per chunk. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, A, X, S0):
        B, H, NT, K, V = X.shape
        P = X.new_empty(B, H, NT, K, V)
        A3, X3, P3 = A.reshape(B * H, NT, K, K), X.reshape(B * H, NT, K, V), P.view(B * H, NT, K, V)
        S = S0.reshape(B * H, K, V).to(X.dtype)
        for c in range(NT):
            P3[:, c] = S
            S = torch.baddbmm(X3[:, c], A3[:, c], S)
        ctx.save_for_backward(A, P)
        return P, S.view(B, H, K, V)

    @staticmethod
    @once_differentiable
    def backward(ctx, dP, dS):
        A, P = ctx.saved_tensors
        B, H, NT, K, V = P.shape
        A3, dP3 = A.reshape(B * H, NT, K, K), dP.reshape(B * H, NT, K, V)
        dX = torch.empty_like(P)
        dX3 = dX.view(B * H, NT, K, V)
        lam = dS.reshape(B * H, K, V)
        for c in range(NT - 1, -1, -1):
            dX3[:, c] = lam
            lam = torch.baddbmm(dP3[:, c], A3[:, c].transpose(-1, -2), lam)
        dA = dX @ P.transpose(-1, -2) if ctx.needs_input_grad[0] else None
        return dA, dX, lam.view(B, H, K, V)


class _GatherLast(torch.autograd.Function):
    """``torch.gather(x, -1, index)`` keeping ``index`` for the backward in its compact dtype (``compact_index``);
    torch's own gather keeps an int64 copy. Twice differentiable (the backward is a ``scatter_add``)."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.save_for_backward(compact_index(index, x.shape[-1]))
        ctx.shape = x.shape
        return torch.gather(x, -1, index)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return grad.new_zeros(ctx.shape).scatter_add(-1, index.long(), grad), None


def _readout(q, k, u, gl, P, o_base, lam, starts, lam_index, seg, init, BT, T, backend="torch", dot=None,
             rebuild=None, scale=1.0, dtype=None):
    """``scale * (lam_open * o_base`` plus the telescoping boundary terms (real boundaries, then initial-state
    ones)) as the output ``[B, T, H, V]`` in ``dtype`` (default: ``q``'s); ``lam [B, T, H, R]`` as the caller gave
    it; ``dot``, ``rebuild``: the ``tl.dot`` mode and the saved copies of the Triton readout
    (:class:`dla.ops.dla.readout_fwd.BoundaryTerms`)."""
    B, H, Tp, _ = k.shape
    nxt_valid = lam_index[..., 1:] >= 0
    if backend == "triton" and q.dtype == torch.float32:
        from dla.ops.dla.lam_triton import LamTerms  # one pass each way, lam read in its own layout and dtype

        lam0, dlam = LamTerms.apply(lam, lam_index)
    else:
        lam0, dlam = _lam_terms_torch(lam.to(q.dtype).transpose(1, 2), lam_index)
    x = starts[..., :-1]  # boundary positions [B, H, T, R-1]
    real = nxt_valid & (x >= 0)
    dtype = q.dtype if dtype is None else dtype
    terms = None  # [B, H, T, V]
    if x.shape[-1] > 0 and backend == "triton":
        from dla.ops.dla.readout_fwd import BoundaryTerms
        terms = BoundaryTerms.apply(q, k, u, gl, P, dlam, x, real, BT, dot, rebuild)
    elif x.shape[-1] > 0:
        terms = boundary_terms(q, k, u, gl, P, seg, x, dlam, real, BT)
    if terms is not None and backend == "triton" and q.dtype == torch.float32 and init is None:
        from dla.ops.dla.combine_triton import ReadoutCombine  # one pass each way into the caller's layout

        return ReadoutCombine.apply(lam0, o_base, terms, float(scale), dtype)
    o = F.pad(lam0, (0, Tp - T))[..., None] * o_base
    if terms is not None:
        o = o + F.pad(terms, (0, 0, 0, Tp - T))
    if init is not None:
        ldec = (seg[:, :, :Tp // BT, 0, None] + gl).reshape(B, H, Tp)[:, :, :T]  # log D(-1, t)
        o = o + F.pad(_initial_terms(q[:, :, :T], ldec, x, dlam, nxt_valid & (x < 0), init), (0, 0, 0, Tp - T))
    return (o * scale)[:, :, :T].transpose(1, 2).to(dtype)


def _lam_terms_torch(lam: torch.Tensor, lam_index: torch.Tensor):
    """``lam0 [B, H, T]``, the open slot's ``lam``, and ``dlam [B, H, T, R - 1]``: ``lam[idx(r+1)] - lam[idx(r)]``
    across the boundary at the start of the rank-``r`` slot (0 where rank ``r + 1`` is not live);
    ``lam [B, H, T, R]``, ``lam_index [B, H, T, R]``."""
    lam_r = _GatherLast.apply(lam, lam_index.clamp_min(0))  # [B, H, T, R]
    dlam = torch.where(lam_index[..., 1:] >= 0, lam_r[..., 1:] - lam_r[..., :-1], torch.zeros_like(lam_r[..., 1:]))
    return lam_r[..., 0], dlam


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


READOUT_GROUP_BYTES = 1 << 26
"""Working memory the PyTorch boundary readout aims at per group of query chunks (forward, or backward step)."""


def boundary_terms(q, k, u, gl, P, seg, x, dlam, real, BT, group_bytes=None):
    """``sum_x dlam_t(x) D(x-1, t) q_t^T P_x`` over each token's live real boundaries: ``[B, H, T, V]``.

    PyTorch, a group of query chunks at a time against their distinct candidate key chunks (:func:`readout_plan`,
    :func:`_group_terms`), groups sized by ``group_bytes`` (default :data:`READOUT_GROUP_BYTES`). The backward
    (:class:`_BoundaryTerms`) keeps only the inputs and recomputes each group, accumulating into one gradient
    buffer per input.
    """
    T, Tp = x.shape[2], k.shape[2]
    cand, pos, widths = readout_plan(x, real, BT, Tp)
    dl = F.pad(torch.where(real, dlam, torch.zeros_like(dlam)), (0, 0, 0, Tp - T))
    return _BoundaryTerms.apply(q, k, u, gl, P, seg, dl, cand, pos, widths, BT, group_bytes)[:, :, :T]


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


class _BoundaryTerms(torch.autograd.Function):
    """The PyTorch boundary readout; inputs ``q, k, u, gl, P, seg, dl`` (``dl [B, H, Tp, R1]``: ``dlam`` of real
    boundaries, 0 elsewhere) and the plan ``cand, pos, widths`` (:func:`readout_plan`). Output ``[B, H, Tp, V]``."""

    @staticmethod
    def forward(ctx, q, k, u, gl, P, seg, dl, cand, pos, widths, BT, group_bytes):
        ctx.save_for_backward(q, k, u, gl, P, seg, dl, cand, pos)
        ctx.widths, ctx.BT, ctx.group_bytes = widths, BT, group_bytes
        groups = _groups(q, k, u, gl, P, seg, dl, cand, pos, widths, BT, group_bytes)
        return torch.cat([_group_terms(*args) for _, args, _ in groups], 2).flatten(2, 3)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        grads = boundary_terms_backward(grad, *ctx.saved_tensors, ctx.widths, ctx.BT, ctx.needs_input_grad[:7],
                                        ctx.group_bytes)
        return (*grads, None, None, None, None, None)


def boundary_terms_backward(grad, q, k, u, gl, P, seg, dl, cand, pos, widths, BT, needs, group_bytes=None):
    """Gradients of the boundary readout (:class:`_BoundaryTerms`) with respect to ``q, k, u, gl, P, seg, dl``.

    ``grad [B, H, Tp, V]``; ``needs``: which of the seven are wanted (the others come back ``None``). Per group of
    query chunks: gather the candidates' slices, recompute :func:`_group_terms` on them, differentiate, and add the
    slices' gradients into one buffer per input (``index_add_`` over the candidate chunks). Exact: autograd of
    the forward's own ops.
    """
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


def _groups(q, k, u, gl, P, seg, dl, cand, pos, widths, BT, group_bytes=None):
    """Yield ``((i0, i1), args of _group_terms, flat candidate rows)`` for groups of consecutive query chunks.

    A group of ``G`` chunks takes the first ``J = max(widths[i0:i1])`` candidates of each; ``G`` grows while the
    group's largest tensors (``[G, BT, J, BT]`` weights, gathered states) stay within ``group_bytes``.
    """
    B, H, Tp, K = q.shape
    V, NT = u.shape[-1], Tp // BT
    per_cand = B * H * (8 * BT * BT + 2 * K * V + 2 * BT * (K + V) + BT * K) * q.element_size()
    budget = READOUT_GROUP_BYTES if group_bytes is None else group_bytes
    qc, dlc, posc = (t.reshape(B, H, NT, BT, -1) for t in (q, dl, pos))
    Pf, kf, uf, glf = P.reshape(-1, K, V), k.reshape(-1, BT, K), u.reshape(-1, BT, V), gl.reshape(-1, BT)
    base = (torch.arange(B * H, device=q.device) * NT).view(B, H, 1, 1)
    i0 = 0
    while i0 < NT:
        i1, J = i0 + 1, widths[i0]
        while i1 < NT and (i1 + 1 - i0) * max(J, widths[i1]) * per_cand <= budget:
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


def _initial_terms(q, ldec, x, dlam, virtual, init, piece_bytes=None):
    """Boundaries between slots of ``initial_state`` (virtual positions ``j - m0 < 0``): ``[B, H, T, V]``.

    ``q [B, H, T, K]``; ``ldec [B, H, T]``: ``log D(-1, t)``; ``x, dlam, virtual [B, H, T, R1]``. Computed in pieces
    of tokens (one ``split``, so the backward has one node per input, not one per piece).
    """
    B, H, T, K = q.shape
    m0 = init.num_slots.to(q.device)
    S = init.slots.to(q.dtype)  # [B, H, C0, K, V]
    Vpre = (torch.cumsum(S, 2) - S).flatten(2, 3)  # V_j = sum_{i < j} S_i, [B, H, C0 * K, V]
    C0 = S.shape[2]
    j = (x + m0[:, :, None, None]).clamp(0, C0 - 1)
    w = torch.where(virtual, dlam, torch.zeros_like(dlam))
    coef = w.new_zeros(B, H, T, C0).scatter_add(-1, j, w) * torch.exp(ldec)[..., None]  # [B, H, T, C0]
    n = max(1, (READOUT_GROUP_BYTES if piece_bytes is None else piece_bytes) // (B * H * C0 * K * q.element_size()))
    return torch.cat([(c[..., None] * qp[..., None, :]).flatten(-2) @ Vpre
                      for c, qp in zip(coef.split(n, 2), q.split(n, 2))], 2)


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


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
