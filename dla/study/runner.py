"""Running a sweep in pieces: every cell is a ``dla train`` run in ``<root>/<study>/<cell>/``; a finished cell has a
result JSON in ``<results>/<study>/<cell>.json`` and is skipped, an interrupted one resumes from its latest
checkpoint, and a time limit stops the sweep between steps (the running cell checkpoints) or between cells.

A result JSON holds the cell's axes (task, model, setting, lr, seed), ``status`` (``done``, or ``diverged`` when
the loss became NaN/inf: the cell counts as run, its accuracy as missing), the held-out MQAR ``accuracy``,
``val_loss``, ``final_loss``, ``steps``, ``tokens``, ``train_seconds`` (all pieces), ``tokens_per_s``, ``step_ms``,
``params``, the recurrent state size, the validation accuracy over training (``history``), the ``segmentation``
statistics of every recurrent layer (:mod:`dla.study.segstats`, DLA-type policies only), the ``gpu``, ``versions``
(torch, triton, transformers), the git ``commit``, the ``date`` and the cell's whole ``config``.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
import traceback
from pathlib import Path
from statistics import median
from typing import Callable, Optional, Sequence, Tuple, Union

import torch

import dla
import dla.models  # noqa: F401 - registers model_type "dla" (a finished run's final model is read back)
from dla.study.report import MEASURE_FILE
from dla.study.segstats import has_segmentation, mqar_segmentation_stats
from dla.study.sweep import Cell, Sweep
from dla.train.checkpoint import latest_checkpoint
from dla.train.logs import read_log

logger = logging.getLogger(__name__)

RESULT_FORMAT = 1
CELL_OVERHEAD_S = 15.0
"""Seconds a cell spends outside its training steps (data, model, validation, result), for the time estimate."""
SHARED_SLOWDOWN = 0.3
"""With ``shard=(i, n)``, a cell's step time is taken as ``0.3 n`` times its measured time alone (at least 1x) until
a cell of the same shape has run in this process: 8 processes of the capacity sweep's d_model-64 cells on one H100
each ran 2.4x slower than alone (108 against 45 ms a step)."""
REPO = Path(__file__).resolve().parents[2]


def result_path(results: Union[str, Path], cell: Cell) -> Path:
    """``<results>/<study>/<cell id>.json``."""
    return Path(results) / cell.study / f"{cell.id}.json"


def run_dir(root: Union[str, Path], cell: Cell) -> Path:
    """``<root>/<study>/<cell id>``: the cell's ``dla train`` run directory."""
    return Path(root) / cell.study / cell.id


def _comparable(config: dict) -> dict:
    """The parts of a cell config that decide its result (not where it writes, how it logs or its time limit)."""
    train = {k: v for k, v in config["train"].items() if k != "max_time_s"}
    return {"model": config["model"], "data": config["data"], "train": train}


