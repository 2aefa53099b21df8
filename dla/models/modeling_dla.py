"""DLA language models: one modeling file for every mixer (chosen per layer from a registry) and the decoding cache.

``DLAModel`` stacks pre-norm blocks ``x + mixer(RMSNorm(x))``, ``x + SwiGLU(RMSNorm(x))`` over a token embedding;
``DLAForCausalLM`` adds the LM head and ``generate()``. Decoding prefills the prompt with the same op as training
(a left-padded batch in one op call), then runs one-token steps from the cached state (conv tails and
:class:`~dla.ops.DLAState` per recurrent layer, stepped by :func:`~dla.ops.dla_step` with fixed shapes; keys and
values per attention layer).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Dict, Optional, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import Cache, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from dla.layers import AttentionLayerCache, AttentionMixer, GatedDeltaNetMixer, Mamba2Mixer, RecurrentLayerCache
from dla.layers.modules import RMSNorm
from dla.models.configuration_dla import DLAConfig

MIXERS: Dict[str, Type[nn.Module]] = {
    "mamba2": Mamba2Mixer,
    "gdn": GatedDeltaNetMixer,
    "attention": AttentionMixer,
}
"""Mixer registry: the names ``DLAConfig.mixer`` / ``layer_mixers`` accept, mapped to their classes."""

LayerCache = Union[RecurrentLayerCache, AttentionLayerCache]


def build_mixer(config: DLAConfig, layer_idx: int) -> nn.Module:
    """The mixer of layer ``layer_idx``, with its sizes and memory policy read off ``config``."""
    name = config.layer_mixers[layer_idx]
    cls = MIXERS[name]
    if name == "attention":
        return cls(config.hidden_size, num_heads=config.num_attention_heads, num_kv_heads=config.num_key_value_heads,
                   rope_theta=config.rope_theta, max_position_embeddings=config.max_position_embeddings,
                   layer_idx=layer_idx)
    extra = {"skip_init": config.skip_init} if name == "mamba2" else {"use_qk_l2norm": config.use_qk_l2norm}
    return cls(config.hidden_size, num_heads=config.num_heads, head_k_dim=config.head_k_dim,
               head_v_dim=config.value_dim(name), num_qk_heads=config.qk_heads(name), conv_size=config.conv_size,
               norm_eps=config.rms_norm_eps, policy=config.policy, capacity=config.capacity, tau=config.tau,
               score=config.score, boundary_grad=config.boundary_grad,
               boundary_temperature=config.boundary_temperature, block_size=config.block_size,
               chunk_size=config.chunk_size, max_position_embeddings=config.max_position_embeddings,
               layer_idx=layer_idx, **extra)


class DLACache(Cache):
    """Decoding cache of a DLA model, following transformers' :class:`~transformers.Cache` API.

    ``layers[i]`` is a :class:`~dla.layers.RecurrentLayerCache` (short-conv tail + :class:`~dla.ops.DLAState`) or an
    :class:`~dla.layers.AttentionLayerCache` (keys, values, padding mask, next RoPE position); the mixers update them
    in place. Recurrent layers take constant memory in the number of tokens (except ``dla_unbounded``); attention
    layers grow. ``reorder_cache`` (beam search), ``batch_repeat_interleave`` and ``batch_select_indices`` act on every
    tensor's batch dimension. States cannot be rolled back, so ``crop`` raises.

    Args:
        config: the model's :class:`DLAConfig` (one layer cache per layer, by mixer).
    """

    def __init__(self, config: DLAConfig):
        super().__init__(layers=[AttentionLayerCache() if name == "attention" else RecurrentLayerCache()
                                 for name in config.layer_mixers])

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Positions processed so far (padding included), the same for every layer."""
        return self.layers[layer_idx].seen_tokens if layer_idx < len(self.layers) else 0

    def get_max_length(self, layer_idx: Optional[int] = None) -> int:
        return -1

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        raise ValueError("layer_idx: DLACache layers are updated in place by the DLA mixers, not through update()")

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError(f"tokens_to_remove: a DLA cache cannot be rolled back (got {tokens_to_remove})")

    def nbytes(self) -> int:
        """Bytes held by all cached tensors."""
        return sum(layer.nbytes() for layer in self.layers)

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return any(layer.seen_tokens > 0 for layer in self.layers)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DLABlock(GradientCheckpointingLayer):
    """Pre-norm block: ``x + mixer(RMSNorm(x))``, then ``x + SwiGLU(RMSNorm(x))``."""

    def __init__(self, config: DLAConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.mixer_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mixer = build_mixer(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.mlp_size)

    def forward(self, hidden: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                cache: Optional[LayerCache] = None, position_ids: Optional[torch.Tensor] = None,
                cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
        extra = {"position_ids": position_ids} if self.mixer.needs_positions else {}
        hidden = hidden + self.mixer(self.mixer_norm(hidden), attention_mask=attention_mask, cache=cache,
                                     cu_seqlens=cu_seqlens, **extra)
        return hidden + self.mlp(self.mlp_norm(hidden))


def check_safetensors(path: Union[str, os.PathLike], argument: str = "pretrained_model_name_or_path") -> None:
    """Raise ``ValueError`` naming ``path`` when it is not a complete safetensors file: a header that does not parse,
    or fewer bytes than the header's tensors need (a copy or a download cut short). Reads the header only.

    Raises:
        ValueError: ``<argument>: <path> is truncated ...`` or ``... is not a safetensors file``.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        header = f.read(n) if n is not None and n <= size - 8 else None
    if header is None:
        raise ValueError(f"{argument}: {str(path)!r} is truncated or not a safetensors file "
                         f"({size} bytes, shorter than its header)")
    try:
        entries = json.loads(header)
        end = max((int(e["data_offsets"][1]) for k, e in entries.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise ValueError(f"{argument}: {str(path)!r} is not a safetensors file (its header does "
                         f"not parse: {e})") from None
    if 8 + n + end > size:
        raise ValueError(f"{argument}: {str(path)!r} is truncated: {size} bytes, its tensors need "
                         f"{8 + n + end}; copy or save the checkpoint again")


def check_safetensors_dir(directory: Union[str, os.PathLike], argument: str = "pretrained_model_name_or_path") -> None:
    """:func:`check_safetensors` on every ``*.safetensors`` file of ``directory``."""
    for file in sorted(Path(directory).glob("*.safetensors")):
        check_safetensors(file, argument)


def _check_offsets(name: str, offsets: torch.Tensor, total: int, rows: int, T: int) -> torch.Tensor:
    """``offsets`` as int64 after checking it is ``[N + 1]`` non-decreasing from 0 to ``total`` with every row start
    among them (a document never spans two rows)."""
    if not isinstance(offsets, torch.Tensor) or offsets.dim() != 1 or offsets.numel() < 2 or \
            offsets.is_floating_point():
        raise ValueError(f"{name}: expected a 1-D integer tensor [N + 1] of document offsets, got {offsets!r}")
    offsets = offsets.to(torch.int64)
    values = offsets.tolist()
    if values[0] != 0 or values[-1] != total or any(b < a for a, b in zip(values, values[1:])):
        raise ValueError(f"{name}: expected non-decreasing offsets from 0 to {total} (the tokens of all rows), "
                         f"got {values}")
    if rows > 1 and not set(range(0, total, T)) <= set(values):
        raise ValueError(f"{name}: with {rows} rows every row must start a document; got {values}")
    return offsets


def _starts_to_offsets(starts: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool document starts -> ``[N + 1]`` int64 offsets over the ``B * T`` tokens (every row starts
    one)."""
    starts = starts.clone()
    starts[:, 0] = True
    flat = starts.reshape(-1)
    return torch.cat([flat.nonzero().squeeze(-1), flat.new_tensor([flat.numel()], dtype=torch.int64)])


def document_offsets(B: int, T: int, *, cu_seqlens: Optional[torch.Tensor] = None,
                     cu_seq_lens_q: Optional[torch.Tensor] = None, cu_seq_lens_k: Optional[torch.Tensor] = None,
                     seq_idx: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None
                     ) -> Optional[torch.Tensor]:
    """Where packed documents start, from whichever of transformers' padding-free conventions the caller used:
    ``cu_seqlens`` (ours) or ``cu_seq_lens_q`` / ``cu_seq_lens_k`` (flash-attention's offsets, which must be equal
    for a causal LM), ``seq_idx`` (Mamba's document index per token) or ``position_ids`` that restart inside a row
    (``DataCollatorWithFlattening``'s default). Every source given must agree.

    Returns:
        ``[N + 1]`` int64 offsets over the ``B * T`` tokens taken row after row, or ``None`` when nothing marks a
        document inside a row (position_ids counting up, or none given).

    Raises:
        ValueError: naming the argument, for a malformed one or two that disagree.
    """
    found = []
    total = B * T
    if cu_seqlens is not None:
        found.append(("cu_seqlens", _check_offsets("cu_seqlens", cu_seqlens, total, B, T)))
    if cu_seq_lens_q is not None or cu_seq_lens_k is not None:
        q = cu_seq_lens_q if cu_seq_lens_q is not None else cu_seq_lens_k
        k = cu_seq_lens_k if cu_seq_lens_k is not None else cu_seq_lens_q
        q, k = (_check_offsets(n, x, total, B, T) for n, x in (("cu_seq_lens_q", q), ("cu_seq_lens_k", k)))
        if not torch.equal(q, k):
            raise ValueError(f"cu_seq_lens_q, cu_seq_lens_k: a causal LM attends within each document, so the query "
                             f"and key offsets must be equal; got {q.tolist()} and {k.tolist()}")
        found.append(("cu_seq_lens_q", q))
    if seq_idx is not None:
        if not isinstance(seq_idx, torch.Tensor) or seq_idx.is_floating_point() or seq_idx.numel() != total or \
                seq_idx.dim() != 2:
            raise ValueError(f"seq_idx: expected [B, T] = {(B, T)} integer document indices, got "
                             f"{tuple(seq_idx.shape) if isinstance(seq_idx, torch.Tensor) else seq_idx!r}")
        seq = seq_idx.reshape(B, T)
        found.append(("seq_idx", _starts_to_offsets(F.pad(seq[:, 1:] != seq[:, :-1], (1, 0)))))
    if position_ids is not None and T > 1:
        if not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2 or \
                position_ids.shape[1] != T or position_ids.shape[0] not in (1, B):
            shape = tuple(position_ids.shape) if isinstance(position_ids, torch.Tensor) else position_ids
            raise ValueError(f"position_ids: expected [B, T] or [1, T] with T={T}, got {shape!r}")
        pos = position_ids.expand(B, T)
        restarts = F.pad(pos[:, 1:] != pos[:, :-1] + 1, (1, 0))
        if found or bool(restarts.any()):
            found.append(("position_ids", _starts_to_offsets(restarts)))
    if not found:
        return None
    (name, offsets), *others = found
    for other, theirs in others:
        if not torch.equal(theirs.to(offsets.device), offsets):
            raise ValueError(f"{name}, {other}: they mark different document starts ({offsets.tolist()} and "
                             f"{theirs.tolist()})")
    return offsets


class DLAPreTrainedModel(PreTrainedModel):
    """Weight init, config class and generation flags shared by the DLA models.

    Attention layers always run ``torch.nn.functional.scaled_dot_product_attention``: ``attn_implementation="sdpa"``
    (the default) and ``"eager"`` are accepted and run the same code; flash-attention implementations are refused.
    """

    config_class = DLAConfig
    config: DLAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["DLABlock"]
    _skip_keys_device_placement = ["past_key_values"]
    _is_stateful = True

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model builds its own DLACache on the first forward

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' ``from_pretrained``; from a local directory, its safetensors files are checked first, so a
        truncated one raises a ``ValueError`` naming it (see :func:`check_safetensors`)."""
        if pretrained_model_name_or_path is not None:
            local = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
            if local.is_dir():
                check_safetensors_dir(local)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' defaults (normal linear/embedding weights, unit norms), then each DLA module's own
        ``initial_values()`` (``A_log``, ``dt_bias``, ``D``, ``lam_scale``, conv weights); loaded weights are kept."""
        super()._init_weights(module)
        if hasattr(module, "initial_values"):
            for name, value in module.initial_values().items():
                init.copy_(getattr(module, name), value)


_TOLERATED_KWARGS = ("output_attentions", "cache_position")
"""Arguments transformers' callers pass that the DLA models take and ignore: ``cache_position`` (the cache counts
positions itself) and ``output_attentions`` (refused when true)."""


def _check_kwargs(kwargs: Dict[str, object]) -> None:
    unknown = sorted(k for k in kwargs if k not in _TOLERATED_KWARGS)
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: unexpected argument(s) of the DLA model's forward")
    if kwargs.get("output_attentions"):
        raise ValueError("output_attentions: DLA models do not return attention weights")


class DLAModel(DLAPreTrainedModel):
    """Embedding, ``num_hidden_layers`` :class:`DLABlock`, final RMSNorm."""

    def __init__(self, config: DLAConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([DLABlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(self, input_ids: Optional[torch.LongTensor] = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.LongTensor] = None, past_key_values: Optional[DLACache] = None,
                inputs_embeds: Optional[torch.Tensor] = None, use_cache: Optional[bool] = None,
                cu_seqlens: Optional[torch.Tensor] = None, output_hidden_states: Optional[bool] = None,
                return_dict: Optional[bool] = None, cu_seq_lens_q: Optional[torch.Tensor] = None,
                cu_seq_lens_k: Optional[torch.Tensor] = None, max_length_q: Optional[int] = None,
                max_length_k: Optional[int] = None, seq_idx: Optional[torch.Tensor] = None,
                **kwargs) -> Union[BaseModelOutputWithPast, Tuple]:
        """Run the blocks over ``input_ids [B, T]`` (or ``inputs_embeds [B, T, D]``).

        Packed documents (padding-free training, as ``DataCollatorWithFlattening`` builds it): ``cu_seqlens``,
        ``cu_seq_lens_q`` / ``cu_seq_lens_k``, ``seq_idx`` or ``position_ids`` that restart inside a row mark where
        documents start (:func:`document_offsets`); every document is then run as if alone: recurrent states and
        short convolutions restart, attention stays inside it with RoPE positions from 0. Such a call builds no
        cache and takes no padding mask.

        Args:
            attention_mask: ``[B, S]`` 1 for tokens, 0 for (left) padding, ``S >= T``; as in transformers it may
                cover the cached tokens too: only its last ``T`` columns are read (the cache remembers the rest).
            position_ids: RoPE positions ``[B, T]`` of the attention layers; default: real tokens counted from 0
                (padding takes no position). Without ``attention_mask`` and cache, a restart inside a row
                (``[0, 1, 2, 0, 1]``) starts a new document.
            past_key_values: a :class:`DLACache` to continue from, updated in place.
            use_cache: build and return a cache; default ``config.use_cache`` when not training (never for packed
                documents).
            cu_seqlens: ``[N + 1]`` offsets of packed documents over the ``B * T`` tokens, row after row (training;
                no cache, no mask).
            cu_seq_lens_q, cu_seq_lens_k: the same offsets under flash-attention's names (equal for a causal LM);
                ``max_length_q`` / ``max_length_k`` come with them and are not needed.
            seq_idx: ``[B, T]`` document index of every token (Mamba's convention); a change starts a document.
            output_hidden_states: also return the input of every block and the final normed output.
            return_dict: return a ``BaseModelOutputWithPast`` (default) or a tuple.
        """
        _check_kwargs(kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("input_ids, inputs_embeds: pass exactly one of them")
        if inputs_embeds is None and (input_ids.dim() != 2 or input_ids.shape[1] == 0):
            raise ValueError(f"input_ids: expected [B, T] token ids with T >= 1, got shape {tuple(input_ids.shape)}")
        if inputs_embeds is not None and (inputs_embeds.dim() != 3 or inputs_embeds.shape[1] == 0):
            raise ValueError(f"inputs_embeds: expected [B, T, D] with T >= 1, got shape {tuple(inputs_embeds.shape)}")
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = hidden.shape[:2]
        if past_key_values is not None and not isinstance(past_key_values, DLACache):
            raise ValueError(f"past_key_values: expected a DLACache, got {type(past_key_values).__name__}")
        inferred = attention_mask is None and past_key_values is None  # else positions are generate()'s own
        offsets = document_offsets(B, T, cu_seqlens=cu_seqlens, cu_seq_lens_q=cu_seq_lens_q,
                                   cu_seq_lens_k=cu_seq_lens_k, seq_idx=seq_idx,
                                   position_ids=position_ids if inferred else None)
        if offsets is not None:
            if past_key_values is not None or attention_mask is not None or use_cache:
                raise ValueError("cu_seqlens: packed documents are run without a cache (use_cache=False, no "
                                 "past_key_values) and without attention_mask")
            return self._forward_packed(hidden, offsets, output_hidden_states, return_dict)
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if self.gradient_checkpointing and self.training:
            use_cache = False
        cache = past_key_values if past_key_values is not None else (DLACache(self.config) if use_cache else None)
        mask = None
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] < T:
                raise ValueError(f"attention_mask: expected [B={B}, S >= T={T}], got {tuple(attention_mask.shape)}")
            mask = attention_mask[:, -T:]
        all_hidden = () if output_hidden_states else None
        for i, block in enumerate(self.layers):
            if all_hidden is not None:
                all_hidden += (hidden,)
            hidden = block(hidden, attention_mask=mask, cache=cache.layers[i] if cache is not None else None,
                           position_ids=position_ids, cu_seqlens=cu_seqlens)
        hidden = self.norm(hidden)
        if all_hidden is not None:
            all_hidden += (hidden,)
        out = BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=cache, hidden_states=all_hidden)
        return out if (return_dict if return_dict is not None else self.config.return_dict) else out.to_tuple()

    def _forward_packed(self, hidden: torch.Tensor, offsets: torch.Tensor, output_hidden_states: Optional[bool],
                        return_dict: Optional[bool]) -> Union[BaseModelOutputWithPast, Tuple]:
        """The blocks over the ``B * T`` tokens as one row of documents delimited by ``offsets``."""
        B, T, D = hidden.shape
        flat = hidden.reshape(1, B * T, D)
        offsets = offsets.to(hidden.device)
        all_hidden = () if output_hidden_states else None
        for block in self.layers:
            if all_hidden is not None:
                all_hidden += (flat.view(B, T, D),)
            flat = block(flat, cu_seqlens=offsets)
        flat = self.norm(flat).view(B, T, D)
        if all_hidden is not None:
            all_hidden += (flat,)
        out = BaseModelOutputWithPast(last_hidden_state=flat, past_key_values=None, hidden_states=all_hidden)
        return out if (return_dict if return_dict is not None else self.config.return_dict) else out.to_tuple()


class DLAForCausalLM(DLAPreTrainedModel, GenerationMixin):
    """:class:`DLAModel` with a language-modelling head; supports ``generate()`` (greedy, sampling, beam search).

    Example:
        >>> config = DLAConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, mixer="gdn", num_heads=2,
        ...                    head_k_dim=8, capacity=4)
        >>> model = DLAForCausalLM(config).eval()
        >>> model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False).shape
        torch.Size([1, 7])
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DLAConfig):
        super().__init__(config)
        self.model = DLAModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(self, input_ids: Optional[torch.LongTensor] = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.LongTensor] = None, past_key_values: Optional[DLACache] = None,
                inputs_embeds: Optional[torch.Tensor] = None, labels: Optional[torch.LongTensor] = None,
                use_cache: Optional[bool] = None, cu_seqlens: Optional[torch.Tensor] = None,
                logits_to_keep: Union[int, torch.Tensor] = 0, output_hidden_states: Optional[bool] = None,
                return_dict: Optional[bool] = None,
                num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
                **kwargs) -> Union[CausalLMOutputWithPast, Tuple]:
        """Logits ``[B, T, vocab]`` (and the next-token loss when ``labels`` is given).

        Args:
            labels: ``[B, T]`` token ids, ``-100`` where no loss is taken; shifted inside (position ``t`` predicts
                ``labels[:, t + 1]``; with packed documents set ``-100`` on each document's first token). The loss
                is the cross-entropy in float32 (float64 for float64 models), averaged over the predicted labels.
            num_items_in_batch: divide the summed loss by this count instead (gradient accumulation, as the
                transformers Trainer passes it).
            logits_to_keep: compute logits only for the last ``n`` positions (``0`` = all), for the positions of
                a 1-D index tensor, or for the ``True`` positions of a ``[B, T]`` bool mask (logits ``[N, vocab]``
                in the mask's row-major order; what a task scoring few positions, like MQAR, trains with: the
                vocabulary projection and its loss cost that fraction of the full ones).
            Others: as :meth:`DLAModel.forward`.
        """
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                         cu_seqlens=cu_seqlens, output_hidden_states=output_hidden_states, return_dict=True, **kwargs)
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
        elif logits_to_keep.dtype == torch.bool:
            if logits_to_keep.shape != hidden.shape[:2]:
                raise ValueError(f"logits_to_keep: a bool mask must be [B, T] = {tuple(hidden.shape[:2])}, got "
                                 f"{tuple(logits_to_keep.shape)}")
            if labels is not None:
                raise ValueError("labels: the loss needs every position's logits; with a bool logits_to_keep take "
                                 "the loss outside")
            if logits_to_keep.device.type != "cpu":
                hidden = hidden[logits_to_keep.to(hidden.device)]
            else:  # a host mask (the trainer's): its row indices are found there, so the device is not waited for
                rows = logits_to_keep.reshape(-1).nonzero().squeeze(1).to(hidden.device, non_blocking=True)
                hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)
        else:
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(f"labels: expected shape {tuple(logits.shape[:2])} (logits_to_keep=0), "
                                 f"got {tuple(labels.shape)}")
            dt = torch.promote_types(logits.dtype, torch.float32)
            loss = F.cross_entropy(logits[:, :-1].to(dt).flatten(0, 1), labels[:, 1:].flatten().to(logits.device),
                                   ignore_index=-100, reduction="mean" if num_items_in_batch is None else "sum")
            if num_items_in_batch is not None:
                loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device)
        result = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                        hidden_states=out.hidden_states)
        return result if (return_dict if return_dict is not None else self.config.return_dict) else result.to_tuple()


__all__ = ["DLACache", "DLAModel", "DLAForCausalLM", "DLAPreTrainedModel", "DLABlock", "MIXERS", "build_mixer",
           "check_safetensors", "check_safetensors_dir", "document_offsets"]
