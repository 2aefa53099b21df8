"""The Gated DeltaNet backbone's chunk pass in PyTorch.

``S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T`` is the additive form ``S_t = a_t S_{t-1} +
k_t u_t^T`` with the pseudo-value ``u_t = beta_t (v_t - a_t S_{t-1}^T k_t)`` (``docs/design.md`` 2.1). Per chunk,
the UT transform solves ``(I + A) u = beta (v - exp(gl) k P_c)`` with ``A[t, s] = beta_t D(t, s) k_t . k_s``
(``s < t``), i.e. ``u = U0 - W P_c``, and the chunk states follow ``P_{c+1} = (exp(gl_L) I - M_c) P_c + dS_c``,
a loop over chunks.
"""

from __future__ import annotations

import torch

from dla.ops.chunked.backbone_mamba2 import intra_decay
from dla.ops.chunked.recompute import recompute_grads


def chunk_states(A: torch.Tensor, X: torch.Tensor, S0: torch.Tensor):
    """``P [B, H, NT, K, V]`` (the state before each chunk) and ``S_NT`` of ``S_{c+1} = A_c S_c + X_c``,
    ``S_0 = S0``, for ``A [B, H, NT, K, K]``, ``X [B, H, NT, K, V]``. A list and one ``stack``: differentiable
    without in-place writes (a write into one buffer per chunk would clone the whole gradient per chunk)."""
    B, H, NT, K, V = X.shape
    A3, X3 = A.reshape(B * H, NT, K, K), X.reshape(B * H, NT, K, V)
    S = S0.reshape(B * H, K, V).to(X.dtype)
    states = []
    for c in range(NT):
        states.append(S)
        S = torch.baddbmm(X3[:, c], A3[:, c], S)
    P = torch.stack(states, 1) if states else X3.new_zeros(B * H, 0, K, V)
    return P.view(B, H, NT, K, V), S.view(B, H, K, V)


def backbone_gdn_fwd(q, k, v, beta, gl, S0, cfg=None):
    """Pseudo-values, chunk states, plain output and final state.

    Args:
        q, k: ``[B, H, Tp, K]``; v: ``[B, H, Tp, V]``; beta: ``[B, H, Tp]``; gl: ``[B, H, NT, BT]``;
        S0: ``[B, H, K, V]``; cfg: unused (the Triton stage's config).
    Returns:
        ``u [B, H, Tp, V]``, ``P [B, H, NT, K, V]``, ``o [B, H, Tp, V]`` (unscaled), ``S [B, H, K, V]``, ``()``.
    """
    B, H, Tp, K = k.shape
    V, (NT, BT) = v.shape[-1], gl.shape[2:]
    qc, kc, vc = (x.view(B, H, NT, BT, x.shape[-1]) for x in (q, k, v))
    egl = torch.exp(gl)  # D(chunk start - 1, t)
    D = intra_decay(gl)
    kw = kc * torch.exp(gl[..., -1:] - gl)[..., None]  # k_s D(s, chunk end)
    bc = beta.view(B, H, NT, BT)[..., None]
    A = (((bc * kc) @ kc.transpose(-1, -2)) * D).tril(-1)
    # one solve for both right-hand sides; unitriangular: the (zero) diagonal of A is read as 1
    UW = torch.linalg.solve_triangular(A, bc * torch.cat([vc, egl[..., None] * kc], -1), upper=False,
                                       unitriangular=True)
    U0, W = UW[..., :V], UW[..., V:]  # u = U0 - W P_c
    dSM = kw.transpose(-1, -2) @ UW  # [B, H, NT, K, V + K]
    dS, M = dSM[..., :V], dSM[..., V:]
    trans = torch.exp(gl[..., -1])[..., None, None] * torch.eye(K, dtype=k.dtype, device=k.device) - M
    P, S = chunk_states(trans, dS, S0)
    u = U0 - W @ P
    o = egl[..., None] * (qc @ P) + ((qc @ kc.transpose(-1, -2)) * D) @ u
    return u.reshape(B, H, Tp, V), P, o.reshape(B, H, Tp, V), S, ()


def backbone_gdn_bwd(q, k, v, beta, gl, S0, u, P, extra, du, dP, do, dS, needs, cfg=None):
    """Gradients ``(dq, dk, dv, dbeta, dgl, dS0)`` (``None`` where ``needs`` is off) from those of ``u, P, o, S``
    (``None``: unused), by recomputing :func:`backbone_gdn_fwd` under autograd."""
    return recompute_grads(backbone_gdn_fwd, (q, k, v, beta, gl, S0), needs, (du, dP, do, dS))