def git_commit() -> str:
    """``DLA_COMMIT`` if set (a copy of the tree without ``.git``), else ``git rev-parse --short=12 HEAD`` of the
    repository holding this package, with ``+dirty`` when tracked files differ; ``unknown`` without git."""
    if os.environ.get("DLA_COMMIT"):
        return os.environ["DLA_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=30)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    """The GPU's name, or ``CPU (<machine>, <threads> threads)``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def state_floats(model_config) -> Optional[int]:
    """Floats of recurrent state per layer and sequence (``H K V`` times the slots: 1, ``capacity`` or the Fenwick
    levels; ``capacity`` for ``dla_unbounded``, which grows past it); None for an attention-only model."""
    from dla.layers import RecurrentMixer
    from dla.models.modeling_dla import build_mixer

    mixers = [i for i, name in enumerate(getattr(model_config, "layer_mixers", [])) if name != "attention"]
    if not mixers:
        return None
    with torch.device("meta"):
        mixer = build_mixer(model_config, mixers[0])
    assert isinstance(mixer, RecurrentMixer)
    return mixer.num_heads * mixer.head_k_dim * mixer.head_v_dim * (mixer.state_width or mixer.capacity)


class Piece:
    """The time limit of one invocation: a deadline, and what is left of it."""

    def __init__(self, max_minutes: Optional[float], reserve_s: float = 20.0) -> None:
        self.start = time.monotonic()
        self.deadline = None if max_minutes is None else self.start + 60.0 * max_minutes - reserve_s

    def left_s(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    @property
    def up(self) -> bool:
        return self.left_s() <= 0


def _unfinished(cells: Sequence[Cell], results: Union[str, Path]) -> list:
    """The cells without a result JSON."""
    return [c for c in cells if not result_path(results, c).is_file()]


def _changed_sections(stored: dict, config: dict) -> list:
    """The sections (model, data, train) in which a result's stored config differs from the cell's."""
    a, b = _comparable(stored), _comparable(config)
    return [s for s in ("model", "data", "train") if a[s] != b[s]]


def cell_status(cell: Cell, root: Union[str, Path], results: Union[str, Path]) -> str:
    """``done`` / ``diverged`` (result JSON written), ``stale: ...`` (a result written for another config of the
    cell, which ``run_sweep`` refuses), ``partial at step N`` (a checkpoint), ``pending``, or ``disabled``."""
    if not cell.enabled:
        return "disabled"
    path = result_path(results, cell)
    if path.is_file():
        record = json.loads(path.read_text())
        changed = _changed_sections(record["config"], cell.config(run_dir(root, cell)).to_dict())
        if changed:
            return f"stale: written for another config (its {', '.join(changed)} section differs)"
        return record.get("status", "done")
    ckpt = latest_checkpoint(run_dir(root, cell) / "checkpoints")
    if ckpt is not None:
        return f"partial at step {_ckpt_step(ckpt)}"
    return "pending"


def _ckpt_step(path: Path) -> int:
    return int(path.stem.split("_")[1])


def _finished_run(out: Path):
    """The result of a run that trained to its end but has no result JSON yet (stopped while evaluating): its
    ``summary.json`` and final model, as a ``TrainResult``."""
    from transformers import AutoModelForCausalLM

    from dla.train.loop import TrainResult

    summary = json.loads((out / "summary.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return TrainResult(out_dir=out, steps=summary["steps"], tokens=summary["tokens"],
                       train_time_s=summary["train_time_s"], tokens_per_s=summary["tokens_per_s"],
                       num_params=summary["num_params"], final_loss=summary["final_loss"],
                       metrics=summary["metrics"], model=model.to(device))


def _saved_train_time(ckpt: Optional[Path]) -> float:
    if ckpt is None:
        return 0.0
    return float(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["train_time_s"])


def _check_stored(path: Path, cell: Cell, config: dict) -> None:
    changed = _changed_sections(json.loads(path.read_text())["config"], config)
    if changed:
        raise ValueError(f"results: {path} was written for another config of cell {cell.id} (its "
                         f"{', '.join(changed)} section differs from the sweep's); delete it to rerun the cell, or "
                         f"restore the sweep")


def run_sweep(sweep: Sweep, root: Union[str, Path], results: Union[str, Path], *, only: Sequence[str] = (),
              max_minutes: Optional[float] = None, reserve_s: float = 20.0, progress: bool = True,
              shard: Optional[Tuple[int, int]] = None, allow_pause: bool = False,
              echo: Callable[[str], None] = print) -> dict:
    """Train the sweep's pending cells in order until they are done or the time is up.

    Args:
        sweep: a loaded sweep (``load_sweep``).
        root: where the cells' run directories go (``<root>/<study>/<cell>``).
        results: where the result JSONs go (``<results>/<study>/<cell>.json``).
        only: shell patterns of cell ids to run (default all enabled cells).
        max_minutes: wall-clock limit of this invocation; the running cell stops between steps with a checkpoint
            when ``reserve_s`` seconds are left, and no cell starts after that. A cell whose estimated time does not
            fit in what is left is not started (it is left for the next piece, and later, shorter cells may run):
            the estimate is its steps at the step time in ``<results>/<study>/measure.json`` (``dla study run
            --measure``) or that a finished cell of the same model, setting and length took. None = no limit.
        reserve_s: seconds kept for the last cell's final validation, checkpoint and result.
        progress: a progress bar per cell.
        shard: ``(i, n)``: train only every ``n``-th of the cells without a result, starting at the ``i``-th
            (``0 <= i < n``), so that ``n`` processes started together share one GPU without training a cell twice
            (small models leave most of a GPU idle; ``scripts/gpu_study.sh`` does this with ``JOBS=n``).
        allow_pause: start a cell even when its estimate does not fit in what is left: it pauses with a checkpoint
            at the limit, and the next piece resumes it where its run directory survived (pieces shorter than a
            cell, on one machine).
        echo: where one line per cell goes.

    Returns:
        ``{"done", "skipped", "diverged", "failed", "left": [cell ids], "paused": cell id or None}``. A cell that
        raises (other than a diverged loss, which is a result) is reported in ``failed`` with its error through
        ``echo``, gets no result JSON, and the sweep goes on.

    Raises:
        ValueError: a result JSON written for another config of the same cell.
    """
    from dla.train.loop import train

    piece = Piece(max_minutes, reserve_s)
    cells = sweep.select(only)
    if shard is not None:
        i, n = shard
        if not (isinstance(i, int) and isinstance(n, int) and 0 <= i < n):
            raise ValueError(f"shard: expected (i, n) with 0 <= i < n, got {shard!r}")
        cells = _unfinished(cells, results)[i::n]
    step_s = _measured_step_s(measure_path(results, sweep.study))
    ran_here: set = set()  # shapes whose step time a cell of this process measured (with the others running)
    summary: dict = {"done": [], "skipped": [], "paused": None, "diverged": [], "failed": [], "left": []}
    for i, cell in enumerate(cells):
        tag = f"[{i + 1}/{len(cells)}] {cell.id}"
        out, res = run_dir(root, cell), result_path(results, cell)
        config = cell.config(out)
        if res.is_file():
            _check_stored(res, cell, config.to_dict())
            summary["skipped"].append(cell.id)
            continue
        if piece.up:
            summary["left"] += [c.id for c in _unfinished(cells[i:], results)]
            break
        ckpt = latest_checkpoint(out / "checkpoints")
        key = (cell.model, cell.setting, config.data.seq_len)
        if key in step_s and piece.deadline is not None and not allow_pause:
            done_steps = _ckpt_step(ckpt) if ckpt is not None else 0
            share = max(SHARED_SLOWDOWN * shard[1], 1.0) if shard is not None and key not in ran_here else 1.0
            need = (config.train.steps(config.data.seq_len) - done_steps) * step_s[key] * share * 1.15 + CELL_OVERHEAD_S
            if need > piece.left_s():
                summary["left"].append(cell.id)
                echo(f"{tag}: left for the next piece (needs about {need / 60:.1f} min, "
                     f"{max(piece.left_s(), 0) / 60:.1f} left)")
                continue
        extra = {"log": {"progress": progress, "tensorboard": False}}
        if piece.deadline is not None:
            extra["train"] = {"max_time_s": _saved_train_time(ckpt) + max(piece.left_s(), 1e-3)}
        config = cell.config(out, extra)
        started = time.monotonic()
        try:
            finished = ckpt is not None and _ckpt_step(ckpt) >= config.train.steps(config.data.seq_len)
            result = _finished_run(out) if finished else train(config, resume="auto")
        except FloatingPointError as e:  # the loss became NaN/inf: the cell ran, its lr diverged
            record = _record(sweep, cell, config, None, status="diverged", error=str(e))
            _write(res, record)
            summary["diverged"].append(cell.id)
            echo(f"{tag}: diverged ({e})")
            continue
        except torch.OutOfMemoryError:  # the next cells would fail the same way (other processes hold the GPU)
            summary["failed"].append(cell.id)
            summary["left"] += [c.id for c in _unfinished(cells[i + 1:], results)]
            echo(f"{tag}: out of GPU memory, no result written; this piece stops here (with several processes on "
                 f"one GPU, run fewer: JOBS)")
            break
        except Exception:  # noqa: BLE001 - one cell's failure (a kernel) must not end the piece
            summary["failed"].append(cell.id)
            echo(f"{tag}: failed, no result written (a rerun tries again):\n{traceback.format_exc().rstrip()}")
            continue
        if result.stopped_early:
            summary["paused"] = cell.id
            summary["left"] += [c.id for c in _unfinished(cells[i:], results)]
            echo(f"{tag}: paused at step {result.steps} (time is up); rerun to continue")
            break
        record = _record(sweep, cell, config, result)
        _write(res, record)
        step_s[key] = record["step_ms"] / 1000
        ran_here.add(key)
        summary["done"].append(cell.id)
        echo(f"{tag}: accuracy {record['accuracy']:.3f}, {result.steps} steps, {result.train_time_s:.0f} s "
             f"training ({time.monotonic() - started:.0f} s in this piece)")
    return summary


def measure_path(results: Union[str, Path], study: str) -> Path:
    """``<results>/<study>/measure.json``: the step times of ``measure_sweep``, kept with the study's results so that
    a later piece, on another machine, can plan with them."""
    return Path(results) / study / MEASURE_FILE


def merge_measures(old: Optional[dict], new: dict) -> dict:
    """``new`` with the rows of ``old`` it did not measure again (rows are keyed by model, setting and length)."""
    if not old:
        return new
    key = lambda r: (r["model"], r["setting"], r["seq_len"])  # noqa: E731
    fresh = {key(r) for r in new["rows"]}
    rows = [r for r in old.get("rows", []) if key(r) not in fresh] + new["rows"]
    return {**new, "rows": rows, "total_minutes": round(sum(r.get("minutes", 0.0) for r in rows), 3)}


def _measured_step_s(path: Path) -> dict:
    """``(model, setting, seq_len) -> seconds per step`` from a ``measure.json`` of ``measure_sweep`` (empty
    without one)."""
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text()).get("rows", [])
    return {(r["model"], r["setting"], r["seq_len"]): r["step_ms"] / 1000 for r in rows if "step_ms" in r}


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def _record(sweep: Sweep, cell: Cell, config, result, status: str = "done", error: Optional[str] = None) -> dict:
    from dla.data.mqar import mqar_splits
    from dla.train.model import build_model_config

    plain = config.to_dict()
    plain.pop("out_dir", None)
    plain["train"].pop("max_time_s", None)
    device = torch.device("cuda" if torch.cuda.is_available() and config.train.device != "cpu" else "cpu")
    mqar = config.data.task == "mqar"
    model_config = result.model.config if result is not None else \
        build_model_config(config.model, config.data.mqar.vocab_size if mqar else None)
    history = [[r["step"], r["val_acc"]] for r in read_log(config.output_dir / "log.jsonl")
               if r.get("kind") == "val" and "val_acc" in r]
    record = {"format": RESULT_FORMAT, "study": cell.study, "cell": cell.id, "index": sweep.cells.index(cell),
              "task": cell.task, "model": cell.model, "setting": cell.setting, "lr": cell.lr, "seed": cell.seed,
              "status": status, "task_kind": config.data.task, "seq_len": config.data.seq_len,
              "num_kv_pairs": config.data.mqar.num_kv_pairs if mqar else None,
              "vocab_size": getattr(model_config, "vocab_size", None),
              "hidden_size": getattr(model_config, "hidden_size", None),
              "state_floats": state_floats(model_config), "history": history, "gpu": device_name(device),
              "versions": dla.package_versions(("torch", "triton", "transformers")), "commit": git_commit(),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "config": plain}
    if result is None:
        record.update(accuracy=None, error=error)
        return record
    record.update(accuracy=result.metrics.get("val_acc"), val_loss=result.metrics.get("val_loss"),
                  val_ppl=result.metrics.get("val_ppl"), val_tokens=result.metrics.get("val_tokens"),
                  final_loss=result.final_loss, steps=result.steps,
                  tokens=result.tokens, train_seconds=round(result.train_time_s, 3),
                  tokens_per_s=round(result.tokens_per_s, 1),
                  step_ms=round(1000 * result.train_time_s / max(result.steps, 1), 3), params=result.num_params)
    record["segmentation"] = None
    if mqar and sweep.segmentation_examples and has_segmentation(result.model):
        section = config.data.mqar
        _, val_cfg = section.build(config.data.seq_len)
        _, (inputs, labels) = mqar_splits(val_cfg, val_cfg, seed=section.seed)  # the held-out split the trainer scores
        n = min(sweep.segmentation_examples, len(inputs))
        try:
            record["segmentation"] = mqar_segmentation_stats(result.model, inputs[:n], labels[:n],
                                                             section.num_kv_pairs,
                                                             batch_size=config.train.micro_batch_size)
        except Exception as e:  # noqa: BLE001 - the accuracy stands without the statistics; the error is kept
            record["segmentation_error"] = f"{type(e).__name__}: {e}"
    return record


def measure_sweep(sweep: Sweep, root: Union[str, Path], *, only: Sequence[str] = (), steps: int = 20,
                  warmup: int = 5, max_minutes: Optional[float] = None, progress: bool = False,
                  echo: Callable[[str], None] = print) -> dict:
    """Time a few training steps of every distinct model shape among the sweep's cells and estimate the sweep.

    Cells that differ only in ``lr``, ``seed`` or the number of key-value pairs share one measurement (their steps
    cost the same). Each measurement is a ``dla train`` run of ``warmup + steps`` steps in a temporary directory
    under ``root``; the median of the last ``steps`` step times is the step time, and the first step's time
    (compilation, autotuning) is reported on its own. The runs train on just enough generated examples for their
    steps. With ``max_minutes``, shapes not reached in time are listed under ``not_measured``.

    Returns:
        ``{"rows": [...], "total_minutes": float, "gpu": ..., ...}``; each row has the group's cells, params,
        ``first_step_s``, ``step_ms``, ``tokens_per_s``, ``peak_mem_gib`` (GPU) and ``minutes`` (its cells'
        steps at that step time).
    """
    from dla.train.loop import train

    cells = sweep.select(only)
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        data = json.loads(json.dumps(cell.data))
        data["train"].pop("lr", None)
        data["train"].pop("seed", None)
        data.get("data", {}).get("mqar", {}).pop("num_kv_pairs", None)
        groups.setdefault(json.dumps(data, sort_keys=True), []).append(cell)
    rows, not_measured = [], []
    piece = Piece(max_minutes, reserve_s=0.0)
    Path(root).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="measure-", dir=root))
    try:
        for members in groups.values():
            cell = members[0]
            if piece.up:
                not_measured.append(cell.id)
                continue
            out = scratch / cell.id
            batch = cell.config(out).train.global_batch_size
            config = cell.config(out, {"train": {"max_steps": warmup + steps, "max_tokens": None, "warmup_steps": 0,
                                                 "eval_every": 0, "eval_batches": 1, "max_time_s": None},
                                       "data": {"mqar": {"num_train": batch * (warmup + steps),
                                                         "num_val": cell.config(out).train.micro_batch_size}},
                                       "checkpoint": {"every": 0},
                                       "log": {"every": 1, "progress": progress, "tensorboard": False,
                                               "plot": False}})
            try:
                result = train(config)
            except Exception as e:  # noqa: BLE001 - report the shape that fails, measure the others
                rows.append({"group": f"{cell.model} / {cell.setting} / T={config.data.seq_len}",
                             "model": cell.model, "setting": cell.setting, "seq_len": config.data.seq_len,
                             "cells": len(members), "error": f"{type(e).__name__}: {e}", "minutes": 0.0})
                echo(f"{rows[-1]['group']}: failed: {rows[-1]['error']}")
                continue
            times = [r["time_s"] for r in read_log(out / "log.jsonl") if r.get("kind") == "train"]
            deltas = [b - a for a, b in zip(times, times[1:])][warmup - 1:] if warmup > 0 else \
                [times[0]] + [b - a for a, b in zip(times, times[1:])]
            step_s = median(deltas)
            peak = max((r.get("peak_mem_gib", 0.0) for r in read_log(out / "log.jsonl")), default=0.0)
            total_steps = sum(c.config(out).train.steps(c.config(out).data.seq_len) for c in members)
            row = {"group": f"{cell.model} / {cell.setting} / T={config.data.seq_len}", "model": cell.model,
                   "setting": cell.setting, "seq_len": config.data.seq_len, "cells": len(members),
                   "params": result.num_params, "batch": config.train.global_batch_size,
                   "first_step_s": round(times[0], 3), "step_ms": round(1000 * step_s, 2),
                   "tokens_per_s": round(config.train.global_batch_size * config.data.seq_len / step_s, 1),
                   "peak_mem_gib": round(peak, 3), "cell_steps": total_steps,
                   "minutes": round((total_steps * step_s + times[0]) / 60, 3)}
            rows.append(row)
            echo(f"{row['group']}: {row['params']:,} params, first step {row['first_step_s']:.1f} s, "
                 f"{row['step_ms']:.1f} ms/step, {row['tokens_per_s']:,.0f} tok/s, {row['cells']} cells "
                 f"~{row['minutes']:.1f} min")
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {"study": sweep.study, "gpu": device_name(device), "commit": git_commit(),
            "versions": dla.package_versions(("torch", "triton", "transformers")), "warmup": warmup, "steps": steps,
            "rows": rows, "total_minutes": round(sum(r["minutes"] for r in rows), 3), "not_measured": not_measured}


__all__ = ["run_sweep", "measure_sweep", "merge_measures", "measure_path", "cell_status", "result_path", "run_dir",
           "git_commit", "device_name", "state_floats", "RESULT_FORMAT"]
