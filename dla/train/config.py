"""Typed, validated training configuration: one YAML/JSON/TOML file per recipe, plus ``section.field=value``
overrides.

A recipe has five sections (all optional but ``model``) and two top-level fields::

    name: tiny                   # run name; the default output directory is runs/<name>
    base: other.yaml             # optional: start from another recipe (path relative to this file), then merge
    model: {type: dla, mixer: mamba2, policy: dla, hidden_size: 64, ...}   # a transformers config (model_type + fields)
    data: {task: lm, seq_len: 256, sources: [{kind: stdlib}], tokenizer: {vocab_size: 2048}, ...}
    train: {max_steps: 200, global_batch_size: 16, micro_batch_size: 16, lr: 3.0e-3, ...}
    checkpoint: {every: 100, keep_last: 3}
    log: {every: 10, tensorboard: true, progress: true, plot: true}

Every field is checked on load: unknown keys, wrong types and out-of-range values raise ``ValueError`` naming the
dotted path (``train.lr``), before any data is read or model built. ``check_fit`` adds the checks that need the
world size; ``dla.train.loop`` adds those that need the data (vocabulary, number of sequences).

Example:
    >>> config = load_config("configs/tiny.yaml", ["train.lr=1e-3", "model.capacity=8"])
    >>> config.train.lr, config.model.options["capacity"]
    (0.001, 8)
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import yaml

from dla.data import SourceConfig, TokenizerConfig
from dla.data.mqar import MQARConfig
from dla.train.model import ModelSpec, build_model_config
from dla.train.recipes import CONFIG_SUFFIXES, resolve_recipe

TASKS = ("lm", "mqar")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "float32", "bfloat16")
PARALLELISMS = ("ddp", "fsdp")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class MQARSection:
    """Synthetic multi-query associative recall data (``data.task = mqar``); ``seq_len`` is ``data.seq_len``."""

    num_kv_pairs: int = 8  # key-value pairs per example, each queried once
    vocab_size: int = 256  # token ids of the task (the model's vocab_size defaults to it)
    alpha: float = 0.01  # power-law exponent of the query distance (Zoology's default)
    num_train: int = 20000  # training examples (the loader cycles through them)
    num_val: int = 1000  # held-out examples, from another seed
    seed: int = 0  # generator seed of both splits

    def build(self, seq_len: int) -> tuple[MQARConfig, MQARConfig]:
        """The train and validation ``MQARConfig`` (raises ``ValueError`` for impossible sizes)."""
        common = dict(seq_len=seq_len, num_kv_pairs=self.num_kv_pairs, vocab_size=self.vocab_size, alpha=self.alpha)
        return MQARConfig(num_examples=self.num_train, **common), MQARConfig(num_examples=self.num_val, **common)

    def __post_init__(self) -> None:
        for name in ("num_kv_pairs", "vocab_size", "num_train", "num_val"):
            _check_int(name, getattr(self, name), 1)
        _check_int("seed", self.seed, 0)


@dataclass(frozen=True)
class DataSection:
    """What the model is trained on: a packed text corpus (``lm``, through ``dla.data``) or MQAR."""

    task: str = "lm"  # lm: next-token prediction on a packed corpus; mqar: synthetic associative recall
    seq_len: int = 256  # tokens per training sequence (the context length)
    sources: tuple[SourceConfig, ...] = (SourceConfig(kind="stdlib"),)  # lm: corpus sources, read in order
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)  # lm: load (path) or train a BPE
    val_fraction: float = 0.01  # lm: fraction of documents held out for validation perplexity
    split_seed: int = 0  # lm: seed of the document-level train/validation split
    cache_dir: Optional[str] = "runs/cache"  # lm: cache of the tokenizer and token streams; null = none
    document_masking: bool = True  # pass cu_seqlens so no document sees another (only if the model takes it)
    tokens: Optional[str] = None  # lm: a token corpus from `dla data tokenize`, read instead of sources/tokenizer
    mqar: MQARSection = field(default_factory=MQARSection)  # mqar: sizes of the task

    def __post_init__(self) -> None:
        _check_choice("task", self.task, TASKS)
        _check_int("seq_len", self.seq_len, 1)
        if not self.sources:
            raise ValueError("sources: expected at least one source, got none")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected a value in [0, 1), got {self.val_fraction}")
        if self.task == "mqar":
            self.mqar.build(self.seq_len)


@dataclass(frozen=True)
class TrainSection:
    """Optimisation and the loop. Exactly one of ``max_steps`` / ``max_tokens`` sets the run length."""

    seed: int = 0  # seed of the model init and of the data order
    max_steps: Optional[int] = None  # optimizer steps
    max_tokens: Optional[int] = None  # or: training tokens, rounded up to whole steps
    global_batch_size: int = 8  # sequences per optimizer step, over all ranks and micro-batches
    micro_batch_size: int = 8  # sequences per forward pass on one rank (gradient accumulation makes up the rest)
    lr: float = 3e-4  # peak learning rate of AdamW
    min_lr_ratio: float = 0.1  # final learning rate as a fraction of lr (cosine and linear decay)
    warmup_steps: int = 0  # linear warmup from 0 to lr
    schedule: str = "cosine"  # decay after warmup: cosine | linear | constant
    weight_decay: float = 0.1  # AdamW decoupled weight decay (not on biases, norms and _no_weight_decay params)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: Optional[float] = 1.0  # max global gradient norm; null = no clipping
    precision: str = "auto"  # auto (bfloat16 autocast on GPU, float32 on CPU) | float32 | bfloat16
    fused_adamw: Optional[bool] = None  # fused AdamW kernel; null = on GPU only
    activation_checkpointing: bool = False  # recompute each block in the backward pass
    compile: bool = False  # torch.compile the model (each block under FSDP)
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    parallelism: str = "ddp"  # with torchrun and more than one process: ddp | fsdp (FSDP2 fully_shard)
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower; bitwise-reproducible runs)
    eval_every: int = 0  # validation every this many steps (and at the end); 0 = at the end only
    eval_batches: Optional[int] = None  # micro-batches per validation on each rank; null = the whole split
    max_time_s: Optional[float] = None  # stop (with a checkpoint) after this much training time; null = none

    def __post_init__(self) -> None:
        _check_int("seed", self.seed, 0)
        if (self.max_steps is None) == (self.max_tokens is None):
            raise ValueError(f"max_steps, max_tokens: set exactly one, got max_steps={self.max_steps!r} "
                             f"max_tokens={self.max_tokens!r}")
        for name in ("max_steps", "max_tokens", "eval_batches"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        _check_int("global_batch_size", self.global_batch_size, 1)
        _check_int("micro_batch_size", self.micro_batch_size, 1)
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_int("eval_every", self.eval_every, 0)
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"global_batch_size: must be a multiple of micro_batch_size={self.micro_batch_size}, "
                             f"got {self.global_batch_size}")
        _check_float("lr", self.lr, 0.0, inclusive=False)
        _check_float("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _check_float("weight_decay", self.weight_decay, 0.0)
        _check_float("eps", self.eps, 0.0, inclusive=False)
        if self.grad_clip is not None:
            _check_float("grad_clip", self.grad_clip, 0.0, inclusive=False)
        if self.max_time_s is not None:
            _check_float("max_time_s", self.max_time_s, 0.0, inclusive=False)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas: expected two values in [0, 1), got {self.betas!r}")
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("device", self.device, DEVICES)
        _check_choice("parallelism", self.parallelism, PARALLELISMS)

    def steps(self, seq_len: int) -> int:
        """Optimizer steps of the run: ``max_steps``, or ``ceil(max_tokens / (global_batch_size * seq_len))``."""
        if self.max_steps is not None:
            return self.max_steps
        return math.ceil(self.max_tokens / (self.global_batch_size * seq_len))


@dataclass(frozen=True)
class CheckpointSection:
    """When checkpoints are written and how many are kept."""

    every: int = 0  # save every this many steps (and always at the end); 0 = at the end only
    keep_last: int = 3  # delete older checkpoints beyond this many

    def __post_init__(self) -> None:
        _check_int("every", self.every, 0)
        _check_int("keep_last", self.keep_last, 1)


@dataclass(frozen=True)
class LogSection:
    """What the loop reports: JSONL always, TensorBoard, a progress bar and the loss-curve PNG."""

    every: int = 10  # log the training loss every this many steps
    tensorboard: bool = True  # also write TensorBoard events (a warning when tensorboard is not installed)
    progress: bool = True  # progress bar with tokens/s, loss and ETA (rank 0)
    plot: bool = True  # loss-curve PNG at the end (needs matplotlib)

    def __post_init__(self) -> None:
        _check_int("every", self.every, 1)


@dataclass(frozen=True)
class RunConfig:
    """A whole recipe; see the module docstring."""

    name: str = "run"  # run name
    out_dir: Optional[str] = None  # checkpoints, logs and plots; null = runs/<name>
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=lambda: TrainSection(max_steps=100))
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise ValueError(f"name: expected letters, digits, '.', '_' or '-', got {self.name!r}")
        if self.train.warmup_steps > self.train.steps(self.data.seq_len):
            raise ValueError(f"train.warmup_steps: {self.train.warmup_steps} is more than the run's "
                             f"{self.train.steps(self.data.seq_len)} steps")

    @property
    def output_dir(self) -> Path:
        """``out_dir``, or ``runs/<name>``."""
        return Path(self.out_dir) if self.out_dir is not None else Path("runs") / self.name

    def to_dict(self) -> dict:
        """Plain data (what ``config_from_dict`` reads back)."""
        return to_plain(self)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


def _check_float(name: str, value: Any, low: float, high: Optional[float] = None, inclusive: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= low if inclusive else value > low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>=' if inclusive else '>'} {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{name}: expected a finite number {bound}, got {value!r}")


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")


# ---- plain data <-> dataclasses -------------------------------------------------------------------------------------

def to_plain(obj: Any) -> Any:
    """Dataclasses, tuples and dicts as JSON-compatible dicts and lists (``ModelSpec`` flattened to its YAML form)."""
    if isinstance(obj, ModelSpec):
        return {"type": obj.type, **to_plain(obj.options)}
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None:
            if type(None) in args:
                return None
            raise ValueError(f"{where}: must not be null")
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where) if len(inner) == 1 else value
    if value is None:
        raise ValueError(f"{where}: must not be null")
    if tp is ModelSpec:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping with 'type' and the model config's fields, got {value!r}")
        options = dict(value)
        return ModelSpec(type=options.pop("type", "dla"), options=options)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {list(value)!r}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from plain ``data``, checking names and types; errors name the dotted path."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where or 'config'}: expected a mapping of {cls.__name__} fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in data:
        if key not in names:
            raise ValueError(f"{_join(where, key)}: unknown field of {cls.__name__}; allowed: {', '.join(names)}")
    kwargs = {key: _coerce(hints[key], value, _join(where, key)) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:
        message = str(e)
        if not where or message.startswith(where + "."):
            raise
        raise ValueError(f"{where}.{message}" if re.match(r"[\w.\[\]]+:", message) else f"{where}: {message}") \
            from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def config_from_dict(data: Mapping) -> RunConfig:
    """A validated ``RunConfig`` from plain data (a parsed recipe, ``base`` already resolved); the model section
    is checked by building its transformers config (``vocab_size`` / ``eos_token_id`` may still be missing)."""
    config = from_dict(RunConfig, data)
    build_model_config(config.model)
    return config


# ---- files and overrides --------------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """YAML 1.1 loader that also reads ``3e-4`` (no dot) as a float, as YAML 1.2 and JSON do."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.inf|\.Inf|\.INF|\.nan|\.NaN|\.NAN)$"),
    list("-+0123456789."))


