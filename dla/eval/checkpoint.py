"""Loading a DLA checkpoint directory for evaluation, with errors a person can act on.

A checkpoint directory is what ``DLAForCausalLM.save_pretrained`` writes (``config.json`` with
``model_type: dla`` and the weights) plus, usually, the tokenizer saved beside it (``tokenizer.json`` /
``tokenizer_config.json``, e.g. ``dla.data.TextTokenizer.save``), or a separate tokenizer directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""``dtype`` names accepted by :func:`load_model` (and the ``dtype=`` model argument of the lm-eval adapter)."""

PathLike = Union[str, os.PathLike]


def check_dla_checkpoint(path: PathLike) -> Path:
    """Return ``path`` as a ``Path`` if it is a DLA checkpoint directory, else raise ``ValueError`` saying why.

    Raises:
        ValueError: ``path`` does not exist, is not a directory, has no ``config.json``, its ``model_type`` is
            not ``dla``, or a weights file is truncated (named; checked from the safetensors header, before
            anything is loaded or written).
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"pretrained: checkpoint directory {str(path)!r} does not exist")
    if not p.is_dir():
        raise ValueError(f"pretrained: {str(path)!r} is a file; expected a directory written by "
                         f"DLAForCausalLM.save_pretrained")
    config = p / "config.json"
    if not config.is_file():
        raise ValueError(f"pretrained: {str(path)!r} is not a DLA checkpoint (no config.json); expected a directory "
                         f"written by DLAForCausalLM.save_pretrained")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"pretrained: {str(config)!r} is not a JSON object ({e})") from e
    if model_type != "dla":
        raise ValueError(f"pretrained: {str(path)!r} is not a DLA checkpoint: config.json has model_type="
                         f"{model_type!r}, expected 'dla' (use lm-eval's --model hf for other models)")
    from dla.models.modeling_dla import check_safetensors_dir

    check_safetensors_dir(p, "pretrained")
    return p


def context_limit(config) -> Optional[int]:
    """The longest sequence a model built from ``config`` accepts, or ``None`` when it has no limit.

    Attention layers (RoPE tables) and the ``fenwick`` policy (``ceil(log2 T) + 1`` ``lam`` levels) are built for
    ``max_position_embeddings`` tokens and raise past it; recurrent ``dla`` / ``fixed`` / ``single`` /
    ``dla_unbounded`` layers run on any length.
    """
    if "attention" in config.layer_mixers or config.policy == "fenwick":
        return int(config.max_position_embeddings)
    return None


def resolve_dtype(dtype: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    """``None`` / ``"auto"`` -> ``None`` (keep the stored dtype); a name of ``DTYPES`` or a ``torch.dtype``."""
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype: unknown {dtype!r}; allowed: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_tokenizer(path: PathLike):
    """A ``transformers`` fast tokenizer from a local directory (no hub access).

    Raises:
        ValueError: no tokenizer files at ``path``, or they do not load.
    """
    from transformers import AutoTokenizer

    p = Path(path)
    if not p.is_dir() or not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise ValueError(f"tokenizer: no tokenizer in {str(path)!r} (expected tokenizer.json or "
                         f"tokenizer_config.json; save one there or pass tokenizer=DIR)")
    try:
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"tokenizer: could not load the tokenizer in {str(path)!r} ({e})") from e
    return tok


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu", dtype=None):
    """``DLAForCausalLM.from_pretrained(path)`` on ``device`` in ``dtype``, in eval mode.

    Raises:
        ValueError: ``path`` is not a DLA checkpoint (see :func:`check_dla_checkpoint`) or ``dtype`` is unknown.
    """
    from dla.models import DLAForCausalLM

    p = check_dla_checkpoint(path)
    dt = resolve_dtype(dtype)
    kwargs = {"dtype": dt} if dt is not None else {}
    model = DLAForCausalLM.from_pretrained(str(p), local_files_only=True, **kwargs)
    return model.to(device).eval()


def load_checkpoint(path: PathLike, tokenizer: Optional[PathLike] = None, device: Union[str, torch.device] = "cpu",
                    dtype=None) -> Tuple[torch.nn.Module, object]:
    """The model of ``path`` and its tokenizer (from ``tokenizer``, default ``path``).

    Example:
        >>> model, tok = load_checkpoint("runs/tiny")  # doctest: +SKIP
    """
    check_dla_checkpoint(path)
    tok = load_tokenizer(tokenizer if tokenizer is not None else path)
    return load_model(path, device, dtype), tok


__all__ = ["DTYPES", "check_dla_checkpoint", "context_limit", "resolve_dtype", "load_tokenizer", "load_model",
           "load_checkpoint"]
