"""Functional DLA ops, seq-first ``[B, T, H, D]``: references and fast paths compute the same thing.

- :func:`minimal_dla`: DLA alone in about a hundred lines (the method as the paper states it).
- :func:`naive_dla`: the slot form, ``docs/design.md`` section 3 token by token (the specification in code).
- :func:`masked_dla`: ``(Q K^T (.) M) U``, quadratic, the gradient oracle.
- :func:`chunk_dla`: the chunked form, ``O(T C)``, for training, prefill and packed sequences; PyTorch stages
  (:mod:`dla.ops.chunked`) or Triton kernels (:mod:`dla.ops.triton`).
- :func:`dla_step`: one decode token, constant memory; continues from ``chunk_dla``'s final state.

Every op takes the memory policy as a :class:`Policy` or as its fields (``policy``, ``tau``, ``capacity``,
``block_size``, ``score``).
"""

from dla.ops.chunk import chunk_dla
from dla.ops.common.policy import POLICIES, Policy, num_levels
from dla.ops.common.score import SCORES
from dla.ops.common.state import DLAState, Segmentation, empty_state
from dla.ops.masked import masked_dla
from dla.ops.minimal import minimal_dla
from dla.ops.naive import naive_dla
from dla.ops.step import dla_step
from dla.ops.utils.tuning import Tuning

__all__ = ["minimal_dla", "naive_dla", "masked_dla", "chunk_dla", "dla_step", "empty_state", "DLAState",
           "Segmentation", "Policy", "POLICIES", "SCORES", "Tuning", "num_levels"]
