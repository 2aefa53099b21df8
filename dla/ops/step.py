"""The public decode step: one token for a whole batch, constant memory and time in the context length
(``docs/design.md`` section 6). Validates once, picks the backend once: :func:`dla.ops.chunked.decode.step`
(PyTorch) or :func:`dla.ops.triton.decode.step` (two kernels; the default for CUDA float32 caches)."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from dla.ops import chunked
from dla.ops.chunk import has_triton
from dla.ops.common.policy import Policy
from dla.ops.common.state import DLAState, empty_state
from dla.ops.utils.checks import check_values as check_tensor_values
from dla.ops.utils.checks import wants_value_check

TRITON_STEP_POLICIES = ("dla", "fixed", "single", "fenwick")
"""The policies of the Triton step (``dla_unbounded`` may have to grow its cache: the PyTorch step serves it)."""


def dla_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    lam: Optional[torch.Tensor] = None,
    beta: Optional[torch.Tensor] = None,
    *,
    state: Optional[DLAState] = None,
    scale: Optional[float] = None,
    policy: Union[str, Policy] = "dla",
    tau: Optional[float] = None,
    capacity: Optional[int] = None,
    block_size: Optional[int] = None,
    score: Optional[str] = None,
    backend: Optional[str] = None,
    check_values: Optional[bool] = False,
) -> Tuple[torch.Tensor, DLAState]:
    """Advance every sequence of the batch by one token.

    Args:
        q, k: ``[B, G, K]``; v: ``[B, H, V]``; g: ``[B, H]`` log-decay; lam: ``[B, H, R]`` or ``None`` (ones);
        beta: ``[B, H]`` (Gated DeltaNet) or ``None``.
        state: the cache to continue from (``chunk_dla(..., output_final_state=True)``, an earlier step, or
            :func:`~dla.ops.empty_state`), built by the same policy kind and capacity; not modified. ``None``: an
            empty cache (float32, or float64 for float64 ``v``).
        scale, policy, tau, capacity, block_size, score: as :func:`dla.ops.chunk_dla`.
        backend: ``torch``, ``triton`` (float32 slots, policies ``dla``, ``fixed``, ``single``, ``fenwick``; on CPU
            only under ``TRITON_INTERPRET=1``), or ``None``: ``triton`` for CUDA float32 states of those policies
            when Triton is installed, else ``torch``.
        check_values: look at the values (no NaN or inf, ``g <= 0``): off by default (a host sync per token);
            ``None``: as ``chunk_dla`` (CPU always, GPU under anomaly detection).

    Returns:
        ``o [B, H, V]`` in the dtype of ``v`` and the new :class:`~dla.ops.DLAState` (float32 or float64 slots).
        Fixed shapes and no host synchronisation (except ``dla_unbounded``, whose cache may grow), so a
        generation loop can be captured in a CUDA graph.
    """
    pol = Policy.of(policy, tau=tau, capacity=capacity, block_size=block_size, score=score)
    for name, x, layout in (("q", q, "[B, G, K]"), ("k", k, "[B, G, K]"), ("v", v, "[B, H, V]"), ("g", g, "[B, H]")):
        if not isinstance(x, torch.Tensor) or x.dim() != layout.count(",") + 1:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected {layout}, got {shape}")
    B, H, V = v.shape
    G, K = q.shape[1], q.shape[2]
    if tuple(k.shape) != tuple(q.shape) or q.shape[0] != B or tuple(g.shape) != (B, H):
        raise ValueError(f"dla_step: expected q, k [B, G, K], v [B, H, V], g [B, H]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}, g {tuple(g.shape)}")
    if G == 0 or H % G:
        raise ValueError(f"q/k heads ({G}) must divide v heads ({H})")
    if beta is not None and (not isinstance(beta, torch.Tensor) or tuple(beta.shape) != (B, H)):
        raise ValueError(f"beta: expected [B, H] = [{B}, {H}], got "
                         f"{tuple(beta.shape) if isinstance(beta, torch.Tensor) else type(beta).__name__}")
    R = lam.shape[-1] if lam is not None else 1
    if lam is not None and (lam.dim() != 3 or tuple(lam.shape[:2]) != (B, H)):
        raise ValueError(f"lam: expected [B, H, R] = [{B}, {H}, R], got {tuple(lam.shape)}")
    width = {"dla": pol.capacity, "fixed": pol.capacity, "fenwick": R, "single": 1}.get(pol.kind)
    if state is None:
        state = empty_state(B, H, K, V, width or pol.capacity, torch.promote_types(v.dtype, torch.float32),
                            v.device, pol)
    if not isinstance(state, DLAState):
        raise ValueError(f"state: expected a DLAState or None, got {type(state).__name__}")
    state.check_continues(pol, B, H, K, V, name="state")
    if width is not None:
        state = _widen(state, width)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise ValueError(f"scale: expected a number or None, got {scale!r}")
    if wants_value_check(check_values, v):
        check_tensor_values({"q": q, "k": k, "v": v, "g": g, "beta": beta, "lam": lam})
    impl = _backend(backend, state, pol)
    return impl.step(q, k, v, g, lam, beta, state, pol, K ** -0.5 if scale is None else float(scale))


def _backend(backend: Optional[str], state: DLAState, policy: Policy):
    if backend not in (None, "torch", "triton"):
        raise ValueError(f"backend: expected None, 'torch' or 'triton', got {backend!r}")
    if backend is None:
        fits = state.slots.is_cuda and state.slots.dtype == torch.float32 and policy.kind in TRITON_STEP_POLICIES \
            and policy.score in ("drift", "write")
        backend = "triton" if fits and has_triton() else "torch"
    if backend == "torch":
        return chunked
    from dla.ops import triton as kernels  # an optional dependency: imported only when chosen

    return kernels


def _widen(state: DLAState, width: int) -> DLAState:
    """``state`` padded with empty slots to ``width`` (a cache built before it could be full)."""
    C = state.slots.shape[2]
    if C >= width:
        return state
    return DLAState(F.pad(state.slots, (0, 0, 0, 0, 0, width - C)), F.pad(state.counts, (0, width - C)),
                    F.pad(state.info, (0, width - C)), state.num_slots, state.open_norm, state.policy)
