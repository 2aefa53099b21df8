"""Configuration of DLA language models: one typed, documented, validated config for every mixer."""

from __future__ import annotations

import dataclasses
import difflib
import math
import warnings
from typing import Any, List, Optional, Union

from transformers import GenerationConfig, PretrainedConfig

from dla.ops import POLICIES, SCORES
from dla.ops.common.boundary_grad import BOUNDARY_GRADS, SCORED_POLICIES

MIXER_NAMES = ("mamba2", "gdn", "attention")
"""Mixers a layer can use; the modeling file's registry maps each name to its class."""

_INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "head_k_dim", "expand", "conv_size",
         "capacity", "block_size", "chunk_size", "num_attention_heads", "max_position_embeddings")
_OPTIONAL_INTS = ("num_qk_heads", "head_v_dim", "num_key_value_heads", "intermediate_size")
_POSITIVE_FLOATS = ("expand_v", "rope_theta", "rms_norm_eps", "boundary_temperature")
_BOOLS = ("tie_word_embeddings", "use_cache", "use_qk_l2norm")
_TRANSFORMERS_KWARGS = frozenset({"model_type", "torch_dtype", "num_labels", "name_or_path", "auto_map",
                                  "output_attentions", "attn_implementation", "experts_implementation",
                                  "per_layer_config"})
"""Keyword arguments transformers itself passes to (or reads from the JSON of) a config that are not fields."""


