"""Pictures of evaluation results (matplotlib, Agg backend; files only, no display).

* :func:`needle_heatmap`: needle depth x context length, colour = score (RULER's string match).
* :func:`loss_curves`: loss per position bucket for several models on one plot, the training length marked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported when first needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Union[str, os.PathLike], dpi: int = 120) -> Path:
    """Lay out ``fig``, write it to ``path`` (creating its folder) and close it; returns the path."""
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    pyplot().close(fig)
    return out


def needle_grid(cells: Sequence[Tuple[int, float, float]]) -> Tuple[List[int], List[float], np.ndarray]:
    """``(length, depth, score)`` records -> ``(lengths, depths, scores [len(depths), len(lengths)])``, mean score
    per cell (NaN where a cell has none); lengths and depths sorted."""
    if not cells:
        raise ValueError("cells: expected at least one (length, depth, score) record")
    lengths = sorted({int(c[0]) for c in cells})
    depths = sorted({float(c[1]) for c in cells})
    total = np.zeros((len(depths), len(lengths)))
    count = np.zeros((len(depths), len(lengths)))
    for length, depth, score in cells:
        if not 0.0 <= float(score) <= 1.0:
            raise ValueError(f"cells: scores must lie in [0, 1], got {score!r}")
        i, j = depths.index(float(depth)), lengths.index(int(length))
        total[i, j] += float(score)
        count[i, j] += 1
    with np.errstate(invalid="ignore"):
        return lengths, depths, np.where(count > 0, total / np.maximum(count, 1), np.nan)


def needle_heatmap(cells: Sequence[Tuple[int, float, float]], path: Union[str, os.PathLike], *,
                   title: str = "Needle retrieval", train_length: Optional[int] = None) -> Path:
    """Write a depth x length heat map of needle retrieval scores to ``path`` (PNG).

    Args:
        cells: ``(length, depth_percent, score in [0, 1])`` per example (averaged per cell).
        train_length: draw a line between the lengths up to and past it.
    """
    plt = pyplot()
    lengths, depths, grid = needle_grid(cells)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.2 + 0.45 * len(depths)))
    im = ax.imshow(grid * 100, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j] * 100:.0f}", ha="center", va="center", fontsize=8)
    if train_length is not None:
        past = [j for j, n in enumerate(lengths) if n > train_length]
        if past and past[0] > 0:
            ax.axvline(past[0] - 0.5, color="k", lw=1.5, ls="--")
    fig.colorbar(im, ax=ax, label="score (%)")
    ax.set_title(title)
    return save_figure(fig, path, dpi=110)


def loss_curves(results: Sequence, path: Union[str, os.PathLike], *, title: str = "Loss per position",
                train_length: Optional[int] = None) -> Path:
    """Plot the bucket losses of several :class:`~dla.eval.perplexity.PerplexityResult` on one log-x plot.

    Each curve is drawn at the bucket centres (empty buckets skipped); the training length (of the first result
    unless given) is a dashed vertical line.
    """
    if not results:
        raise ValueError("results: expected at least one PerplexityResult")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        edges = np.asarray(r.edges)
        centre = (edges[:-1] + np.maximum(edges[1:] - 1, edges[:-1])) / 2.0 + 1.0
        ok = np.asarray(r.bucket_count) > 0
        ax.plot(centre[ok], np.asarray(r.bucket_loss)[ok], marker="o", ms=3,
                label=f"{r.name} (ppl {r.perplexity:.2f})")
    train_length = train_length if train_length is not None else results[0].train_length
    if train_length:
        ax.axvline(train_length, color="k", ls="--", lw=1, label=f"training length {train_length}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position in document (tokens)")
    ax.set_ylabel("mean loss (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=110)


__all__ = ["needle_grid", "needle_heatmap", "loss_curves"]
