"""Public chunked DLA: one entry point for training and prefill, packed sequences included."""

from __future__ import annotations

from typing import List, Optional

import torch

from dla.ops.common.state import UNUSED_START, DLAState, Segmentation
from dla.ops.dla.chunk_torch import _has_triton, chunk_dla_torch
from dla.ops.dla.custom_op import chunk_dla_op


def chunk_dla(
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
    cu_seqlens: Optional[torch.Tensor] = None,
    chunk_size: int = 64,
    backend: Optional[str] = None,
    precision: Optional[str] = None,
):
    """Dynamic Linear Attention, chunked (``O(T C)``); semantics of :func:`dla.ops.naive_dla`.

    Args:
        q, k, v, g, lam, beta, scale, tau, capacity, policy, block_size, score, initial_state,
        output_final_state, return_segmentation: as :func:`dla.ops.naive_dla` (additive slot transition).
        cu_seqlens: ``[N + 1]`` int cumulative sequence offsets (FlashAttention convention) of ``N`` sequences
            packed along ``T`` of a batch of one; every sequence starts with an empty cache (or with row ``n``
            of ``initial_state``, whose batch is then ``N``), and the final state has batch ``N``. The sequences
            run as the rows of right-padded batches grouped by length (a row is padded to at most twice its
            chunks), or of one batch when a state goes in or out.
        chunk_size: tokens per chunk.
        backend: ``torch`` (any device), ``triton`` (the Triton kernels; on CPU only under ``TRITON_INTERPRET=1``),
            or ``None``: ``triton`` for CUDA tensors when Triton is installed, else ``torch``.
        precision: operands of the Triton backbone and readout kernels' matrix products (float32 accumulation,
            states, outputs and gradients in every mode; the segmentation scan keeps float32-accurate products, so
            the decisions do not depend on it; the torch backend ignores it). ``ieee``: float32 on the CUDA cores;
            ``tf32x3``: three TF32 tensor-core passes (float32-accurate); ``tf32``: one pass; ``bf16`` / ``fp16``:
            operands rounded to 16 bits, one pass (H200, T = 4096, B = 16: DLA-Mamba-2 fwd+bwd 136 ms against 235
            ms in ``tf32x3``). ``None`` (auto): on CUDA ``bf16`` for bfloat16 ``v``, else ``tf32x3``; ``ieee`` under
            ``TRITON_INTERPRET=1`` (whose ``tl.dot`` on bfloat16 is wrong: ``bf16`` is refused there). Anything
            else: ``ValueError``.

    Returns:
        ``(o [B, T, H, V], final_state or None)``, plus the :class:`Segmentation` if asked.

    Runs the PyTorch chunked form (:mod:`dla.ops.dla.chunk_torch`); gradients are exact for
    ``q, k, v, g, beta, lam``. Under ``torch.compile`` the training call (no ``initial_state``, no final state,
    no segmentation) is the single op ``torch.ops.dla.chunk_dla`` (:mod:`dla.ops.dla.custom_op`): no graph break.
    """
    if torch.compiler.is_compiling() and initial_state is None and not output_final_state and \
            not return_segmentation:
        o = chunk_dla_op(q, k, v, g, lam, beta, cu_seqlens, scale, tau, capacity, policy, block_size, score,
                         chunk_size, "auto" if backend is None else backend,
                         "auto" if precision is None else precision)
        return o, None
    if backend is None:
        backend = "triton" if q.is_cuda and _has_triton() else "torch"
    kwargs = dict(scale=scale, tau=tau, capacity=capacity, policy=policy, block_size=block_size, score=score,
                  output_final_state=output_final_state, return_segmentation=return_segmentation,
                  chunk_size=chunk_size, backend=backend, precision=precision)
    if cu_seqlens is None:
        return chunk_dla_torch(q, k, v, g, lam, beta, initial_state=initial_state, **kwargs)
    bounds = _check_cu_seqlens(cu_seqlens, q)
    lens = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    # the sequences become the rows of right-padded batches, one per length bucket (a row costs its bucket's
    # longest length, not the longest sequence's); with a state in or out, one batch keeps the rows in order
    groups = _length_buckets(lens, chunk_size) if initial_state is None and not output_final_state else \
        [list(range(len(lens)))]
    outs, segs, places, final = [], [], [], None
    for idx in groups:
        res, valid, place = _padded_rows(q, k, v, g, lam, beta, bounds, idx, initial_state, kwargs)
        outs.append(res[0][valid])  # [tokens of the bucket, H, V]
        places.append(place)
        final = res[1]
        if return_segmentation:
            segs.append([getattr(res[2], f)[valid] for f in Segmentation.__dataclass_fields__])
    place = torch.cat(places)
    inverse = None
    if len(groups) > 1:  # back to the packed order
        inverse = torch.empty_like(place)
        inverse[place] = torch.arange(place.numel(), device=place.device)
    unpack = lambda parts: (torch.cat(parts) if inverse is None else torch.cat(parts)[inverse])[None]  # noqa: E731
    o = unpack(outs)
    if not return_segmentation:
        return o, final
    fields = list(Segmentation.__dataclass_fields__)
    fill = {"starts": UNUSED_START, "lam_index": -1}  # fenwick's record width grows with a bucket's length

    def widest(parts, name):
        if name not in fill:
            return parts
        R = max(x.shape[-1] for x in parts)
        return [torch.nn.functional.pad(x, (0, R - x.shape[-1]), value=fill[name]) for x in parts]
    return o, final, Segmentation(*(unpack(widest([seg[n] for seg in segs], f)) for n, f in enumerate(fields)))


