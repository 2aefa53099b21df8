"""What a run writes as it goes: ``log.jsonl`` (one JSON record per line), TensorBoard events, a progress bar, and
the loss-curve PNG at the end. Only rank 0 writes.

Records have ``kind`` ``train`` (``step``, ``tokens``, ``loss``, ``lr``, ``grad_norm``, ``tokens_per_s``,
``time_s``) or ``val`` (``step``, ``tokens``, ``val_loss``, ``val_ppl``, ``val_acc``).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional, Sequence, Union

logger = logging.getLogger(__name__)


def read_log(path: Union[str, Path]) -> list[dict]:
    """The records of a ``log.jsonl`` (empty if the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunLogger:
    """JSONL + optional TensorBoard + optional progress bar of one run (inactive off rank 0).

    Args:
        out_dir: the run directory (``log.jsonl`` and ``tensorboard/`` go there).
        active: whether this process writes (rank 0).
        total_steps, start_step: for the progress bar.
        tensorboard: write TensorBoard events (a warning if ``tensorboard`` is not installed).
        progress: show a tqdm bar with loss, tokens/s and ETA.
        truncate_after: on resume, drop records with a step above this one (written after the checkpoint).
    """

    def __init__(self, out_dir: Path, active: bool, total_steps: int, start_step: int = 0, tensorboard: bool = True,
                 progress: bool = True, truncate_after: Optional[int] = None, description: str = "train") -> None:
        self.active = active
        self.path = Path(out_dir) / "log.jsonl"
        self.records: list[dict] = []
        self.writer = None
        self.bar = None
        if not active:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after is not None:
            self.records = [r for r in read_log(self.path) if r.get("step", 0) <= truncate_after]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                # on resume, events after the checkpoint's step (written before the run stopped) are dropped
                self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"),
                                            purge_step=start_step + 1 if start_step else None)
            except ImportError:
                logger.warning("log.tensorboard: the tensorboard package is not installed; no events are written "
                               "(pip install tensorboard, or set log.tensorboard=false)")
        if progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, desc=description, unit="step", dynamic_ncols=True)

    def log(self, record: dict) -> None:
        """Append ``record`` to the JSONL file and TensorBoard (numbers only)."""
        if not self.active:
            return
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            prefix = record.get("kind", "train")
            for key, value in record.items():
                if key not in ("kind", "step") and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def advance(self, steps: int = 1, **postfix) -> None:
        """Move the progress bar; ``postfix`` values are shown after it."""
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def plot_loss_curves(runs: dict[str, Sequence[dict]], path: Union[str, Path], title: str = "loss") -> Optional[Path]:
    """Training loss (lines) and validation loss (markers) against tokens, one colour per run, as a PNG.

    Args:
        runs: run label -> its log records (``read_log``).
        path: the PNG to write.

    Returns:
        ``path``, or None when matplotlib is not installed (a warning is logged).
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("log.plot: matplotlib is not installed; no loss curve is written (pip install matplotlib)")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, records) in enumerate(runs.items()):
        color = f"C{i % 10}"
        train = [r for r in records if r.get("kind") == "train"]
        val = [r for r in records if r.get("kind") == "val"]
        if train:
            ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], color=color, label=f"{label} train")
        if val:
            ax.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o--", color=color, markersize=4,
                    label=f"{label} val")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["RunLogger", "read_log", "plot_loss_curves"]