def parse_value(text: str) -> Any:
    """An override's value as YAML: ``1e-3`` -> float, ``true`` -> bool, ``null`` -> None, ``[a, b]`` -> list."""
    return yaml.load(text, Loader=_Loader) if text.strip() else ""


def read_file(path: Union[str, Path]) -> dict:
    """The mapping in a ``.yaml``/``.yml``, ``.json`` or ``.toml`` file, with ``base`` files merged underneath."""
    return _read(Path(path), ())


def _read(path: Path, seen: tuple) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"config: no file {str(path)!r}")
    if path.suffix not in CONFIG_SUFFIXES:
        raise ValueError(f"config: {str(path)!r} has suffix {path.suffix!r}; allowed: {', '.join(CONFIG_SUFFIXES)}")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix == ".toml":
            import tomllib
            data = tomllib.loads(text)
        else:
            data = yaml.load(text, Loader=_Loader)
    except Exception as e:  # noqa: BLE001 - parser errors of three libraries, re-raised with the file name
        raise ValueError(f"config: cannot parse {str(path)!r}: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config: {str(path)!r} must hold a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise ValueError(f"base: {str(path)!r} includes itself through {str(base_path)!r}")
    return merge(_read(base_path, seen + (path.resolve(),)), data)


def merge(base: Mapping, update: Mapping) -> dict:
    """``base`` with ``update`` merged in: mappings recursively, anything else (lists included) replaced."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(data: Mapping, overrides: Sequence[str]) -> dict:
    """Set ``section.field=value`` (value parsed as YAML) in a copy of ``data``; list items by index (``x.0=1``).

    Raises:
        ValueError: an override without ``=`` or with an empty key.
    """
    out = merge({}, data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"overrides: expected section.field=value, got {item!r}")
        parts, node = key.split("."), out
        for i, part in enumerate(parts[:-1]):
            child = node[int(part)] if isinstance(node, list) and part.isdigit() else node.get(part) \
                if isinstance(node, dict) else None
            if child is None:
                child = {}
                node[part] = child
            elif isinstance(child, Mapping) and not isinstance(child, dict):
                child = dict(child)
                node[part] = child
            if not isinstance(child, (dict, list)):
                raise ValueError(f"overrides: {'.'.join(parts[:i + 1])} is a value, not a section, in {item!r}")
            node = child
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ValueError(f"overrides: {key} indexes a list of {len(node)} items, in {item!r}")
            node[int(last)] = parse_value(text)
        else:
            node[last] = parse_value(text)
    return out


def load_config(path: Union[str, Path], overrides: Sequence[str] = ()) -> RunConfig:
    """Read a recipe (``resolve_recipe`` names work too), apply ``overrides`` and validate.

    Raises:
        FileNotFoundError: no such file or recipe.
        ValueError: a parse error, an unknown field, a bad type or value (the message names the field).
    """
    return config_from_dict(apply_overrides(read_file(resolve_recipe(path)), overrides))


def dump_config(config: RunConfig, path: Union[str, Path]) -> None:
    """Write ``config`` as YAML (readable back with ``load_config``)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


__all__ = ["RunConfig", "ModelSpec", "DataSection", "MQARSection", "TrainSection", "CheckpointSection", "LogSection",
           "load_config", "config_from_dict", "read_file", "apply_overrides", "parse_value", "merge", "from_dict",
           "to_plain", "dump_config", "TASKS", "SCHEDULES", "PRECISIONS", "PARALLELISMS", "DEVICES"]
