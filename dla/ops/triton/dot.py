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


@triton.jit
def prec_dot_tc(a, b, DOT: tl.constexpr):
    """:func:`prec_dot` where an operand is the transpose of a computed product (``tl.trans(dA)`` with ``dA`` from
    ``tl.dot``): the 16-bit modes take float32 operands and one TF32 pass here.

    Why: fla traced wrong Hopper gradients on Triton 3.4-3.6 (its issue #640) to the shared-memory store of a
    transposed 16-bit tensor-core result; float32 operands take another store path. A precaution (on Hopper this form
    was wrong only where the untransposed one is too: 16-column tiles, which
    :func:`dla.ops.utils.precision.min_tile` rules out), costing TF32 rate in these products; ``docs/benchmarks.md``
    (tuning decisions). The other modes are :func:`prec_dot`.
    """
    if DOT == "bf16" or DOT == "fp16":
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="tf32")
    else:
        c = tl.dot(a, b, input_precision=DOT)
    return c


@triton.jit
def prec_operand(x, DOT: tl.constexpr):
    """``x`` as :func:`prec_dot` will read it: rounded to 16 bits once in the 16-bit modes (a tile kept across a
    loop then takes half the registers; the products are the same), unchanged in the others."""
    if DOT == "bf16":
        y = x.to(tl.bfloat16)
    elif DOT == "fp16":
        y = x.to(tl.float16)
    else:
        y = x
    return y