class DLAConfig(PretrainedConfig):
    r"""Configuration of :class:`~dla.models.DLAModel` / :class:`~dla.models.DLAForCausalLM`.

    Every layer is a pre-norm block ``x + mixer(RMSNorm(x))``, ``x + SwiGLU(RMSNorm(x))``. The mixer is ``mixer``
    for every layer except the indices in ``attention_layers`` (hybrid models), which use softmax attention.

    Attributes:
        vocab_size: tokens in the vocabulary.
        hidden_size: model width ``D``.
        num_hidden_layers: number of blocks.
        mixer: ``mamba2`` | ``gdn`` | ``attention``: the mixer of every layer not listed in ``attention_layers``.
        attention_layers: indices of the layers that use softmax attention (hybrid models); ``None`` = none.
        num_heads: heads ``H`` of the recurrent mixers (the value heads of the DLA op).
        num_qk_heads: query/key heads ``G`` of the recurrent mixers, dividing ``num_heads`` (Mamba-2's
            ``ngroups``); ``None`` = 1 for ``mamba2``, ``num_heads`` for ``gdn``.
        head_k_dim: key / state dimension ``K`` per head (Mamba-2's ``d_state``).
        head_v_dim: value dimension ``V`` per head; ``None`` = ``expand * hidden_size // num_heads`` for
            ``mamba2`` and ``head_k_dim * expand_v`` for ``gdn``.
        expand: Mamba-2 inner width ``expand * hidden_size`` (used when ``head_v_dim`` is ``None``).
        expand_v: Gated DeltaNet value expansion ``V / K`` (used when ``head_v_dim`` is ``None``).
        conv_size: width of the short causal depthwise convolution of the recurrent mixers.
        skip_init: Mamba-2's per-head skip ``D`` in ``o + D x``: its initial value (trained), or ``None`` for no
            skip term (Mamba-2 uses 1; docs/results.md measures what it does to recall).
        policy: memory policy of the recurrent mixers: ``single`` (the backbone), ``fenwick`` (Log-Linear),
            ``dla``, and the ablations ``fixed`` and ``dla_unbounded`` (docs/design.md section 3.1).
        capacity: ``C``, the most live states per head (``dla``, ``fixed``; ``lam`` entries of ``dla_unbounded``).
        tau: boundary threshold of the information score (finite, ``>= 0``).
        score: information score, ``drift`` (the paper's) or ``write``.
        boundary_grad: ``None`` (the boundary decisions pass no gradient) or ``ste``: the trainable boundary, a
            straight-through sigmoid gate on each score-opened slot's readout that lets the score learn; outputs and
            decoding unchanged (docs/design.md section 3.2). Policies ``dla`` and ``dla_unbounded``.
        boundary_temperature: the gate's temperature (``> 0``): ``sigmoid((I - tau) / boundary_temperature)``.
        block_size: slot width of the ``fixed`` policy.
        chunk_size: chunk length of the chunked DLA op.
        use_qk_l2norm: ``gdn`` only: L2-normalise queries and keys per head (as fla's Gated DeltaNet); without it
            the delta rule is stable only for keys with ``beta ||k||^2 <= 2``.
        num_attention_heads: query heads of the attention layers.
        num_key_value_heads: key/value heads of the attention layers (GQA); ``None`` = ``num_attention_heads``.
        rope_theta: RoPE base of the attention layers.
        max_position_embeddings: the longest sequence attention layers accept (longer raises ``ValueError``); the
            ``fenwick`` policy sizes its ``ceil(log2 T) + 1`` ``lam`` levels for it.
        intermediate_size: hidden width of the SwiGLU MLP; ``None`` = ``8/3 * hidden_size`` rounded up to a
            multiple of 32.
        rms_norm_eps: epsilon of every RMSNorm.
        initializer_range: standard deviation of the normal init of linear and embedding weights.
        tie_word_embeddings: share the input embedding with the output projection.
        use_cache: return a decoding cache by default (inference only: training forwards build none).
        pad_token_id, bos_token_id, eos_token_id: special tokens.

    Raises:
        ValueError: from :meth:`validate` (run at construction), naming the field, for impossible sizes, unknown
            mixer / policy / score, or out-of-range values.

    Example:
        >>> config = DLAConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, mixer="gdn", num_heads=2,
        ...                    head_k_dim=16, policy="dla", capacity=8, attention_layers=[1])
        >>> config.layer_mixers
        ['gdn', 'attention']
    """

    model_type = "dla"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 32000
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    mixer: str = "gdn"
    attention_layers: Optional[List[int]] = None
    num_heads: int = 8
    num_qk_heads: Optional[int] = None
    head_k_dim: int = 128
    head_v_dim: Optional[int] = None
    expand: int = 2
    expand_v: float = 2.0
    conv_size: int = 4
    skip_init: Optional[float] = 1.0
    policy: str = "dla"
    capacity: int = 30
    tau: float = 0.6
    score: str = "drift"
    boundary_grad: Optional[str] = None
    boundary_temperature: float = 0.1
    block_size: int = 64
    chunk_size: int = 64
    use_qk_l2norm: bool = True
    num_attention_heads: int = 8
    num_key_value_heads: Optional[int] = None
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    intermediate_size: Optional[int] = None
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    use_cache: bool = True
    pad_token_id: Optional[int] = None
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[Union[int, List[int]]] = None

    def __post_init__(self, **kwargs: Any):
        self._warn_unknown(kwargs)
        if self.attention_layers is not None:
            self.attention_layers = list(self.attention_layers)
        super().__post_init__(**kwargs)
        self.validate()

    def _warn_unknown(self, kwargs: dict) -> None:
        """A ``UserWarning`` per keyword that is no field (a typo such as ``capcity``): transformers stores it as an
        attribute that nothing reads."""
        fields = [f.name for f in dataclasses.fields(self)]
        known = _TRANSFORMERS_KWARGS | set(GenerationConfig().to_dict())
        for key in sorted(k for k in kwargs if not k.startswith("_") and k not in known):
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            warnings.warn(f"DLAConfig: {key!r} is not a field{hint}; it is stored but no DLA model reads it",
                          UserWarning, stacklevel=4)

    @property
    def layer_mixers(self) -> List[str]:
        """The mixer name of every layer."""
        hybrid = set(self.attention_layers or ())
        return ["attention" if i in hybrid else self.mixer for i in range(self.num_hidden_layers)]

    def qk_heads(self, mixer: str) -> int:
        """Query/key heads ``G`` of a recurrent ``mixer``."""
        if self.num_qk_heads is not None:
            return self.num_qk_heads
        return 1 if mixer == "mamba2" else self.num_heads

    def value_dim(self, mixer: str) -> int:
        """Value head dimension ``V`` of a recurrent ``mixer``."""
        if self.head_v_dim is not None:
            return self.head_v_dim
        if mixer == "mamba2":
            return self.expand * self.hidden_size // self.num_heads
        return int(round(self.head_k_dim * self.expand_v))

    @property
    def mlp_size(self) -> int:
        """Hidden width of the SwiGLU MLP."""
        if self.intermediate_size is not None:
            return self.intermediate_size
        return 32 * math.ceil(8 * self.hidden_size / 3 / 32)

    def validate(self) -> None:
        """Check types, ranges and size compatibility; raise ``ValueError`` naming the offending field."""
        for name in _INTS:
            _check_int(name, getattr(self, name), optional=False)
        for name in _OPTIONAL_INTS:
            _check_int(name, getattr(self, name), optional=True)
        for name in _POSITIVE_FLOATS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        tau, init = self.tau, self.initializer_range
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
            raise ValueError(f"tau: expected a finite number >= 0, got {tau!r}")
        if isinstance(init, bool) or not isinstance(init, (int, float)) or not math.isfinite(init) or init < 0:
            raise ValueError(f"initializer_range: expected a finite number >= 0, got {init!r}")
        skip = self.skip_init
        if skip is not None and (isinstance(skip, bool) or not isinstance(skip, (int, float))
                                 or not math.isfinite(skip)):
            raise ValueError(f"skip_init: expected a finite number or None (no skip term), got {skip!r}")
        if self.mixer not in MIXER_NAMES:
            raise ValueError(f"mixer: unknown {self.mixer!r}; allowed: {', '.join(MIXER_NAMES)}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy: unknown {self.policy!r}; allowed: {', '.join(POLICIES)}")
        if self.score not in SCORES:
            raise ValueError(f"score: unknown {self.score!r}; allowed: {', '.join(SCORES)}")
        if self.boundary_grad is not None and self.boundary_grad not in BOUNDARY_GRADS:
            raise ValueError(f"boundary_grad: unknown {self.boundary_grad!r}; allowed: null (off), "
                             f"{', '.join(BOUNDARY_GRADS)}")
        layers = self.attention_layers or []
        if not isinstance(layers, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in layers) or \
                len(set(layers)) != len(layers) or any(not 0 <= i < self.num_hidden_layers for i in layers):
            raise ValueError(f"attention_layers: expected distinct layer indices in [0, num_hidden_layers="
                             f"{self.num_hidden_layers}), got {self.attention_layers!r}")
        used = set(self.layer_mixers)
        for mixer in sorted(used - {"attention"}):
            self._validate_recurrent(mixer)
        if "attention" in used:
            self._validate_attention()
        super().validate()

    def _validate_recurrent(self, mixer: str) -> None:
        if self.boundary_grad is not None and self.policy not in SCORED_POLICIES:
            raise ValueError(f"boundary_grad: policy {self.policy!r} does not place its boundaries by the score; "
                             f"allowed with {' or '.join(SCORED_POLICIES)}")
        if mixer == "mamba2" and self.head_v_dim is None and (self.expand * self.hidden_size) % self.num_heads:
            raise ValueError(f"num_heads: must divide the Mamba-2 inner width expand * hidden_size = "
                             f"{self.expand * self.hidden_size}, got {self.num_heads}")
        if mixer == "gdn" and self.head_v_dim is None and \
                not math.isclose(self.head_k_dim * self.expand_v, round(self.head_k_dim * self.expand_v)):
            raise ValueError(f"expand_v: head_k_dim * expand_v must be an integer, got {self.head_k_dim} * "
                             f"{self.expand_v}")
        if self.value_dim(mixer) < 1:
            raise ValueError(f"head_v_dim: the {mixer} value head dimension must be >= 1, got {self.value_dim(mixer)}")
        G = self.qk_heads(mixer)
        if self.num_heads % G:
            raise ValueError(f"num_qk_heads: must divide num_heads={self.num_heads}, got {G}")

    def _validate_attention(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"num_attention_heads: must divide hidden_size={self.hidden_size}, "
                             f"got {self.num_attention_heads}")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(f"num_attention_heads: RoPE needs an even head dimension, hidden_size / "
                             f"num_attention_heads = {self.hidden_size // self.num_attention_heads}")
        kv = self.num_key_value_heads if self.num_key_value_heads is not None else self.num_attention_heads
        if self.num_attention_heads % kv:
            raise ValueError(f"num_key_value_heads: must divide num_attention_heads={self.num_attention_heads}, "
                             f"got {kv}")


def _check_int(name: str, value: Any, optional: bool) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1{' or None' if optional else ''}, got {value!r}")


__all__ = ["DLAConfig", "MIXER_NAMES"]
