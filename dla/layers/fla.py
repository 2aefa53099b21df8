"""DLA mixers with flash-linear-attention's (fla 0.6) layer interface, to drop into fla models (and flame).

:class:`DLAGatedDeltaNet` and :class:`DLAMamba2` take the constructor arguments of fla's ``GatedDeltaNet`` and
``Mamba2`` layers plus DLA's memory policy, and fla's forward: ``forward(hidden_states, attention_mask=None,
past_key_values=None, use_cache=False, output_attentions=False, cu_seqlens=None) -> (o, None, past_key_values)``,
reading and updating the layer's entry of fla's ``Cache`` (``recurrent_state``: the :class:`~dla.ops.DLAState`,
``conv_state``: the short convolution's tail). They are our :class:`~dla.layers.GatedDeltaNetMixer` and
:class:`~dla.layers.Mamba2Mixer` (same parameters, same outputs) behind that interface; fla itself is not imported.

fla's options that these mixers do not implement (``use_gate=False``, ``allow_neg_eigval=True``, a Mamba-2 without
its gated norm ...) raise ``ValueError`` naming them, as do unknown keyword arguments. ``from_fla`` turns a built
fla layer (a pretrained one included) into the DLA layer of the same shape with its weights; with
``policy="single"`` it computes what the fla layer does.

Example (an fla Gated DeltaNet model whose mixers read their state through DLA)::

    from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM
    model = GatedDeltaNetForCausalLM(GatedDeltaNetConfig(...))
    for block in model.model.layers:
        block.attn = DLAGatedDeltaNet.from_fla(block.attn, policy="dla", capacity=30, tau=0.6)
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from dla.layers.gated_deltanet import GatedDeltaNetMixer
from dla.layers.mamba2 import Mamba2Mixer
from dla.layers.state import RecurrentLayerCache

MAX_OP_CHUNK = 64
"""The longest chunk the fla-compatible layers give the DLA op (fla's configs ask 256 for their own kernels)."""


def _refuse(name: str, value: Any, supported: Any) -> None:
    if value != supported:
        raise ValueError(f"{name}: {value!r} is not supported by the DLA layer (only {supported!r})")


class FLALayerInterface:
    """fla's layer forward and ``Cache`` on top of a :class:`~dla.layers.recurrent.RecurrentMixer` (mixed in
    before it)."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                past_key_values: Optional[Any] = None, use_cache: Optional[bool] = False,
                output_attentions: Optional[bool] = False, cu_seqlens: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, cache_position: Optional[torch.Tensor] = None,
                **kwargs: Any) -> Tuple[torch.Tensor, None, Optional[Any]]:
        """Mix ``hidden_states [B, T, D]``; returns ``(o [B, T, D], None, past_key_values)`` as fla's layers do.

        Args:
            attention_mask: ``[B, S]`` 0/1 padding mask (``S >= T``: its last ``T`` columns are read).
            past_key_values: fla's ``Cache``: this layer's entry (``layer_idx``) is continued from and, with
                ``use_cache``, updated (``recurrent_state``: the DLA state, ``conv_state``: the convolution tail).
            use_cache: store the state after this call in ``past_key_values``.
            output_attentions: accepted as fla's layers accept it; no attention weights are returned.
            cu_seqlens: ``[N + 1]`` offsets of packed documents in a batch of one (no cache).
            position_ids, cache_position: passed down by fla models and transformers; a recurrent mixer carries
                position in its state and does not read them.

        Raises:
            ValueError: an unknown keyword argument, or the mixer's own errors (shapes, masks, offsets).
        """
        if kwargs:
            raise ValueError(f"{', '.join(sorted(kwargs))}: unexpected argument(s) of {type(self).__name__}.forward")
        T = hidden_states.shape[1]
        mask = attention_mask[:, -T:] if attention_mask is not None and attention_mask.dim() == 2 else attention_mask
        cache = self._read_cache(past_key_values) if cu_seqlens is None else None
        if cache is None and use_cache and past_key_values is not None:
            cache = RecurrentLayerCache()
        o = super().forward(hidden_states, attention_mask=mask, cache=cache, cu_seqlens=cu_seqlens)
        if use_cache and past_key_values is not None and cache is not None:
            past_key_values.update(recurrent_state=cache.state, conv_state=cache.conv, layer_idx=self.layer_idx,
                                   offset=T)
        return o, None, past_key_values

    def _read_cache(self, past_key_values: Optional[Any]) -> Optional[RecurrentLayerCache]:
        """This layer's entry of fla's ``Cache`` as a :class:`RecurrentLayerCache` (``None`` before its first
        update)."""
        if past_key_values is None:
            return None
        if self.layer_idx is None:
            raise ValueError(f"layer_idx: {type(self).__name__} needs its layer index to use past_key_values")
        if len(past_key_values) <= self.layer_idx or past_key_values[self.layer_idx] is None:
            return None
        entry = past_key_values[self.layer_idx]
        if entry.get("recurrent_state") is None:
            return None
        return RecurrentLayerCache(conv=entry.get("conv_state"), state=entry["recurrent_state"],
                                   seen_tokens=past_key_values.get_seq_length(self.layer_idx))


class DLAGatedDeltaNet(FLALayerInterface, GatedDeltaNetMixer):
    """fla's ``GatedDeltaNet`` layer interface on :class:`~dla.layers.GatedDeltaNetMixer`.

    Args (fla's):
        hidden_size: model width.
        expand_v: value head dimension ``head_dim * expand_v``.
        head_dim: query/key head dimension ``K``.
        num_heads: query/key heads.
        num_v_heads: value heads (grouped values: a multiple of ``num_heads``); default ``num_heads``.
        mode: fla's kernel choice (``chunk`` | ``fused_recurrent``); the DLA op picks its own.
        use_gate, use_short_conv, allow_neg_eigval, conv_bias, output_gate_activation: only fla's defaults
            (``True``, ``True``, ``False``, ``False``, ``swish``/``silu``) are implemented.
        conv_size: width of the short convolution.
        layer_idx: the layer's index in the model (its entry of the cache).
        norm_eps: epsilon of the gated output norm.

    Args (DLA's): ``policy``, ``capacity``, ``tau``, ``score``, ``block_size``, ``max_position_embeddings``
    (:class:`~dla.layers.recurrent.RecurrentMixer`), ``chunk_size`` (the DLA op's chunk), ``use_qk_l2norm``.

    Example:
        >>> layer = DLAGatedDeltaNet(hidden_size=64, head_dim=16, num_heads=2, layer_idx=0, policy="dla",
        ...                          capacity=4)
        >>> layer(torch.randn(2, 10, 64))[0].shape
        torch.Size([2, 10, 64])
    """

    def __init__(self, hidden_size: int = 2048, expand_v: float = 2, head_dim: int = 256, num_heads: int = 6,
                 num_v_heads: Optional[int] = None, mode: str = "chunk", use_gate: bool = True,
                 use_short_conv: bool = True, allow_neg_eigval: bool = False, conv_size: int = 4,
                 conv_bias: bool = False, layer_idx: Optional[int] = None, norm_eps: float = 1e-5,
                 output_gate_activation: str = "swish", *, policy: str = "dla", capacity: int = 30,
                 tau: float = 0.6, score: str = "drift", block_size: int = 64, chunk_size: int = 64,
                 max_position_embeddings: int = 2048, use_qk_l2norm: bool = True):
        _refuse("use_gate", use_gate, True)
        _refuse("use_short_conv", use_short_conv, True)
        _refuse("allow_neg_eigval", allow_neg_eigval, False)
        _refuse("conv_bias", conv_bias, False)
        if output_gate_activation not in ("swish", "silu"):
            raise ValueError(f"output_gate_activation: {output_gate_activation!r} is not supported by the DLA layer "
                             f"(only 'swish' / 'silu')")
        if mode not in ("chunk", "fused_recurrent"):
            raise ValueError(f"mode: unknown {mode!r}; allowed: chunk, fused_recurrent")
        num_v_heads = num_heads if num_v_heads is None else num_v_heads
        head_v_dim = int(head_dim * expand_v)
        if not math.isclose(head_dim * expand_v, head_v_dim, rel_tol=1e-5):
            raise ValueError(f"expand_v: head_dim * expand_v must be an integer, got {head_dim} * {expand_v}")
        super().__init__(hidden_size, num_heads=num_v_heads, head_k_dim=head_dim, head_v_dim=head_v_dim,
                         num_qk_heads=num_heads, conv_size=conv_size, norm_eps=norm_eps,
                         use_qk_l2norm=use_qk_l2norm, policy=policy, capacity=capacity, tau=tau, score=score,
                         block_size=block_size, chunk_size=chunk_size,
                         max_position_embeddings=max_position_embeddings, layer_idx=layer_idx)
        self.expand_v, self.mode = expand_v, mode

    @classmethod
    def from_fla(cls, layer: nn.Module, **dla_options: Any) -> "DLAGatedDeltaNet":
        """The DLA layer of the shape of fla's ``GatedDeltaNet`` ``layer``, with its weights (the three short
        convolutions become one; ``g_proj`` is ``gate_proj``, ``o_norm`` is ``norm``); ``dla_options`` are the DLA
        arguments (the ``lam`` weights of a policy that reads slots start at their init). On ``layer``'s device
        and dtype."""
        new = cls(hidden_size=layer.hidden_size, expand_v=layer.expand_v, head_dim=layer.head_dim,
                  num_heads=layer.num_heads, num_v_heads=layer.num_v_heads, mode=layer.mode,
                  use_gate=layer.use_gate, use_short_conv=layer.use_short_conv,
                  allow_neg_eigval=layer.allow_neg_eigval, conv_size=layer.conv_size, conv_bias=layer.conv_bias,
                  layer_idx=layer.layer_idx, norm_eps=layer.o_norm.eps, **dla_options)
        weight = layer.q_proj.weight
        new.to(device=weight.device, dtype=weight.dtype)
        state = {"conv.weight": torch.cat([c.weight.reshape(c.weight.shape[0], -1)
                                           for c in (layer.q_conv1d, layer.k_conv1d, layer.v_conv1d)])}
        for ours, theirs in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"), ("a_proj", "a_proj"),
                             ("b_proj", "b_proj"), ("gate_proj", "g_proj"), ("o_proj", "o_proj")):
            state[f"{ours}.weight"] = getattr(layer, theirs).weight
        state.update({"A_log": layer.A_log, "dt_bias": layer.dt_bias, "norm.weight": layer.o_norm.weight})
        _load_matching(new, state)
        return new


class DLAMamba2(FLALayerInterface, Mamba2Mixer):
    """fla's ``Mamba2`` layer interface on :class:`~dla.layers.Mamba2Mixer`.

    Args (fla's):
        num_heads: heads; ``None``/0 = ``expand * hidden_size // head_dim`` (and if given, it must equal that).
        head_dim: head dimension ``P``.
        hidden_size: model width.
        state_size: state size ``N``.
        expand: inner width ``expand * hidden_size``.
        n_groups: groups of ``B``/``C``.
        conv_kernel: width of the short convolution (with bias).
        conv_init: ``U(-conv_init, conv_init)`` init of the convolution weights; ``None``: PyTorch's default.
        A_init_range, dt_min, dt_max, dt_init_floor: the inits of ``A_log`` and ``dt_bias``.
        norm_eps: epsilon of the gated norm.
        chunk_size: fla's kernel chunk (256 by default in fla's configs); the DLA op takes chunks of
            ``min(chunk_size, 64)`` tokens (its Triton kernels take 16 to 64; the output does not depend on it).
        layer_idx: the layer's index in the model (its entry of the cache).
        backend: fla's kernel choice; the DLA op picks its own.
        use_conv_bias, hidden_act, D_has_hdim, rmsnorm, norm_before_gate, dt_limit, use_bias: only fla's defaults
            (``True``, ``silu``, ``False``, ``True``, ``False``, ``(0, inf)``, ``False``) are implemented.

    Args (DLA's): ``policy``, ``capacity``, ``tau``, ``score``, ``block_size``, ``max_position_embeddings``
    (:class:`~dla.layers.recurrent.RecurrentMixer`).

    Example:
        >>> layer = DLAMamba2(num_heads=4, head_dim=32, hidden_size=64, state_size=16, layer_idx=0, capacity=4)
        >>> layer(torch.randn(2, 10, 64))[0].shape
        torch.Size([2, 10, 64])
    """

    def __init__(self, num_heads: Optional[int] = None, head_dim: int = 64, hidden_size: int = 2048,
                 state_size: int = 128, expand: int = 2, n_groups: int = 1, conv_kernel: int = 4,
                 conv_init: Optional[float] = None, use_conv_bias: bool = True, hidden_act: str = "silu",
                 A_init_range: Tuple[float, float] = (1, 16), D_has_hdim: bool = False, rmsnorm: bool = True,
                 norm_before_gate: bool = False, dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, dt_limit: Tuple[float, float] = (0.0, float("inf")),
                 use_bias: bool = False, norm_eps: float = 1e-5, chunk_size: int = 256,
                 layer_idx: Optional[int] = None, backend: str = "cuda", *, policy: str = "dla",
                 capacity: int = 30, tau: float = 0.6, score: str = "drift", block_size: int = 64,
                 max_position_embeddings: int = 2048):
        _refuse("use_conv_bias", use_conv_bias, True)
        _refuse("hidden_act", hidden_act, "silu")
        _refuse("D_has_hdim", D_has_hdim, False)
        _refuse("rmsnorm", rmsnorm, True)
        _refuse("norm_before_gate", norm_before_gate, False)
        _refuse("use_bias", use_bias, False)
        if tuple(dt_limit) != (0.0, float("inf")):
            raise ValueError(f"dt_limit: {tuple(dt_limit)!r} is not supported by the DLA layer (only (0.0, inf))")
        inner = expand * hidden_size
        if head_dim < 1 or inner % head_dim:
            raise ValueError(f"head_dim: must divide expand * hidden_size = {inner}, got {head_dim}")
        if num_heads not in (None, 0, inner // head_dim):
            raise ValueError(f"num_heads: num_heads * head_dim must equal expand * hidden_size = {inner}, got "
                             f"{num_heads} * {head_dim}")
        super().__init__(hidden_size, num_heads=inner // head_dim, head_v_dim=head_dim, head_k_dim=state_size,
                         num_qk_heads=n_groups, conv_size=conv_kernel, norm_eps=norm_eps, dt_min=dt_min,
                         dt_max=dt_max, dt_floor=dt_init_floor, a_init_range=tuple(A_init_range), policy=policy,
                         capacity=capacity, tau=tau, score=score, block_size=block_size,
                         chunk_size=min(chunk_size, MAX_OP_CHUNK), max_position_embeddings=max_position_embeddings,
                         layer_idx=layer_idx)
        self.expand, self.conv_init, self.backend = expand, conv_init, backend
        if conv_init is not None:
            with torch.no_grad():
                self.conv.weight.uniform_(-conv_init, conv_init)

    @classmethod
    def from_fla(cls, layer: nn.Module, **dla_options: Any) -> "DLAMamba2":
        """The DLA layer of the shape of fla's ``Mamba2`` ``layer``, with its weights; ``dla_options`` are the DLA
        arguments (the ``lam`` weights of a policy that reads slots start at their init). On ``layer``'s device
        and dtype.

        Raises:
            ValueError: ``layer``'s ``in_proj`` carries the extra gated-MLP outputs (``d_mlp > 0``).
        """
        new = cls(num_heads=layer.num_heads, head_dim=layer.head_dim, hidden_size=layer.hidden_size,
                  state_size=layer.ssm_state_size, expand=layer.expand, n_groups=layer.n_groups,
                  conv_kernel=layer.conv_kernel_size, use_conv_bias=layer.conv1d.bias is not None,
                  hidden_act=layer.activation, A_init_range=tuple(layer.A_init_range), D_has_hdim=layer.D_has_hdim,
                  rmsnorm=layer.rmsnorm, norm_before_gate=layer.norm_before_gate, dt_min=layer.dt_min,
                  dt_max=layer.dt_max, dt_limit=tuple(layer.dt_limit), use_bias=layer.in_proj.bias is not None,
                  norm_eps=layer.norm_eps, chunk_size=layer.chunk_size, layer_idx=layer.layer_idx, **dla_options)
        if layer.in_proj.weight.shape != new.in_proj.weight.shape:
            raise ValueError(f"layer: in_proj has {layer.in_proj.weight.shape[0]} outputs, the DLA layer "
                             f"{new.in_proj.weight.shape[0]} (fla's extra gated-MLP outputs are not supported)")
        weight = layer.in_proj.weight
        new.to(device=weight.device, dtype=weight.dtype)
        _load_matching(new, {"in_proj.weight": layer.in_proj.weight, "conv.weight": layer.conv1d.weight[:, 0],
                             "conv.bias": layer.conv1d.bias, "A_log": layer.A_log, "dt_bias": layer.dt_bias,
                             "D": layer.D, "norm.weight": layer.norm.weight, "out_proj.weight": layer.out_proj.weight})
        return new


def _load_matching(module: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``module``'s parameters of the same names, checking every shape."""
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            if tuple(params[name].shape) != tuple(value.shape):
                raise ValueError(f"layer: {name} has shape {tuple(value.shape)}, the DLA layer needs "
                                 f"{tuple(params[name].shape)}")
            params[name].copy_(value)


__all__ = ["DLAGatedDeltaNet", "DLAMamba2", "FLALayerInterface"]
