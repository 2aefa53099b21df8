"""Checkpoints: atomic writes, keep-last-N, finding the latest, and the RNG states they carry. Two layouts:

* one file ``<dir>/step_<step:08d>.pt`` (a single process): a dict of tensors and plain data, loadable with
  ``torch.load(weights_only=True)``.
* a directory ``<dir>/step_<step:08d>/`` (several processes): the model and optimizer state written by
  ``torch.distributed.checkpoint`` (DCP), every rank its own shard, plus ``trainer.pt``, the plain data (step,
  scheduler, data positions, RNG states, config) rank 0 writes. DCP reshards on load, so a run saved by ``N``
  processes resumes on ``M`` (one included); a one-file checkpoint resumes on any number too.

Either is written under a hidden temporary name in the same directory, flushed and fsynced, then renamed to its
final name: a process killed while writing leaves at most a stray temporary, never a truncated checkpoint, so the
previous checkpoint stays the latest loadable one. Temporaries left by killed writers are removed by the next save.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch

CHECKPOINT_RE = re.compile(r"^step_(\d{8,})(\.pt)?$")
TEMP_PREFIX = ".tmp-step_"
META_FILE = "trainer.pt"
"""The plain data of a sharded (directory) checkpoint, written last by rank 0."""


def checkpoint_path(directory: Union[str, Path], step: int) -> Path:
    """``<directory>/step_<step:08d>.pt``."""
    return Path(directory) / f"step_{step:08d}.pt"


def sharded_checkpoint_path(directory: Union[str, Path], step: int) -> Path:
    """``<directory>/step_<step:08d>`` (the directory layout)."""
    return Path(directory) / f"step_{step:08d}"


def is_sharded(path: Union[str, Path]) -> bool:
    """Whether ``path`` is a directory (DCP) checkpoint."""
    return Path(path).is_dir()


def list_checkpoints(directory: Union[str, Path]) -> list[tuple[int, Path]]:
    """``(step, path)`` of the complete checkpoints in ``directory`` (files and directories), oldest first (empty
    if none or no dir)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and (p.is_file() if m.group(2) else (p / META_FILE).is_file()):
            found.append((int(m.group(1)), p))
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


def _clear_temporaries(root: Path) -> None:
    for stale in root.glob(TEMP_PREFIX + "*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _keep_last(root: Path, keep_last: Optional[int]) -> None:
    if keep_last is None:
        return
    for _, old in list_checkpoints(root)[:-keep_last]:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


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
    _clear_temporaries(root)
    final = checkpoint_path(root, step)
    tmp = root / f"{TEMP_PREFIX}{step:08d}.pt.{os.getpid()}"
    try:
        _write(state, tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(root)
    _keep_last(root, keep_last)
    return final


def save_sharded_checkpoint(tensors: dict, meta: dict, directory: Union[str, Path], step: int,
                            keep_last: Optional[int] = None, *, rank: int = 0, barrier=lambda: None) -> Path:
    """Write a directory checkpoint: ``tensors`` (model and optimizer state dicts, DTensor shards under FSDP) through
    ``torch.distributed.checkpoint`` by every rank, ``meta`` (plain data) by rank 0, atomically; then keep only the
    newest ``keep_last`` checkpoints. Every rank of the process group calls this.

    Args:
        tensors: ``{"model": ..., "optimizer": ...}`` as ``get_state_dict`` returns them (not full state dicts).
        meta: step, scheduler, data positions, RNG states, config (read back by :func:`load_checkpoint`).
        directory: created if missing.
        step: the optimizer step the state is at.
        keep_last: how many checkpoints to keep (this one included); None = all.
        rank: this process's rank (rank 0 writes ``meta``, renames and prunes).
        barrier: synchronises the ranks (``torch.distributed.barrier``).

    Returns:
        the directory written.
    """
    import torch.distributed.checkpoint as dcp

    root = Path(directory)
    temp = root / f"{TEMP_PREFIX}{step:08d}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        _clear_temporaries(root)
        temp.mkdir()
    barrier()
    with _quiet_single_process():
        dcp.save(tensors, checkpoint_id=str(temp), no_dist=_single_process())
    final = sharded_checkpoint_path(root, step)
    if rank == 0:
        try:
            _write(meta, temp / META_FILE)
            _fsync_dir(temp)
            if final.exists():  # the same step again: the new one replaces it
                shutil.rmtree(final)
            os.replace(temp, final)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        _fsync_dir(root)
        _keep_last(root, keep_last)
    barrier()
    return final


def load_sharded_state(path: Union[str, Path], tensors: dict) -> None:
    """Fill ``tensors`` (``{"model": ..., "optimizer": ...}`` as ``get_state_dict`` returns them for this run's model
    and optimizer, sharded or not) in place from the directory checkpoint ``path``, resharded to this run's layout:
    a checkpoint saved by ``N`` ranks loads on ``M``. Every rank of the process group calls this."""
    import torch.distributed.checkpoint as dcp

    with _quiet_single_process():
        dcp.load(tensors, checkpoint_id=str(path), no_dist=_single_process())


def _single_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized())


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """DCP warns on every call without a process group that it assumes a single process: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed is .*assuming the intent is to (save|load)")
        yield


def load_checkpoint(path: Union[str, Path], tensors: bool = True) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` or :func:`save_sharded_checkpoint` (onto the CPU).

    Args:
        tensors: a directory checkpoint: also gather its ``model`` and ``optimizer`` state into full tensors (one
            process; what a resumed run loads through DCP instead, resharded). ``False``: only the plain data.

    Raises:
        FileNotFoundError: no such file or directory.
        ValueError: it is not a readable checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        meta = _load(path / META_FILE, path)
        if not tensors:
            return meta
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp, _quiet_single_process():
            try:
                dcp_to_torch_save(str(path), os.path.join(tmp, "full.pt"))
            except Exception as e:  # noqa: BLE001 - a missing or damaged shard, whatever DCP calls it
                raise ValueError(f"resume: {str(path)!r} is not a readable checkpoint ({e})") from e
            return {**meta, **_load(Path(tmp) / "full.pt", path)}
    if not path.is_file():
        raise FileNotFoundError(f"resume: no checkpoint file or directory {str(path)!r}")
    return _load(path, path)


def _load(file: Path, name: Path) -> dict:
    if not file.is_file():
        raise ValueError(f"resume: {str(name)!r} is not a complete checkpoint (no {file.name})")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise ValueError(f"resume: {str(name)!r} is not a readable checkpoint ({e})") from e


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


__all__ = ["save_checkpoint", "save_sharded_checkpoint", "load_checkpoint", "load_sharded_state", "latest_checkpoint",
           "list_checkpoints", "checkpoint_path", "sharded_checkpoint_path", "is_sharded", "rng_state",
           "set_rng_state", "META_FILE"]
