"""Loader: deterministic, sharded, resumable batches of packed sequences as torch tensors.

Epoch ``e`` visits the sequences in the order ``permutation(seed, e)`` (identity when ``shuffle=False``) and cuts
it into global batches of ``batch_size * world_size`` sequences; rank ``r`` takes the ``r``-th slice of
``batch_size`` of each. Ranks therefore see disjoint sequences, and every rank yields the same number of batches
(the incomplete tail of an epoch is dropped). The position ``(epoch, batch)`` is the whole state: a loader that
``load_state_dict``s the ``state_dict()`` taken after ``k`` batches yields batches ``k, k+1, ...`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch

from dla.data.packing import PackedSequences


@dataclass(frozen=True)
class LoaderConfig:
    """Batching, order and sharding of a ``PackedLoader``."""

    batch_size: int = 8  # sequences per batch on each rank (B)
    seed: int = 0  # seed of the per-epoch shuffle
    shuffle: bool = True  # permute sequences every epoch; False = stream order
    epochs: Optional[int] = None  # stop after this many epochs; None = repeat forever
    rank: int = 0  # this process's shard, in [0, world_size)
    world_size: int = 1  # number of shards (data-parallel processes)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {self.batch_size}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs: expected None or >= 1, got {self.epochs}")
        if self.world_size < 1:
            raise ValueError(f"world_size: expected >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank: expected a value in [0, {self.world_size}), got {self.rank}")


def batch_cu_seqlens(input_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Document boundaries of a batch flattened to ``[1, B*T]``, FlashAttention varlen convention.

    A segment starts at every EOS and at the start of every row, so no segment crosses rows.

    Args:
        input_ids: ``[B, T]`` (or ``[T]``) integer token ids, any device.
        eos_id: id that opens each document.

    Returns:
        ``int32 [N + 1]`` on the device of ``input_ids``: ``0 = cu[0] < ... < cu[N] = B*T``.

    Example:
        >>> batch_cu_seqlens(torch.tensor([[0, 5, 0, 7], [6, 6, 0, 1]]), eos_id=0)
        tensor([0, 2, 4, 6, 8], dtype=torch.int32)
    """
    if input_ids.dim() not in (1, 2):
        raise ValueError(f"input_ids: expected [B, T] or [T], got shape {tuple(input_ids.shape)}")
    rows = input_ids.reshape(-1, input_ids.shape[-1])
    starts = rows == eos_id
    starts[:, 0] = True
    flat = torch.nonzero(starts.reshape(-1)).reshape(-1)
    end = torch.tensor([rows.numel()], device=input_ids.device)
    return torch.cat([flat, end]).to(torch.int32)


class PackedLoader:
    """Iterate batches of ``PackedSequences``; see the module docstring for order, sharding and resumption.

    Args:
        sequences: the packed split to read.
        config: batch size, seed, shuffle, epochs, rank and world size.

    Yields:
        ``dict`` with ``input_ids`` and ``labels`` (``int64 [B, T]``, ``labels[:, t]`` is the token after
        ``input_ids[:, t]``) and ``cu_seqlens`` (``int32 [N + 1]``, ``batch_cu_seqlens`` of ``input_ids``).

    Raises:
        ValueError: fewer sequences than one global batch (``batch_size * world_size``).

    Example:
        >>> loader = PackedLoader(splits.train, LoaderConfig(batch_size=8, rank=rank, world_size=world))
        >>> for step, batch in zip(range(max_steps), loader): ...
        >>> ckpt["data"] = loader.state_dict()   # later: loader.load_state_dict(ckpt["data"])
    """

    def __init__(self, sequences: PackedSequences, config: LoaderConfig) -> None:
        global_batch = config.batch_size * config.world_size
        if len(sequences) < global_batch:
            raise ValueError(f"batch_size: {sequences.split} split has {len(sequences)} sequences of "
                             f"{sequences.seq_len} tokens, fewer than batch_size * world_size = {global_batch}")
        self.sequences = sequences
        self.config = config
        self.epoch = 0
        self.batch = 0  # index within the epoch of the next batch this rank yields

    def __len__(self) -> int:
        """Batches per epoch on each rank."""
        return len(self.sequences) // (self.config.batch_size * self.config.world_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """``int64 [num_sequences]``: the global visiting order of epoch ``epoch`` (same on every rank)."""
        n = len(self.sequences)
        if not self.config.shuffle:
            return np.arange(n, dtype=np.int64)
        return np.random.default_rng([self.config.seed, epoch]).permutation(n)

    def batch_indices(self, epoch: int, batch: int) -> np.ndarray:
        """``int64 [B]``: the sequence indices of this rank's batch ``batch`` in epoch ``epoch``."""
        return self._rank_slice(self.epoch_order(epoch), batch)

    def _rank_slice(self, order: np.ndarray, batch: int) -> np.ndarray:
        B, r, W = self.config.batch_size, self.config.rank, self.config.world_size
        start = (batch * W + r) * B
        return order[start:start + B]

    def collate(self, indices: np.ndarray) -> dict:
        """The batch of sequences ``indices``, as described under *Yields*."""
        rows = torch.from_numpy(self.sequences.window(indices))
        input_ids, labels = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
        return {"input_ids": input_ids, "labels": labels,
                "cu_seqlens": batch_cu_seqlens(input_ids, self.sequences.eos_id)}

    def __iter__(self) -> Iterator[dict]:
        order, order_epoch = None, None
        while self.config.epochs is None or self.epoch < self.config.epochs:
            if self.batch >= len(self):
                self.epoch, self.batch = self.epoch + 1, 0
                continue
            if order_epoch != self.epoch:
                order, order_epoch = self.epoch_order(self.epoch), self.epoch
            indices = self._rank_slice(order, self.batch)
            self.batch += 1  # advance before yielding, so state_dict() names the next batch
            yield self.collate(indices)

    def state_dict(self) -> dict:
        """The position of the next batch plus the settings it is only valid for."""
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.config.seed, "shuffle": self.config.shuffle,
                "batch_size": self.config.batch_size, "rank": self.config.rank,
                "world_size": self.config.world_size, "num_sequences": len(self.sequences)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (a ``state_dict()``); the settings and data must match this loader's.

        Raises:
            ValueError: a setting or the number of sequences differs, or the position is out of range.
        """
        current = self.state_dict()
        for name in ("seed", "shuffle", "batch_size", "rank", "world_size", "num_sequences"):
            if state.get(name) != current[name]:
                raise ValueError(f"state: {name}={state.get(name)!r} does not match this loader's {current[name]!r}")
        if state["epoch"] < 0 or not 0 <= state["batch"] <= len(self):
            raise ValueError(f"state: position epoch={state['epoch']} batch={state['batch']} is out of range "
                             f"(batches per epoch: {len(self)})")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
