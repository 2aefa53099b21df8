"""Indices kept for a backward in their narrowest dtype."""

from __future__ import annotations

import torch


def compact_index(index: torch.Tensor, bound: int) -> torch.Tensor:
    """``index`` (entries in ``[-1, bound)``) in the narrowest of int16 / int32 / int64 that holds them: what the
    backward keeps of a gather or of the readout's per-rank indices (2 bytes an entry instead of 8 at C = 30)."""
    for dtype in (torch.int16, torch.int32):
        if bound <= torch.iinfo(dtype).max:
            return index.to(dtype)
    return index.to(torch.int64)
