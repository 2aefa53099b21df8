"""``dla bench capture``: one layer's DLA op inputs from a trained model, for ``dla bench ops --inputs``.

Random inputs are not what a trained model feeds the op: on them the Mamba-2 score opens a slot at every token at
``tau = 0.6``, while a trained DLA-Mamba-2 opens far fewer, and DLA's cost depends on its segmentation.
:func:`capture` runs a trained DLA checkpoint on held-out data of its own kind and records, through the mixer's
hook (:meth:`dla.layers.RecurrentMixer.capture_op_inputs`), what the op of one layer receives: ``q``, ``k``,
``v``, ``g``, ``lam`` (and ``beta`` for Gated DeltaNet), in the dtypes the model ran with (bfloat16 under the
training autocast on CUDA), plus the op's options (policy, ``tau``, capacity, block size, score, chunk size,
scale) and where they came from (checkpoint, model, data, ``T``, batch, commit, date).

The file is safetensors: the tensors, and the JSON of the rest under the header's ``dla_capture`` key.
:func:`load_capture` reads and checks one; ``chunk_dla(**tensors, **meta["op"])`` gives the layer's op output.

Where the data come from:

- an MQAR checkpoint (its recipe's ``data.task`` is ``mqar``): the task's validation sequences at length ``T``,
  generated from the recipe's MQAR settings and seed;
- a language model: ``data`` if given (a token corpus written by ``dla data tokenize``, whose held-out stream is
  read, or a UTF-8 text file, tokenized with the checkpoint's tokenizer), else the recipe's validation split
  (its sources and tokenizer, as ``dla train`` built them). Rows are consecutive ``T``-token windows.

The recipe is the ``config.yaml`` that ``dla train`` writes in the run directory, beside ``final/`` and
``checkpoints/``.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

CAPTURE_FORMAT = "dla-capture/1"
"""``format`` of the metadata this version writes and reads."""

TENSORS = ("q", "k", "v", "g", "lam", "beta")
OP_OPTIONS = ("scale", "tau", "capacity", "policy", "block_size", "score", "chunk_size")

PathLike = Union[str, Path]


def _resolve_checkpoint(checkpoint: PathLike) -> Tuple[Path, Optional[Path]]:
    """``(model directory, recipe or None)``: a run directory gives its ``final/``; a ``save_pretrained``
    directory is used as it is; the recipe is the ``config.yaml`` in the directory or the one above it."""
    from dla.eval.checkpoint import check_dla_checkpoint

    path = Path(checkpoint)
    if not path.exists():
        raise ValueError(f"checkpoint: {str(checkpoint)!r} does not exist")
    if path.is_dir() and not (path / "config.json").is_file() and (path / "final" / "config.json").is_file():
        path = path / "final"
    if path.is_file() or not (path / "config.json").is_file():
        raise ValueError(f"checkpoint: {str(checkpoint)!r} is not a DLA model directory (expected what `dla train` "
                         f"writes: a run directory with final/, or a save_pretrained directory with config.json)")
    try:
        check_dla_checkpoint(path)
    except ValueError as e:
        raise ValueError(f"checkpoint: {e}".replace("checkpoint: pretrained: ", "checkpoint: ")) from None
    recipe = next((p / "config.yaml" for p in (path, path.parent) if (p / "config.yaml").is_file()), None)
    return path, recipe


def _tokens(model_dir: Path, recipe, data: Optional[PathLike], T: int, B: int, seed: int):
    """``(input_ids int64 [B, T], description)`` of the held-out data (see the module docstring)."""
    import numpy as np
    import torch

    if recipe is not None and recipe.data.task == "mqar":
        if data is not None:
            raise ValueError(f"data: {str(data)!r} given for an MQAR checkpoint, which reads its own task's "
                             f"validation sequences; leave --data out")
        from dla.data.mqar import MQARConfig, generate_mqar

        m = recipe.data.mqar
        try:
            config = MQARConfig(seq_len=T, num_kv_pairs=m.num_kv_pairs, vocab_size=m.vocab_size, alpha=m.alpha,
                                num_examples=B)
        except ValueError as e:
            raise ValueError(f"length: {e}") from None
        inputs = generate_mqar(config, (m.seed if seed is None else seed, 1)).inputs
        return torch.from_numpy(inputs), (f"mqar validation: {m.num_kv_pairs} key-value pairs, vocab "
                                          f"{m.vocab_size}, alpha {m.alpha}, seed ({m.seed}, 1)")
    need = B * T
    if data is not None:
        path = Path(data)
        if not path.exists():
            raise ValueError(f"data: {str(data)!r} does not exist")
        if path.is_dir():
            from dla.data.corpus import TokenCorpus

            try:
                stream = np.asarray(TokenCorpus(path).streams["val"][:need], dtype=np.int64)
            except (FileNotFoundError, ValueError) as e:
                raise ValueError(f"data: {str(data)!r} is not a token corpus ({e})") from None
            what = f"token corpus {path} (held-out stream)"
        else:
            from dla.data.tokenizer import load_tokenizer

            try:
                tok = load_tokenizer(model_dir)
            except (OSError, ValueError) as e:
                raise ValueError(f"checkpoint: no tokenizer to read the text file {str(data)!r} with ({e})") from None
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"data: {str(data)!r} is neither a token corpus directory nor UTF-8 text") from None
            stream = np.asarray([tok.eos_id, *tok.encode(text)][:need], dtype=np.int64)
            what = f"text file {path}"
    else:
        if recipe is None:
            raise ValueError("data: the checkpoint has no recipe (config.yaml) beside it to read held-out data from; "
                             "pass --data (a token corpus directory or a text file)")
        from dataclasses import replace

        from dla.train.data import build_task_data
        from dla.train.distributed import DistEnv

        section = replace(recipe.data, seq_len=T)
        try:
            loader = build_task_data(section, 1, recipe.train.seed, DistEnv()).val
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"data: the recipe's data could not be read ({e}); pass --data") from None
        rows = []
        for batch in loader or ():
            rows.append(batch["input_ids"])
            if len(rows) == B:
                break
        stream = np.asarray(torch.cat(rows).reshape(-1) if rows else [], dtype=np.int64)
        what = f"validation split of the recipe's data ({', '.join(s.kind for s in recipe.data.sources)})"
    if len(stream) < need:
        raise ValueError(f"length, batch: the data hold {len(stream):,} tokens, fewer than batch x length = "
                         f"{B} x {T} = {need:,}; lower --batch or --length, or pass more data")
    return torch.from_numpy(stream[:need].reshape(B, T)), what


def capture(checkpoint: PathLike, out: PathLike, layer: Optional[int] = None, length: Optional[int] = None,
            batch: int = 1, data: Optional[PathLike] = None, device: Optional[str] = None,
            precision: str = "auto", seed: Optional[int] = None) -> dict:
    """Run ``checkpoint`` on held-out data and write the DLA op inputs of one layer to ``out`` (safetensors).

    Args:
        checkpoint: a run directory of ``dla train`` (its ``final/`` is read) or a ``save_pretrained`` directory.
        out: the file to write (its folder is created).
        layer: index of a recurrent layer of the model (``model.layers[layer]``); default the middle one.
        length: tokens per sequence ``T``; default the recipe's ``data.seq_len`` (the training length).
        batch: sequences ``B``.
        data: for a language model, a token corpus directory or a UTF-8 text file (default: the recipe's data).
        device: ``cuda`` when available, else ``cpu``, by default.
        precision: ``auto`` (bfloat16 autocast on CUDA, float32 on CPU: how ``dla train`` runs the model),
            ``bfloat16`` or ``float32``.
        seed: the MQAR generator seed (default the recipe's).

    Returns:
        The metadata written (``op``: the options of ``chunk_dla``; ``shapes``, ``dtypes``, provenance, ``bytes``).

    Raises:
        ValueError: naming the argument: a missing or non-DLA checkpoint, a layer that is not a recurrent layer,
            a bad length or batch, data that cannot be read or are too short, an unknown precision.
    """
    import torch
    from safetensors.torch import save_file

    from dla import package_versions
    from dla.eval.checkpoint import load_model
    from dla.layers import RecurrentMixer
    from dla.study.runner import git_commit
    from dla.train.config import load_config

    for name, value, low in (("batch", batch, 1), ("length", length, 2)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    if precision not in ("auto", "bfloat16", "float32"):
        raise ValueError(f"precision: expected auto, bfloat16 or float32, got {precision!r}")
    model_dir, recipe_path = _resolve_checkpoint(checkpoint)
    recipe = load_config(recipe_path) if recipe_path is not None else None
    if length is None:
        if recipe is None:
            raise ValueError("length: no recipe (config.yaml) beside the checkpoint gives the training length; pass "
                             "--length")
        length = recipe.data.seq_len
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' asked for but no CUDA GPU is visible")
    autocast = precision == "bfloat16" or (precision == "auto" and dev.type == "cuda")
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar otherwise
    try:
        model = load_model(model_dir, dev)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    blocks = model.model.layers
    recurrent = [i for i, block in enumerate(blocks) if isinstance(block.mixer, RecurrentMixer)]
    if not recurrent:
        raise ValueError(f"checkpoint: {str(checkpoint)!r} has no recurrent (DLA) layer; every layer is attention")
    if layer is None:
        layer = recurrent[len(recurrent) // 2]
    if layer not in recurrent:
        raise ValueError(f"layer: {layer!r} is not a recurrent layer of this model; recurrent layers: "
                         f"{', '.join(map(str, recurrent))}")
    ids, what = _tokens(model_dir, recipe, data, length, batch, seed)
    mixer = blocks[layer].mixer
    with torch.no_grad(), mixer.capture_op_inputs() as calls, \
            torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
        model(input_ids=ids.to(dev), use_cache=False)
    if len(calls) != 1:  # one forward without a cache or mask is one op call
        raise ValueError(f"layer: layer {layer} made {len(calls)} op calls for one forward; expected 1")
    call = calls[0]
    tensors = {name: getattr(call, name).contiguous().cpu() for name in TENSORS if getattr(call, name) is not None}
    config = model.config
    meta = {"format": CAPTURE_FORMAT,
            "op": {key: call.options[key] for key in OP_OPTIONS},
            "backbone": "gdn" if call.beta is not None else "mamba2",
            "shapes": {name: list(t.shape) for name, t in tensors.items()},
            "dtypes": {name: str(t.dtype).replace("torch.", "") for name, t in tensors.items()},
            "checkpoint": str(Path(checkpoint)), "model_type": config.model_type, "mixer": config.mixer,
            "layer": layer, "num_layers": len(blocks), "data": what, "T": length, "B": batch,
            "precision": "bfloat16 autocast" if autocast else "float32", "device": str(dev),
            "commit": git_commit(), "date": datetime.date.today().isoformat(), "torch": torch.__version__,
            **package_versions(("triton",), catch=(Exception,))}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"dla_capture": json.dumps(meta)})
    meta["bytes"] = out.stat().st_size
    return meta


def load_capture(path: PathLike, device: Optional[str] = None) -> Tuple[Dict[str, object], dict]:
    """``(tensors, meta)`` of a capture file: ``tensors`` has ``q, k, v, g, lam, beta`` (``None`` where absent),
    so that ``chunk_dla(**tensors, **meta["op"])`` reruns the layer's op.

    Raises:
        ValueError: naming the file: it does not exist, is no safetensors file, has no ``dla_capture`` metadata of
            this format, lacks a tensor its policy and backbone need, or holds shapes that do not fit together.
    """
    import torch
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"inputs: {str(path)!r} does not exist (or is not a file)")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            loaded = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"inputs: {str(path)!r} is not a safetensors file ({e})") from None
    try:
        meta = json.loads(header["dla_capture"])
    except (KeyError, json.JSONDecodeError):
        raise ValueError(f"inputs: {str(path)!r} has no dla_capture metadata (write one with `dla bench capture`)") \
            from None
    if meta.get("format") != CAPTURE_FORMAT:
        raise ValueError(f"inputs: {str(path)!r} has format {meta.get('format')!r}; this version reads "
                         f"{CAPTURE_FORMAT!r}")
    unknown = sorted(set(loaded) - set(TENSORS))
    if unknown:
        raise ValueError(f"inputs: {str(path)!r} holds {unknown[0]!r}, not one of the op's inputs "
                         f"({', '.join(TENSORS)})")
    op = meta.get("op", {})
    missing = [key for key in OP_OPTIONS if key not in op]
    if missing:
        raise ValueError(f"inputs: {str(path)!r} lacks the op option {missing[0]!r} in its metadata")
    needed = ["q", "k", "v", "g"] + (["lam"] if op["policy"] != "single" else []) + \
        (["beta"] if meta.get("backbone") == "gdn" else [])
    for name in needed:
        if name not in loaded:
            raise ValueError(f"inputs: {str(path)!r} lacks tensor {name!r} (policy {op['policy']!r}, backbone "
                             f"{meta.get('backbone')!r})")
    q, v = loaded["q"], loaded["v"]
    if q.dim() != 4 or v.dim() != 4 or q.shape[:2] != v.shape[:2]:
        raise ValueError(f"inputs: {str(path)!r}: q {list(q.shape)} and v {list(v.shape)} are not [B, T, G, K] "
                         f"and [B, T, H, V] of one B and T")
    B, T, G, K = q.shape
    H = v.shape[2]
    expect = {"k": [B, T, G, K], "g": [B, T, H], "beta": [B, T, H]}
    for name, shape in expect.items():
        if name in loaded and list(loaded[name].shape) != shape:
            raise ValueError(f"inputs: {str(path)!r}: {name} has shape {list(loaded[name].shape)}, expected {shape}")
    if "lam" in loaded and (loaded["lam"].dim() != 4 or list(loaded["lam"].shape[:3]) != [B, T, H]):
        raise ValueError(f"inputs: {str(path)!r}: lam has shape {list(loaded['lam'].shape)}, expected [{B}, {T}, "
                         f"{H}, R]")
    if H % G:
        raise ValueError(f"inputs: {str(path)!r}: {G} key groups do not divide {H} heads")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    tensors = {name: (loaded[name].to(dev) if name in loaded else None) for name in TENSORS}
    return tensors, meta


def capture_summary(meta: dict) -> str:
    """One line about a capture: shapes, dtypes, size and provenance."""
    shapes = ", ".join(f"{n} {'x'.join(map(str, s))} {meta['dtypes'][n]}" for n, s in meta["shapes"].items())
    size = f", {meta['bytes'] / 2 ** 20:.1f} MiB" if "bytes" in meta else ""
    return (f"layer {meta['layer']} of {meta['checkpoint']} ({meta['mixer']}, policy {meta['op']['policy']}, "
            f"C = {meta['op']['capacity']}, tau = {meta['op']['tau']:g}) on {meta['data']}: B = {meta['B']}, "
            f"T = {meta['T']}; {shapes}{size}")


def tiled(tensors: Dict[str, object], tokens: int) -> Tuple[Dict[str, object], int]:
    """The batch repeated until it holds at least ``tokens`` tokens; returns ``(tensors, repeats)``."""
    B, T = tensors["q"].shape[:2]
    reps = max(1, math.ceil(tokens / (B * T)))
    if reps == 1:
        return tensors, 1
    return {n: (t.repeat(reps, *([1] * (t.dim() - 1))) if t is not None else None) for n, t in tensors.items()}, reps


__all__ = ["CAPTURE_FORMAT", "TENSORS", "OP_OPTIONS", "capture", "load_capture", "capture_summary", "tiled"]
