"""The scalar-decay (Mamba-2 / simple gated linear attention) backbone's chunk pass in PyTorch.

Per batch x head, chunk ``c`` of ``BT`` tokens with chunk-local log-decay cumsums ``gl`` (``L = BT - 1``):

    P_0 = S0,  P_{c+1} = exp(gl_L) P_c + sum_s exp(gl_L - gl_s) k_s v_s^T      (P_NT = S, the final state)
    o_t = exp(gl_t) q_t^T P_c + sum_{s <= t} exp(gl_t - gl_s) (q_t . k_s) v_s

The chunk states come in closed form (:func:`decayed_states`: no loop over chunks). The pseudo-value is ``v``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dla.ops.chunked.layout import block_segsum
from dla.ops.chunked.recompute import recompute_grads


def decayed_states(tot: torch.Tensor, X: torch.Tensor, X0: torch.Tensor, block: int = 16) -> torch.Tensor:
    """``Y [..., N + 1, F]`` with ``Y_0 = X0``, ``Y_{c+1} = exp(tot_c) Y_c + X_c``, without a loop over ``c``.

    ``Y_i = sum_j exp(sum_{j <= c < i} tot_c) X_{j-1}`` (``X_{-1} = X0``) is one matmul with a lower-triangular
    ``[N + 1, N + 1]`` matrix of block sums (:func:`~dla.ops.chunked.layout.block_segsum`: sums of ``tot``, never
    differences of a long cumulative sum). For ``N > block`` the chunks are grouped in blocks of ``block``: the
    same matmul inside each block from a zero start, this function again over the block totals for the states at
    the block starts, and one decayed broadcast of those; the work is ``O(N block F)`` instead of ``O(N^2 F)``.
    Differentiable (matmuls, no loop).
    """
    N = tot.shape[-1]
    if N <= block:
        L = torch.exp(F.pad(block_segsum(tot), (0, 1))).tril()  # L[i, j]: weight of X_{j-1} in Y_i
        return L @ torch.cat([X0[..., None, :], X], -2)
    nb = -(-N // block)
    pad = nb * block - N  # padding chunks: no decay, no input
    seg = block_segsum(F.pad(tot, (0, pad)).unflatten(-1, (nb, block)))  # [..., nb, block + 1, block]
    L = torch.exp(F.pad(seg, (0, 1))).tril()  # [..., nb, block + 1, block + 1]
    local = L[..., 1:] @ F.pad(X, (0, 0, 0, pad)).unflatten(-2, (nb, block))  # [..., nb, block + 1, F]
    starts = decayed_states(seg[..., block, 0], local[..., block, :], X0, block)  # [..., nb + 1, F]
    Y = L[..., :1] * starts[..., :nb, None, :] + local
    return torch.cat([Y[..., :block, :].flatten(-3, -2), starts[..., nb:, :]], -2)[..., :N + 1, :]


def intra_decay(gl: torch.Tensor) -> torch.Tensor:
    """``[..., BT, BT]``: ``exp(gl_t - gl_s)`` for ``s <= t``, 0 above the diagonal (masked before the exp)."""
    BT = gl.shape[-1]
    mask = torch.ones(BT, BT, dtype=torch.bool, device=gl.device).tril()
    return torch.exp((gl[..., :, None] - gl[..., None, :]).masked_fill(~mask, float("-inf")))


def backbone_mamba2_fwd(q, k, v, gl, S0, cfg=None):
    """Chunk states, plain output and final state.

    Args:
        q, k: ``[B, H, Tp, K]``; v: ``[B, H, Tp, V]``; gl: ``[B, H, NT, BT]`` chunk-local log-decay cumsums;
        S0: ``[B, H, K, V]`` initial state; cfg: unused (the Triton stage's config).
    Returns:
        ``P [B, H, NT, K, V]`` (state before each chunk), ``o [B, H, Tp, V]`` (unscaled ``q_t^T S_t``), the final
        state ``S [B, H, K, V]`` and ``()`` (nothing more for the backward).
    """
    B, H, Tp, K = k.shape
    V, (NT, BT) = v.shape[-1], gl.shape[2:]
    qc, kc, vc = (x.view(B, H, NT, BT, x.shape[-1]) for x in (q, k, v))
    kw = kc * torch.exp(gl[..., -1:] - gl)[..., None]  # k_s D(s, chunk end)
    dS = kw.transpose(-1, -2) @ vc  # [B, H, NT, K, V]
    states = decayed_states(gl[..., -1], dS.flatten(-2), S0.flatten(-2)).unflatten(-1, (K, V))
    P, S = states[:, :, :NT], states[:, :, NT]
    o = torch.exp(gl)[..., None] * (qc @ P) + ((qc @ kc.transpose(-1, -2)) * intra_decay(gl)) @ vc
    return P, o.reshape(B, H, Tp, V), S, ()


def backbone_mamba2_bwd(q, k, v, gl, S0, P, extra, dP, do, dS, needs, cfg=None):
    """Gradients ``(dq, dk, dv, dgl, dS0)`` (``None`` where ``needs`` is off) from those of ``P, o, S`` (``None``:
    unused), by recomputing :func:`backbone_mamba2_fwd` under autograd."""
    return recompute_grads(backbone_mamba2_fwd, (q, k, v, gl, S0), needs, (dP, do, dS))
