"""Checkpoint files: atomic writes, keep-last-N, finding the latest, and the RNG states they carry.

A checkpoint is one file ``<dir>/step_<step:08d>.pt`` holding a dict of tensors and plain data (loadable with
``torch.load(weights_only=True)``). It is written to a hidden temporary file in the same directory, flushed and
fsynced, then renamed over the final name: a process killed while writing leaves at most a stray temporary file,
never a truncated checkpoint, so the previous checkpoint stays the latest loadable one. Temporaries left by killed
writers are removed by the next save.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

CHECKPOINT_RE = re.compile(r"^step_(\d{8,})\.pt$")
TEMP_PREFIX = ".tmp-step_"


def checkpoint_path(directory: Union[str, Path], step: int) -> Path:
    """``<directory>/step_<step:08d>.pt``."""
    return Path(directory) / f"step_{step:08d}.pt"


def list_checkpoints(directory: Union[str, Path]) -> list[tuple[int, Path]]:
    """``(step, path)`` of the complete checkpoints in ``directory``, oldest first (empty if none or no dir)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_file()]
    return sorted(found)


def latest_checkpoint(directory: Union[str, Path]) -> Optional[Path]:
    """The checkpoint with the highest step in ``directory``, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def _write(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict, directory: Union[str, Path], step: int, keep_last: Optional[int] = None) -> Path:
    """Write ``state`` atomically as ``step_<step>.pt`` in ``directory``, then keep only the newest ``keep_last``.

    Args:
        state: tensors and plain data (dicts, lists, numbers, strings).
        directory: created if missing.
        step: the optimizer step the state is at.
        keep_last: how many checkpoints to keep (this one included); None = all.

    Returns:
        the path written.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(TEMP_PREFIX + "*"):
        stale.unlink(missing_ok=True)
    final = checkpoint_path(root, step)
    tmp = root / f"{TEMP_PREFIX}{step:08d}.pt.{os.getpid()}"
    try:
        _write(state, tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(root)
    if keep_last is not None:
        for _, old in list_checkpoints(root)[:-keep_last]:
            old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: Union[str, Path]) -> dict:
    """Read a checkpoint written by ``save_checkpoint`` (onto the CPU).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume: no checkpoint file {str(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise ValueError(f"resume: {str(path)!r} is not a readable checkpoint ({e})") from e


def rng_state() -> dict:
    """The Python, NumPy, torch CPU and CUDA generator states as plain lists (picklable anywhere, gatherable with
    ``all_gather_object`` and loadable with ``weights_only=True``)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
             "numpy": [keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints", "checkpoint_path",
           "rng_state", "set_rng_state"]
