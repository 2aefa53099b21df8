"""Backward of a PyTorch stage by recomputation: run the stage's forward again under autograd and differentiate it.

The PyTorch stages are plain differentiable code; their ``*_bwd`` functions recompute the forward from the saved
inputs (bitwise the same values on the same device) and let autograd differentiate it, so that the stage keeps
only its inputs between the passes, like the Triton stages.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch


def recompute_grads(forward: Callable, inputs: Sequence[Optional[torch.Tensor]], needs: Sequence[bool],
                    out_grads: Sequence[Optional[torch.Tensor]], *args) -> Tuple[Optional[torch.Tensor], ...]:
    """Gradients of ``forward(*inputs, *args)`` (a tuple of tensors) with respect to ``inputs``.

    Args:
        forward: the stage's forward; its first outputs pair with ``out_grads`` (extra outputs are ignored).
        inputs: its tensor inputs (``None`` allowed); needs: which of them want a gradient.
        out_grads: the gradient of each output, ``None`` for an unused output.
    Returns:
        one gradient per input, ``None`` where not needed (zeros where needed but unreached).
    """
    leaves = [x.detach().requires_grad_(bool(n)) if x is not None else None for x, n in zip(inputs, needs)]
    want = [x for x in leaves if x is not None and x.requires_grad]
    if not want:
        return tuple(None for _ in leaves)
    with torch.enable_grad():
        outs = forward(*leaves, *args)
        pairs = [(o, g) for o, g in zip(outs, out_grads) if g is not None and o is not None and o.requires_grad]
        grads = torch.autograd.grad([o for o, _ in pairs], want, [g for _, g in pairs], allow_unused=True) \
            if pairs else [None] * len(want)
    it = iter(grads)
    res = []
    for x in leaves:
        if x is None or not x.requires_grad:
            res.append(None)
            continue
        gr = next(it)
        res.append(torch.zeros_like(x) if gr is None else gr)
    return tuple(res)
