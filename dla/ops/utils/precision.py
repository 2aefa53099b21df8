"""Which operands the Triton kernels' matrix products take (``tl.dot``); host side, no Triton import.

Modes (the ``DOT`` constexpr of the kernels, :func:`dla.ops.utils.triton_dot.prec_dot`):

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
import warnings
from typing import Optional, Tuple

PRECISIONS = ("ieee", "tf32", "tf32x3", "bf16", "fp16")


def interpreting() -> bool:
    """Whether Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


# Triton releases before this one miscompile 16-bit operands in two of the backbone backward kernels on Hopper
FIXED_TRITON = (3, 7)


def _version(text: str) -> Tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def warn_16bit_on_hopper(precision: str, capability: Tuple[int, int], triton_version: str) -> bool:
    """Warn (and return ``True``) when 16-bit operands run where they are known to give wrong gradients.

    On an H200 (sm_90) with Triton 3.6, ``precision="bf16"`` gave a wrong ``dv`` in the Mamba-2 backbone's
    backward (relative error 1.1, every policy) and an illegal memory access in the Gated DeltaNet backward
    (``single`` policy), both at ``K = 32, V = 16`` (tests/ops/dla/test_cuda.py's shapes, 2026-12-03); the same
    cases are right under the interpreter in fp16 and on the GPU in ``tf32x3``: a compiler fault of the kind that
    gave fla wrong gated-backward gradients on Hopper. Forward values were right.
    """
    if precision not in ("bf16", "fp16") or capability[0] != 9 or _version(triton_version) >= FIXED_TRITON:
        return False
    warnings.warn(f"precision={precision!r}: Triton {triton_version} on Hopper (sm_90) miscompiles 16-bit operands "
                  f"in the backbone backward kernels (wrong dv for Mamba-2, an illegal memory access for Gated "
                  f"DeltaNet at V = 16); train with the default tf32x3", RuntimeWarning, stacklevel=3)
    return True


def resolve_precision(precision: Optional[str], is_cuda: bool, name: str = "precision") -> str:
    """The kernels' ``tl.dot`` mode.

    Args:
        precision: one of :data:`PRECISIONS`, or ``None`` / ``"auto"``: ``tf32x3`` on a GPU, ``ieee`` under the
            interpreter or off CUDA. (``bf16`` / ``fp16`` operands for 16-bit inputs, the field's choice, become
            the GPU default once a GPU run has checked them against the references; until then they are opt-in.)
        is_cuda: whether the inputs live on a GPU.
        name: the argument named in errors.
    Raises:
        ValueError: ``precision`` is not a mode, or is ``bf16`` under the interpreter.
    """
    if precision is None or precision == "auto":
        if interpreting() or not is_cuda:
            return "ieee"
        return "tf32x3"
    if precision not in PRECISIONS:
        raise ValueError(f"{name}: expected None, 'auto' or one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and interpreting():
        raise ValueError(f"{name}: 'bf16' is wrong under TRITON_INTERPRET=1 (the interpreter multiplies bfloat16 "
                         f"bit patterns as integers); use 'fp16', the same kernel path")
    return precision
