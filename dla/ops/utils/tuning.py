"""Launch parameters of the chunked form's stages, as one typed value (:class:`Tuning`), and what a stage is run
with (:class:`StageConfig`).

Results do not depend on a tuning value beyond the rounding of sums taken in another order. The defaults and the
measurements behind them are in ``docs/benchmarks.md`` ("Tuning decisions"); pass another :class:`Tuning` to
``chunk_dla(..., tuning=)`` to measure a change.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional


def _power_of_two(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or value & (value - 1):
        raise ValueError(f"tuning.{name}: expected a power of two >= {low}, got {value!r}")


DQ_KERNELS = ("chunk", "pair")
"""The forms of the readout backward's ``dq`` (``Tuning.dq_kernel``)."""

CHOICES = {"dq_kernel": DQ_KERNELS}
"""The string fields of :class:`Tuning` and their values (the compiled op carries each as its index)."""


@dataclass(frozen=True)
class Tuning:
    """Tile widths, warps and memory budgets of the kernels (Triton backend) and of the PyTorch readout.

    Attributes:
        num_warps: warps per program of the backbone kernels.
        max_tile: widest key or value tile of the backbone kernels (a power of two >= 32: 16-wide float32 tiles
            gave Gated DeltaNet a wrong ``dk`` on Hopper).
        ut_tile: key tile of Gated DeltaNet's UT-transform backward (its float32-accurate products spill at 64).
        scan_warps: warps per program of the sequential scan kernel.
        scan_block_k, scan_block_v: the scan's tile of the open slot's state (powers of two >= 16).
        scan_table_bytes: most bytes of per-chunk score tables the scan holds at once (windows of chunks).
        readout_block_v, readout_warps: value columns and warps of the readout's forward programs.
        dq_kernel: how the readout backward computes ``dq`` and the query-side gradients: ``"chunk"``, one
            program per query chunk looping over its candidates; ``"pair"``, one program per (query chunk,
            candidate) pair storing its tiles, then a per-query-chunk sum of ``dq`` from them.
        dq_block_v: value columns per step of the readout backward's ``dq`` kernel (either form's).
        dq_warps: its warps, of the pair kernel in the ``"pair"`` form (``None``: 8 when ``chunk_size * K >= 4096``,
            else 4).
        key_block_v, key_warps: value columns and warps of the readout backward's key-side kernel.
        pair_tile_bytes: most bytes of the readout backward's per-pair tiles held at once (windows of heads).
        torch_group_bytes: working memory of the PyTorch readout per group of query chunks.
    """

    num_warps: int = 4
    max_tile: int = 64
    ut_tile: int = 32
    scan_warps: int = 4
    scan_block_k: int = 32
    scan_block_v: int = 32
    scan_table_bytes: int = 1 << 29
    readout_block_v: int = 64
    readout_warps: int = 4
    dq_kernel: str = "chunk"
    dq_block_v: int = 32
    dq_warps: Optional[int] = None
    key_block_v: int = 128
    key_warps: int = 8
    pair_tile_bytes: int = 1 << 29
    torch_group_bytes: int = 1 << 26

    def __post_init__(self):
        if self.dq_kernel not in DQ_KERNELS:
            raise ValueError(f"tuning.dq_kernel: expected one of {DQ_KERNELS}, got {self.dq_kernel!r}")
        for name in ("max_tile", "ut_tile"):
            _power_of_two(name, getattr(self, name), 32)
        for name in ("scan_block_k", "scan_block_v", "readout_block_v", "dq_block_v", "key_block_v"):
            _power_of_two(name, getattr(self, name), 16)
        for name in ("num_warps", "scan_warps", "readout_warps", "key_warps") + (
                ("dq_warps",) if self.dq_warps is not None else ()):
            _power_of_two(name, getattr(self, name), 1)
        for name in ("scan_table_bytes", "pair_tile_bytes", "torch_group_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"tuning.{name}: expected an int >= 1, got {value!r}")

    def replace(self, **changes) -> "Tuning":
        """A copy with some fields changed (unknown names raise ``ValueError``)."""
        known = {f.name for f in fields(self)}
        for name in changes:
            if name not in known:
                raise ValueError(f"tuning: unknown field {name!r}; known: {', '.join(sorted(known))}")
        return Tuning(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


@dataclass(frozen=True)
class StageConfig:
    """What every stage of one ``chunk_dla`` call runs with: the ``tl.dot`` operand mode of the backbone and readout
    kernels (:mod:`dla.ops.utils.precision`; the PyTorch stages ignore it) and the :class:`Tuning`."""

    dot: str = "ieee"
    tuning: Tuning = field(default_factory=Tuning)
