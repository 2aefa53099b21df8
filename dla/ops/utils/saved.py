"""What the Triton path keeps for its backward: indices in their narrowest dtype (:func:`compact_index`), and the
caller's ``q, k, v`` instead of the kernels' float32 copies (:class:`Rebuild`).

:func:`dla.ops.dla.chunk_torch.chunk_dla_torch` hands the Triton kernels head-major float32 copies of the caller's
``q, k, v`` (``[B, T, H, D]``, often bf16, ``q, k`` often grouped). An autograd Function that saved those copies
would keep ``4 (2 K + V)`` bytes per token x head alive until the backward; :func:`save_rebuilt` saves the
caller's tensor instead (through ``ctx.save_for_backward``, so version checks and the user's saved-tensor hooks,
such as ``torch.autograd.graph.save_on_cpu``, apply to it) and :func:`saved_rebuilt` rebuilds the copy, bitwise
equal, when the backward asks for it.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch


def compact_index(index: torch.Tensor, bound: int) -> torch.Tensor:
    """``index`` (entries in ``[-1, bound)``) in the narrowest of int16 / int32 / int64 that holds them: what the
    backward keeps of a gather or of the readout's per-rank indices (2 bytes an entry instead of 8 at C = 30)."""
    for dtype in (torch.int16, torch.int32):
        if bound <= torch.iinfo(dtype).max:
            return index.to(dtype)
    return index.to(torch.int64)


class Rebuild:
    """Which tensors are rebuildable copies, their sources, and how to rebuild one.

    Args:
        pairs: ``(copy, source)`` pairs; ``copy == build(source)`` bitwise.
        build: ``source -> copy`` (run without autograd in the backward).
    """

    def __init__(self, pairs: Sequence[Tuple[torch.Tensor, torch.Tensor]], build: Callable):
        self._keys = {self._key(c): s for c, s in pairs}
        self.build = build

    @staticmethod
    def _key(t: torch.Tensor):
        return t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t.device

    def source(self, t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The source of ``t`` if ``t`` is one of the copies (same storage, shape, strides, dtype), else ``None``."""
        return None if t is None else self._keys.get(self._key(t))


def save_rebuilt(ctx, rebuild: Optional[Rebuild], *tensors: Optional[torch.Tensor]) -> None:
    """``ctx.save_for_backward(*tensors)``, except that a tensor which is one of ``rebuild``'s copies is saved as
    its source. Read them back with :func:`saved_rebuilt`."""
    sources = [rebuild.source(t) if rebuild is not None else None for t in tensors]
    ctx.save_for_backward(*(t if s is None else s for t, s in zip(tensors, sources)))
    ctx.rebuilt = ([s is not None for s in sources], rebuild.build if rebuild is not None else None)


def saved_rebuilt(ctx) -> Tuple[Optional[torch.Tensor], ...]:
    """The tensors given to :func:`save_rebuilt`, the copies rebuilt from their sources."""
    flags, build = ctx.rebuilt
    with torch.no_grad():
        return tuple(build(t) if f else t for t, f in zip(ctx.saved_tensors, flags))
