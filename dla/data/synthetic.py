"""Pieces shared by the synthetic data generators (MQAR here, the needle tasks in ``dla.eval.synthetic``): the
token-batch type, seeding, argument checks and row-wise sampling without replacement. Numpy only."""

from __future__ import annotations

import numbers
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

IGNORE_INDEX = -100
"""Label of every position that is not scored (PyTorch's ``cross_entropy`` default ``ignore_index``)."""

Seed = Union[int, Sequence[int]]
"""A non-negative int, or a sequence of them (e.g. ``(seed, length, depth)`` for one grid cell)."""


class TokenBatch(NamedTuple):
    """Token-level examples for next-token training and evaluation.

    Attributes:
        inputs: ``[N, T]`` int64 token ids.
        labels: ``[N, T]`` int64; ``labels[n, t]`` is the token the model must predict after reading
            ``inputs[n, :t + 1]``, and ``IGNORE_INDEX`` (-100) at every position that is not scored.
    """

    inputs: np.ndarray
    labels: np.ndarray


def make_rng(seed: Seed) -> np.random.Generator:
    """The numpy Generator of ``seed`` (an int or a sequence of ints, all >= 0)."""
    parts = [seed] if isinstance(seed, numbers.Integral) else list(seed) if isinstance(seed, (list, tuple)) else []
    if not parts or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0 for s in parts):
        raise ValueError(f"seed must be a non-negative int or a non-empty sequence of them, got {seed!r}")
    return np.random.default_rng([int(s) for s in parts])


def check_int(name: str, value, minimum: int, maximum: Optional[int] = None) -> int:
    """``value`` as an int, or a ValueError naming ``name`` when it is not an int in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{name} must be >= {minimum}{upper}, got {value}")
    return int(value)


def _rows_with_duplicates(x: np.ndarray) -> np.ndarray:
    s = np.sort(x, axis=1)
    return (s[:, 1:] == s[:, :-1]).any(axis=1)


def sample_rows(rng: np.random.Generator, rows: int, population: int, k: int,
                weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Per row, ``k`` distinct ints of ``range(population)`` in the order successive draws pick them.

    Each draw picks among the ints not yet drawn with probability proportional to ``weights`` (uniform
    when None), which is what ``numpy.random.choice(population, k, replace=False, p=weights)`` does.

    Returns:
        ``[rows, k]`` int64.
    """
    if not 0 <= k <= population:
        raise ValueError(f"k must be in [0, population={population}], got {k}")
    if weights is None and k * k <= population:
        # Rejection: a row of k iid draws has no repeat with probability >= exp(-1/2).
        out = rng.integers(0, population, size=(rows, k))
        bad = _rows_with_duplicates(out)
        while bad.any():
            out[bad] = rng.integers(0, population, size=(int(bad.sum()), k))
            bad = _rows_with_duplicates(out)
        return out
    # Gumbel-top-k: sorting log-weight + Gumbel noise is successive weighted sampling without replacement.
    log_w = np.zeros(population) if weights is None else np.log(np.asarray(weights, dtype=np.float64))
    out = np.empty((rows, k), dtype=np.int64)
    chunk = max(1, (1 << 22) // max(population, 1))
    for start in range(0, rows, chunk):
        g = log_w + rng.gumbel(size=(min(chunk, rows - start), population))
        top = np.argpartition(-g, k - 1, axis=1)[:, :k] if k else np.empty((len(g), 0), dtype=np.int64)
        order = np.argsort(-np.take_along_axis(g, top, axis=1), axis=1)
        out[start:start + len(g)] = np.take_along_axis(top, order, axis=1)
    return out


__all__ = ["IGNORE_INDEX", "Seed", "TokenBatch", "make_rng", "check_int", "sample_rows"]
