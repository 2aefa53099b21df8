"""Functional DLA ops, seq-first ``[B, T, H, D]``: references and fast paths compute the same thing.

- :func:`naive_dla`: the slot form, DESIGN.md section 3 token by token (the specification in code).
- :func:`masked_dla`: ``(Q K^T (.) M) U``, quadratic, the gradient oracle.
- :func:`chunk_dla`: the chunked form, ``O(T C)``, for training, prefill and packed sequences.
- :func:`dla_step`: one decode token, constant memory; continues from ``chunk_dla``'s final state.
"""

from dla.ops.common.score import SCORES
from dla.ops.common.state import POLICIES, DLAState, Segmentation, num_levels
from dla.ops.dla.chunk import chunk_dla
from dla.ops.dla.chunk_torch import chunk_dla_torch
from dla.ops.dla.masked import masked_dla
from dla.ops.dla.naive import naive_dla
from dla.ops.dla.step import dla_step, empty_state

__all__ = ["naive_dla", "masked_dla", "chunk_dla", "chunk_dla_torch", "dla_step", "empty_state", "DLAState", "Segmentation", "POLICIES",
           "SCORES", "num_levels"]
