"""Public chunked DLA: one entry point for training and prefill, packed sequences included."""

from __future__ import annotations

from typing import List, Optional

import torch

from dla.ops.common.state import UNUSED_START, DLAState, Segmentation
from dla.ops.dla.chunk_torch import chunk_dla_torch


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
):
    """Dynamic Linear Attention, chunked (``O(T C)``); semantics of :func:`dla.ops.naive_dla`.

    Args:
        q, k, v, g, lam, beta, scale, tau, capacity, policy, block_size, score, initial_state,
        output_final_state, return_segmentation: as :func:`dla.ops.naive_dla` (additive slot transition).
        cu_seqlens: ``[N + 1]`` int cumulative sequence offsets (FlashAttention convention) of ``N`` sequences
            packed along ``T`` of a batch of one; every sequence starts with an empty cache (or with row ``n``
            of ``initial_state``, whose batch is then ``N``), and the final state has batch ``N``.
        chunk_size: tokens per chunk.
        backend: ``torch`` (any device), ``triton`` (the Triton kernels; on CPU only under ``TRITON_INTERPRET=1``),
            or ``None``: ``triton`` for CUDA tensors when Triton is installed, else ``torch``.

    Returns:
        ``(o [B, T, H, V], final_state or None)``, plus the :class:`Segmentation` if asked.

    Runs the PyTorch chunked form (:mod:`dla.ops.dla.chunk_torch`); gradients are exact for
    ``q, k, v, g, beta, lam``.
    """
    if backend is None:
        backend = "triton" if q.is_cuda and _has_triton() else "torch"
    kwargs = dict(scale=scale, tau=tau, capacity=capacity, policy=policy, block_size=block_size, score=score,
                  output_final_state=output_final_state, return_segmentation=return_segmentation,
                  chunk_size=chunk_size, backend=backend)
    if cu_seqlens is None:
        return chunk_dla_torch(q, k, v, g, lam, beta, initial_state=initial_state, **kwargs)
    bounds = _check_cu_seqlens(cu_seqlens, q)
    outs, finals, segs = [], [], []
    for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        piece = lambda x: None if x is None else x[:, a:b]  # noqa: E731
        init = None if initial_state is None else _row(initial_state, n)
        res = chunk_dla_torch(piece(q), piece(k), piece(v), piece(g), piece(lam), piece(beta), initial_state=init,
                              **kwargs)
        outs.append(res[0])
        finals.append(res[1])
        if return_segmentation:
            segs.append(res[2])
    o = torch.cat(outs, 1)
    final = _stack_states(finals) if output_final_state else None
    if not return_segmentation:
        return o, final
    seg = Segmentation(*(torch.cat([getattr(s, f) for s in segs], 1) if f not in ("starts", "lam_index")
                         else torch.cat([_pad_last(getattr(s, f), max(x.starts.shape[-1] for x in segs), f)
                                         for s in segs], 1)
                         for f in Segmentation.__dataclass_fields__))
    return o, final, seg


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


def _row(state: DLAState, n: int) -> DLAState:
    norm = None if state.open_norm is None else state.open_norm[n:n + 1]
    return DLAState(state.slots[n:n + 1], state.counts[n:n + 1], state.info[n:n + 1], state.num_slots[n:n + 1], norm)


def _pad_last(x: torch.Tensor, width: int, field: str) -> torch.Tensor:
    fill = -1 if field == "lam_index" else UNUSED_START
    return torch.nn.functional.pad(x, (0, width - x.shape[-1]), value=fill)


def _stack_states(states: List[DLAState]) -> DLAState:
    width = max(s.slots.shape[2] for s in states)
    pad = lambda x, w, *rest: torch.nn.functional.pad(x, (*rest, 0, w - x.shape[2]))  # noqa: E731
    return DLAState(
        torch.cat([pad(s.slots, width, 0, 0, 0, 0) for s in states]),
        torch.cat([pad(s.counts, width) for s in states]),
        torch.cat([pad(s.info, width) for s in states]),
        torch.cat([s.num_slots for s in states]),
        torch.cat([s.open_norm for s in states]),
    )


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