def _length_buckets(lens: List[int], chunk_size: int) -> List[List[int]]:
    """Sequences grouped by their chunk count rounded up to a power of two (so padding at most doubles a row's
    work), shortest bucket first, packed order inside a bucket."""
    groups = {}
    for n, length in enumerate(lens):
        chunks = -(-length // chunk_size)
        groups.setdefault(1 << (chunks - 1).bit_length(), []).append(n)
    return [groups[key] for key in sorted(groups)]


def _padded_rows(q, k, v, g, lam, beta, bounds: List[int], idx: List[int], initial_state, kwargs):
    """:func:`chunk_dla_torch` on the packed sequences ``idx`` as the rows of one right-padded batch (the scan
    stops each row at its length). Returns its result, the ``[N, Tmax]`` mask of real tokens and their packed
    positions (row-major)."""
    dev = q.device
    lens = torch.tensor([bounds[n + 1] - bounds[n] for n in idx], device=dev)
    first = torch.tensor([bounds[n] for n in idx], device=dev)
    N, Tmax = len(idx), int(lens.max())
    t = torch.arange(Tmax, device=dev)
    valid = t[None] < lens[:, None]  # [N, Tmax]
    pos = torch.where(valid, first[:, None] + t[None], 0)

    def rows(x):
        if x is None:
            return None
        y = x[0][pos]  # [N, Tmax, ...]
        return y * valid.view(N, Tmax, *([1] * (y.dim() - 2))).to(y.dtype)

    res = chunk_dla_torch(rows(q), rows(k), rows(v), rows(g), rows(lam), rows(beta), initial_state=initial_state,
                          lengths=lens, **kwargs)
    return res, valid, pos[valid]


def _check_cu_seqlens(cu_seqlens: torch.Tensor, q: torch.Tensor) -> List[int]:
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or \
            cu_seqlens.is_floating_point():
        raise ValueError("cu_seqlens: expected a 1-D integer tensor [N + 1] of cumulative offsets")
    if q.shape[0] != 1:
        raise ValueError(f"cu_seqlens: packed sequences need a batch of 1, got batch {q.shape[0]}")
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0 or bounds[-1] != q.shape[1] or any(b <= a for a, b in zip(bounds[:-1], bounds[1:])):
        raise ValueError(f"cu_seqlens: must rise strictly from 0 to T={q.shape[1]}, got {bounds}")
    return bounds
