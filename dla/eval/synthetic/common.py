"""Pieces shared by the synthetic evaluation generators: seeding, argument checks, row-wise sampling (from
``dla.data.synthetic``, which the MQAR training data uses too), depth and choice checks, grids, jsonl files."""

from __future__ import annotations

import json
import numbers
import os
from typing import Callable, Iterable, Optional, Sequence, Union

from dla.data.synthetic import IGNORE_INDEX, Seed, TokenBatch, check_int, make_rng, sample_rows


def check_depth(name: str, depth) -> Optional[float]:
    """``depth`` as a float percent in ``[0, 100]``, or None (a random depth per needle)."""
    if depth is None:
        return None
    if isinstance(depth, bool) or not isinstance(depth, numbers.Real) or not 0.0 <= float(depth) <= 100.0:
        raise ValueError(f"{name} must be a percent in [0, 100] or None, got {depth!r}")
    return float(depth)


def check_choice(name: str, value, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def grid_examples(make: Callable[[int, float, Seed], list], lengths: Iterable[int], depths: Iterable[float],
                  seed: int) -> list:
    """Concatenate ``make(length, depth, cell_seed)`` over the ``lengths x depths`` grid.

    The seed of a cell is ``(seed, length, round(1000 * depth))``: a cell's examples do not change when the
    grid grows or is reordered.
    """
    lengths, depths = list(lengths), list(depths)
    if not lengths or not depths:
        raise ValueError(f"lengths and depths must be non-empty, got {lengths!r} and {depths!r}")
    out = []
    for length in lengths:
        length = check_int("lengths", length, 1)
        for depth in depths:
            depth = check_depth("depths", depth)
            if depth is None:
                raise ValueError("depths must be percents in [0, 100], got None")
            out += make(length, depth, (seed, length, int(round(1000 * depth))))
    return out


def write_jsonl(examples: Iterable[dict], path: Union[str, os.PathLike]) -> int:
    """Write one JSON object per line (UTF-8); returns the number written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for example in examples:
            f.write(json.dumps(example, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: Union[str, os.PathLike]) -> list[dict]:
    """The objects of a jsonl file written by ``write_jsonl`` (blank lines are skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


__all__ = ["IGNORE_INDEX", "Seed", "TokenBatch", "make_rng", "check_int", "sample_rows", "check_depth", "check_choice",
           "grid_examples", "write_jsonl", "read_jsonl"]
