"""The trainer's data: a packed corpus through ``dla.data`` (``task: lm``) or MQAR examples (``task: mqar``),
both behind the resumable, sharded ``PackedLoader``."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch

from dla.data import DataConfig, LoaderConfig, PackedLoader, PackingConfig, TextTokenizer, build_data, build_loaders
from dla.data.mqar import MQARConfig, mqar_splits
from dla.train.config import DataSection
from dla.train.distributed import DistEnv, barrier


class ExampleSet:
    """Fixed-length examples with their own labels, indexable like ``PackedSequences`` by ``ExampleLoader``.

    Args:
        inputs: ``int64 [N, T]`` token ids.
        labels: ``int64 [N, T]``; ``labels[n, t]`` is the target after ``inputs[n, :t + 1]``, -100 where unscored.
        split: name used in error messages.
    """

    def __init__(self, inputs: np.ndarray, labels: np.ndarray, split: str = "train") -> None:
        if inputs.ndim != 2 or inputs.shape != labels.shape:
            raise ValueError(f"inputs, labels: expected two [N, T] arrays of one shape, got {inputs.shape} and "
                             f"{labels.shape}")
        self.inputs, self.labels, self.split = inputs, labels, split
        self.seq_len = inputs.shape[1]

    def __len__(self) -> int:
        return len(self.inputs)


class ExampleLoader(PackedLoader):
    """``PackedLoader`` (same order, sharding and ``state_dict``) over an ``ExampleSet``; batches carry
    ``input_ids`` and ``labels`` (``int64 [B, T]``) and no ``cu_seqlens`` (each row is one example)."""

    def collate(self, indices: np.ndarray) -> dict:
        return {"input_ids": torch.from_numpy(self.sequences.inputs[indices]),
                "labels": torch.from_numpy(self.sequences.labels[indices])}


@dataclass
class TaskData:
    """What ``build_task_data`` returns."""

    train: PackedLoader  # endless, shuffled, sharded
    val: Optional[PackedLoader]  # one pass in order, sharded; None without a validation split
    vocab_size: int  # the data's vocabulary (the model's must be at least this)
    eos_token_id: Optional[int]  # lm: the tokenizer's EOS; mqar: None
    tokenizer: Optional[TextTokenizer]  # lm: the tokenizer (saved next to the final model); mqar: None
    description: dict  # sizes, for the run log


@functools.lru_cache(maxsize=2)
def _mqar_arrays(train: MQARConfig, val: MQARConfig, seed: int):
    """The MQAR splits, generated once per process for the runs that share them (a sweep's cells of one task);
    read-only, since several loaders may hold them."""
    splits = mqar_splits(train, val, seed=seed)
    for array in (*splits[0], *splits[1]):
        array.flags.writeable = False
    return splits


def build_task_data(config: DataSection, batch_size: int, seed: int, env: DistEnv) -> TaskData:
    """Read, tokenize and pack the corpus (or generate MQAR) and wrap both splits in loaders of ``batch_size``
    sequences per rank. Rank 0 fills the cache first; the others then read it.

    Raises:
        FileNotFoundError / ValueError: missing data paths, an empty corpus, a split too short for one sequence of
            ``seq_len + 1`` tokens or for one batch on every rank.
    """
    loader_config = LoaderConfig(batch_size=batch_size, seed=seed, rank=env.rank, world_size=env.world_size)
    if config.task == "mqar":
        train, val = _mqar_arrays(*config.mqar.build(config.seq_len), config.mqar.seed)
        train_set, val_set = ExampleSet(*train, split="train"), ExampleSet(*val, split="val")
        return TaskData(ExampleLoader(train_set, loader_config),
                        ExampleLoader(val_set, replace(loader_config, shuffle=False, epochs=1)),
                        config.mqar.vocab_size, None, None,
                        {"task": "mqar", "train_examples": len(train_set), "val_examples": len(val_set),
                         "seq_len": config.seq_len, "num_kv_pairs": config.mqar.num_kv_pairs})
    data_config = DataConfig(sources=config.sources, tokenizer=config.tokenizer,
                             packing=PackingConfig(seq_len=config.seq_len, val_fraction=config.val_fraction,
                                                   split_seed=config.split_seed, cache_dir=config.cache_dir),
                             loader=loader_config, tokens=config.tokens)
    bundle = None
    if config.cache_dir is not None and env.distributed and not env.is_main:
        barrier(env)  # rank 0 tokenizes into the cache first
        bundle = build_data(data_config)
    else:
        try:
            bundle = build_data(data_config)
        finally:
            if config.cache_dir is not None and env.distributed:
                barrier(env)
    train, val = build_loaders(bundle, loader_config)
    return TaskData(train, val, bundle.tokenizer.vocab_size, bundle.tokenizer.eos_id, bundle.tokenizer,
                    {"task": "lm", "train_sequences": len(bundle.splits.train),
                     "val_sequences": len(bundle.splits.val) if bundle.splits.val is not None else 0,
                     "seq_len": config.seq_len, "vocab_size": bundle.tokenizer.vocab_size})


def rewind(loader: PackedLoader) -> None:
    """Put a one-pass loader back at its first batch."""
    state = loader.state_dict()
    state.update(epoch=0, batch=0)
    loader.load_state_dict(state)


__all__ = ["ExampleSet", "ExampleLoader", "TaskData", "build_task_data", "rewind"]
