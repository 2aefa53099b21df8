"""Which operands the Triton kernels' matrix products take (``tl.dot``); host side, no Triton import.

Modes (the ``DOT`` constexpr of the kernels, :func:`dla.ops.triton.dot.prec_dot`):

- ``ieee``: float32 products on the CUDA cores (exact float32).
- ``tf32``: one TF32 tensor-core pass (10-bit mantissa operands, about 1e-3 relative).
- ``tf32x3``: three TF32 passes, float32-accurate to about 1e-7 relative.
- ``bf16`` / ``fp16``: operands rounded to bfloat16 / float16, one tensor-core pass (about 4e-3 / 5e-4 relative
  per product); the field's choice for 16-bit inputs.

Every mode accumulates in float32 and the kernels store states, outputs and gradients in float32. Under
``TRITON_INTERPRET=1`` the interpreter ignores ``input_precision`` (the TF32 modes compute as ``ieee``) and
multiplies bfloat16 operands wrongly (it holds them as ``uint16``), so ``bf16`` is refused there; ``fp16`` runs
the same kernel code path.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

PRECISIONS = ("ieee", "tf32", "tf32x3", "bf16", "fp16")


def interpreting() -> bool:
    """Whether Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def min_tile(dot: str) -> int:
    """The narrowest tile (key or value columns) a kernel may take with ``tl.dot`` mode ``dot``: 16 (``tl.dot``'s
    minimum) for ``ieee``, 32 for the tensor-core modes (``tf32``, ``tf32x3``, 16-bit operands).

    Why 32: with Triton 3.6 on Hopper, tensor-core products whose value tile is 16 columns wide came out wrong or
    faulted while 32 and wider were right: 16-bit operands (``docs/benchmarks.md``, tuning decisions), and ``tf32x3``
    in the readout backward's key-side kernel (value dimension 16: gradients of ``k`` and ``g`` off by 1e-4 to 3e-4
    relative, and an illegal memory access with 64 key columns; ``ieee`` and 32-column tiles right). Masked loads
    make the wider tile exact, and real heads (64, 128) never need it.
    """
    return 16 if dot == "ieee" else 32


def resolve_precision(precision: Optional[str], is_cuda: bool, name: str = "precision",
                      dtype: Optional[torch.dtype] = None) -> str:
    """The kernels' ``tl.dot`` mode.

    Args:
        precision: one of :data:`PRECISIONS`, or ``None`` / ``"auto"``: on a GPU ``bf16`` for bfloat16 inputs (the
            field's choice, and much faster than ``tf32x3``: ``docs/benchmarks.md``) and ``tf32x3`` otherwise;
            ``ieee`` under the interpreter or off CUDA. (fp16 inputs keep ``tf32x3``: ``fp16`` operands have not
            been checked against the references on a GPU through the whole op; ask for them by name.)
        is_cuda: whether the inputs live on a GPU.
        name: the argument named in errors.
        dtype: the inputs' dtype (what ``auto`` follows); ``None``: as float32.
    Raises:
        ValueError: ``precision`` is not a mode, or is ``bf16`` under the interpreter.
    """
    if precision is None or precision == "auto":
        if interpreting() or not is_cuda:
            return "ieee"
        return "bf16" if dtype == torch.bfloat16 else "tf32x3"
    if precision not in PRECISIONS:
        raise ValueError(f"{name}: expected None, 'auto' or one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and interpreting():
        raise ValueError(f"{name}: 'bf16' is wrong under TRITON_INTERPRET=1 (the interpreter multiplies bfloat16 "
                         f"bit patterns as integers); use 'fp16', the same kernel path")
    return precision
