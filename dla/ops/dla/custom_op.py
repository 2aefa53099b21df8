"""``chunk_dla`` as one ``torch.library`` op, so that ``torch.compile`` sees a single opaque node.

The chunked form makes data-dependent decisions (the segmentation scan, the readout's candidate chunks) and
validates its inputs on the host; traced by dynamo, each of those is a graph break. Registered here:

- ``dla::chunk_dla(q, k, v, g, lam, beta, cu_seqlens, ...) -> o``: the forward (:func:`dla.ops.chunk_dla`), with a
  fake (meta) implementation: ``o`` has the shape and dtype of ``v``;
- ``dla::chunk_dla_backward(do, inputs..., needs) -> grads``: recomputes the forward under autograd and returns the
  gradients of the inputs asked for (empty tensors for the others). The recomputation costs one forward more
  than the eager path's backward; that is the price of an opaque node.

:func:`dla.ops.chunk_dla` calls this op by itself while ``torch.compile`` traces it, for the training call (no
``initial_state``, no final state, no segmentation); the other calls are traced as eager code.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

_OPTIONAL = ("lam", "beta")


def _forward(q, k, v, g, lam, beta, cu_seqlens, scale, tau, capacity, policy, block_size, score, chunk_size,
             backend, precision):
    from dla.ops.dla.chunk import chunk_dla

    return chunk_dla(q, k, v, g, lam, beta, scale=scale, tau=tau, capacity=capacity, policy=policy,
                     block_size=block_size, score=score, cu_seqlens=cu_seqlens, chunk_size=chunk_size,
                     backend=None if backend == "auto" else backend,
                     precision=None if precision == "auto" else precision)[0]


@torch.library.custom_op("dla::chunk_dla", mutates_args=())
def chunk_dla_op(q: Tensor, k: Tensor, v: Tensor, g: Tensor, lam: Optional[Tensor], beta: Optional[Tensor],
                 cu_seqlens: Optional[Tensor], scale: Optional[float], tau: float, capacity: int, policy: str,
                 block_size: int, score: str, chunk_size: int, backend: str, precision: str) -> Tensor:
    """``chunk_dla(...)[0]``; arguments as :func:`dla.ops.chunk_dla` (``"auto"`` for a ``None`` backend or
    precision)."""
    with torch.no_grad():
        return _forward(q, k, v, g, lam, beta, cu_seqlens, scale, tau, capacity, policy, block_size, score,
                        chunk_size, backend, precision).contiguous()


@chunk_dla_op.register_fake
def _chunk_dla_fake(q, k, v, g, lam, beta, cu_seqlens, scale, tau, capacity, policy, block_size, score,
                    chunk_size, backend, precision):
    return v.new_empty(v.shape)  # contiguous, as the op's output


@torch.library.custom_op("dla::chunk_dla_backward", mutates_args=())
def chunk_dla_backward_op(do: Tensor, q: Tensor, k: Tensor, v: Tensor, g: Tensor, lam: Optional[Tensor],
                          beta: Optional[Tensor], cu_seqlens: Optional[Tensor], scale: Optional[float], tau: float,
                          capacity: int, policy: str, block_size: int, score: str, chunk_size: int, backend: str,
                          precision: str, needs: List[bool]) -> List[Tensor]:
    """Gradients ``[dq, dk, dv, dg, dlam, dbeta]`` of ``(o * do).sum()``; an empty tensor where ``needs`` is off."""
    inputs = [q, k, v, g, lam, beta]
    leaves = [x.detach().requires_grad_(bool(n)) if x is not None else None for x, n in zip(inputs, needs)]
    want = [x for x in leaves if x is not None and x.requires_grad]
    grads = iter(())
    if want:
        with _autograd_on(), torch.enable_grad():
            o = _forward(*leaves, cu_seqlens, scale, tau, capacity, policy, block_size, score, chunk_size, backend,
                         precision)
            grads = iter(torch.autograd.grad(o, want, do))
    return [next(grads).contiguous() if x is not None and x.requires_grad else q.new_empty(0) for x in leaves]


def _autograd_on():
    """Let autograd record inside an op's kernel: the dispatcher excludes the autograd keys below an op's autograd
    layer (thread-local), so a kernel that differentiates a recomputation must lift that exclusion for its body."""
    keys = torch._C.DispatchKey
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for name in ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor"):
        exclude = exclude.remove(getattr(keys, name))
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


@chunk_dla_backward_op.register_fake
def _chunk_dla_backward_fake(do, q, k, v, g, lam, beta, cu_seqlens, scale, tau, capacity, policy, block_size,
                             score, chunk_size, backend, precision, needs):
    inputs = [q, k, v, g, lam, beta]
    return [x.new_empty(x.shape) if x is not None and n else q.new_empty(0) for x, n in zip(inputs, needs)]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*(x if x is not None else torch.empty(0) for x in inputs[:7]))
    ctx.present = [x is not None for x in inputs[:7]]
    ctx.params = inputs[7:]


def _backward(ctx, do):
    saved = [x if present else None for x, present in zip(ctx.saved_tensors, ctx.present)]
    needs = [bool(n) and saved[i] is not None for i, n in enumerate(ctx.needs_input_grad[:6])]
    grads = chunk_dla_backward_op(do, *saved, *ctx.params, needs)
    return (*(gr if n else None for gr, n in zip(grads, needs)), *([None] * (len(ctx.needs_input_grad) - 6)))


chunk_dla_op.register_autograd(_backward, setup_context=_setup_context)
