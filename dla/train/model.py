"""The model side of the trainer: the recipe's ``model`` section (``ModelSpec``), the transformers config built from
it, the causal LM, and what its forward takes. Works with any transformers causal LM; ``dla`` models are registered
by importing ``dla.models``."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn


@dataclass(frozen=True)
class ModelSpec:
    """A transformers model config: ``type`` is its ``model_type`` (``dla``, ``llama``, ...), ``options`` its fields.

    ``options`` may leave out ``vocab_size`` (then taken from the data) and ``eos_token_id`` (from the tokenizer).
    The fields are validated by building the config (``build_model_config``); names the config class does not
    define are an error, as transformers would otherwise store them silently.
    """

    type: str = "dla"  # model_type registered with transformers' AutoConfig
    options: dict = field(default_factory=dict)  # fields of that config class

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or not self.type:
            raise ValueError(f"type: expected a model_type such as 'dla' or 'llama', got {self.type!r}")
        object.__setattr__(self, "options", dict(self.options))


def _register(model_type: str) -> None:
    if model_type == "dla":
        import dla.models  # noqa: F401 - registers model_type "dla" with the Auto classes


def build_model_config(spec: ModelSpec, vocab_size: Optional[int] = None, eos_token_id: Optional[int] = None):
    """The transformers config of ``spec``; ``vocab_size`` / ``eos_token_id`` fill the fields ``spec`` leaves out.

    Raises:
        ValueError: an unknown ``model.type``, a field the config class does not define, a value its validation
            rejects, or ``model.vocab_size`` smaller than the data's ``vocab_size``.
    """
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    _register(spec.type)
    if spec.type not in CONFIG_MAPPING:
        raise ValueError(f"model.type: unknown model_type {spec.type!r}; e.g. dla, llama, mamba2")
    cls = CONFIG_MAPPING[spec.type]
    known = set(cls().to_dict())
    unknown = sorted(set(spec.options) - known)
    if unknown:
        raise ValueError(f"model.{unknown[0]}: not a field of {cls.__name__} (model.type={spec.type!r})")
    options = dict(spec.options)
    if vocab_size is not None:
        given = options.setdefault("vocab_size", vocab_size)
        if isinstance(given, int) and given < vocab_size:
            raise ValueError(f"model.vocab_size: {given} is smaller than the data's vocabulary of {vocab_size} "
                             f"tokens; raise it or leave it out (then it is taken from the data)")
    if eos_token_id is not None:
        options.setdefault("eos_token_id", eos_token_id)
    try:
        return AutoConfig.for_model(spec.type, **options)
    except (ValueError, TypeError) as e:
        message = str(e)
        raise ValueError(message if message.startswith("model.") else f"model.{message}") from None


def build_model(model_config) -> nn.Module:
    """A freshly initialised causal LM (``AutoModelForCausalLM.from_config``) in float32 on the current device."""
    from transformers import AutoModelForCausalLM

    _register(model_config.model_type)
    return AutoModelForCausalLM.from_config(model_config).to(torch.float32)


def forward_accepts(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` has a parameter called ``name`` (``**kwargs`` does not count)."""
    return name in inspect.signature(model.forward).parameters


def num_parameters(model: nn.Module) -> int:
    """Parameters of ``model`` (shared tensors once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model (classes named in ``_no_split_modules``), in order; the units
    that FSDP shards, ``torch.compile`` compiles and activation checkpointing recomputes."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def compile_blocks(model: nn.Module) -> None:
    """``torch.compile`` each repeated block in place (the whole model when it names none): what ``train.compile``
    does. DLA's recurrent layers compile whole (the op is one registered custom op)."""
    for block in block_modules(model) or [model]:
        block.compile()


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters left out of weight decay: those flagged ``_no_weight_decay``, biases and 1-D weights
    (norm scales)."""
    return {name for name, p in model.named_parameters()
            if getattr(p, "_no_weight_decay", False) or p.ndim < 2 or name.endswith(".bias")}


__all__ = ["ModelSpec", "build_model_config", "build_model", "forward_accepts", "num_parameters", "block_modules",
           "compile_blocks", "no_weight_decay_names"]
