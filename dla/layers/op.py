"""The one DLA op every layer calls. Switching implementation is the import below and nothing else.

``chunk_dla`` (O(T C), differentiable) when the installed ``dla.ops`` has it, else the slot-form reference
``naive_dla`` (same signature and semantics, O(T C K V) Python loops: for tests and tiny models only).
"""

from __future__ import annotations

import inspect

try:
    from dla.ops import chunk_dla as dla_op
except ImportError:
    from dla.ops import naive_dla as dla_op

OP_TAKES_CHUNK_SIZE = "chunk_size" in inspect.signature(dla_op).parameters
"""Whether ``dla_op`` accepts ``chunk_size`` (the chunked op does; the reference does not)."""

__all__ = ["dla_op", "OP_TAKES_CHUNK_SIZE"]
