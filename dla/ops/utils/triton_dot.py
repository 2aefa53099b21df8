"""``tl.dot`` with the operand precision as a constexpr (modes: :mod:`dla.ops.utils.precision`)."""

import triton
import triton.language as tl


@triton.jit
def prec_dot(a, b, DOT: tl.constexpr):
    """``a @ b`` with float32 accumulation: ``[M, N] x [N, P] -> [M, P]`` float32.

    ``DOT``: ``ieee``, ``tf32`` or ``tf32x3`` (float32 operands, ``input_precision=DOT``), or ``bf16`` / ``fp16``
    (operands rounded to bfloat16 / float16 first: one tensor-core pass).
    """
    if DOT == "bf16":
        c = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif DOT == "fp16":
        c = tl.dot(a.to(tl.float16), b.to(tl.float16))
    else:
        c = tl.dot(a, b, input_precision=DOT)
    return c
