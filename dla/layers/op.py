"""The DLA ops every recurrent layer calls. Switching implementation is the imports below and nothing else.

- ``dla_op`` (:func:`~dla.ops.chunk_dla`, ``O(T C)``, differentiable): training, prefill, padded batches and
  packed documents (``cu_seqlens``).
- ``dla_step`` (:func:`~dla.ops.dla_step`): one decode token for the whole batch, fixed shapes, no host
  synchronisation; continues exactly from ``dla_op(..., output_final_state=True)``.
"""

from __future__ import annotations

from dla.ops import chunk_dla as dla_op
from dla.ops import dla_step

__all__ = ["dla_op", "dla_step"]
