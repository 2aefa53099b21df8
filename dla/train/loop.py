"""The training loop: any transformers causal LM on a packed corpus or MQAR, single process or under torchrun.

One optimizer step takes ``global_batch_size`` sequences: ``micro_batch_size`` per forward on each of the
``world_size`` ranks, ``global_batch_size / (micro_batch_size * world_size)`` micro-batches accumulated. The loss is
the mean next-token cross-entropy (float32) over every scored label of the step, all ranks and micro-batches
together, computed here from the logits: ``labels[:, t]`` is the target after ``input_ids[:, :t + 1]`` (the data's
convention, labels already shifted; -100 = not scored). With ``data.document_masking`` and a model whose forward
takes ``cu_seqlens``, a ``[B, T]`` batch runs as ``[1, B*T]`` with document offsets, so no document sees another.

Around the step: bfloat16 autocast on GPU, AdamW (fused on GPU), warmup + cosine schedule, gradient clipping,
optional activation checkpointing and ``torch.compile``, DDP or FSDP2, validation every ``eval_every`` steps,
checkpoints every ``checkpoint.every`` steps and at the end (one file from one process; a sharded
``torch.distributed.checkpoint`` directory from several, written by every rank without a gather; the loss and the
weights are checked for NaN/inf first), ``log.jsonl`` + TensorBoard + a progress bar, and the loss-curve PNG, the
final model (``save_pretrained``, with the tokenizer) and ``summary.json`` at the end.

Resuming (``resume=True``) loads the latest checkpoint of the run directory: weights, optimizer, scheduler, every
rank's data position and RNG states. On the same number of processes the continued run computes exactly what an
uninterrupted one would have. On another number (a run saved by ``N`` ranks resumed by ``M``, one included) the
state is resharded and the data continue at the same global position (:func:`loader_position`); only the
reduction order of the sums differs.

Example:
    >>> result = train(load_config("configs/tiny.yaml", ["train.max_steps=50"]))
    >>> result.metrics["val_ppl"], result.tokens_per_s
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dla.train.checkpoint import (is_sharded, latest_checkpoint, load_checkpoint, load_sharded_state, rng_state,
                                  save_checkpoint, save_sharded_checkpoint, set_rng_state)
from dla.train.config import RunConfig, dump_config, to_plain
from dla.train.data import TaskData, build_task_data, rewind
from dla.train.distributed import (DistEnv, all_gather_objects, all_reduce_sum, any_rank, barrier,
                                   destroy_distributed, init_distributed, unwrap, wrap_model)
from dla.train.logs import RunLogger, plot_loss_curves
from dla.train.model import (build_model, build_model_config, compile_blocks, forward_accepts, no_weight_decay_names,
                             num_parameters)
from dla.train.optim import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1

FREE_ON_RESUME = ("max_time_s", "eval_every", "eval_batches", "compile", "activation_checkpointing")
"""``train`` settings a resumed run may change without ``allow_changes``: they change when the run stops, how
often it validates and how it computes, not what it computes (the change is still recorded)."""


@dataclass
class TrainResult:
    """What ``train`` returns (the same on every rank, except ``history``, which only rank 0 keeps)."""

    out_dir: Path  # the run directory
    steps: int  # optimizer steps done (the run's total unless stopped by max_time_s)
    tokens: int  # training tokens seen, all ranks together
    train_time_s: float  # time in training steps (validation and checkpoints excluded), resumed parts included
    tokens_per_s: float  # tokens / train_time_s
    num_params: int  # parameters of the model
    final_loss: Optional[float]  # mean training loss of the last logged interval
    metrics: dict  # the last validation: val_loss, val_ppl, val_acc, val_tokens (empty without validation)
    history: list = field(default_factory=list)  # log records (rank 0)
    checkpoint: Optional[Path] = None  # the last checkpoint written
    model: Optional[nn.Module] = None  # the trained model (unwrapped from DDP; sharded in place under FSDP)
    stopped_early: bool = False  # max_time_s ended the run


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_fit(config: RunConfig, world_size: int) -> int:
    """Checks that need the number of processes; returns the gradient-accumulation steps.

    Raises:
        ValueError: the global batch does not split into micro-batches over the ranks, or validation is asked
            for without a validation split.
    """
    t = config.train
    per_pass = t.micro_batch_size * world_size
    if t.global_batch_size % per_pass:
        raise ValueError(f"train.global_batch_size: {t.global_batch_size} is not a multiple of micro_batch_size * "
                         f"processes = {t.micro_batch_size} * {world_size} = {per_pass}")
    if config.data.task == "lm" and config.data.val_fraction == 0 and t.eval_every:
        raise ValueError(f"train.eval_every: {t.eval_every} asks for validation, but data.val_fraction is 0 "
                         f"(no validation split); set data.val_fraction > 0 or train.eval_every=0")
    return t.global_batch_size // per_pass


def _check_model_fits(model_config, config: RunConfig) -> None:
    limit = getattr(model_config, "max_position_embeddings", None)
    if isinstance(limit, int) and config.data.seq_len > limit:
        raise ValueError(f"data.seq_len: {config.data.seq_len} is longer than model.max_position_embeddings="
                         f"{limit}; shorten the context or raise the model's limit")


def _autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    if precision == "bfloat16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


class _Step:
    """The forward pass and loss of one micro-batch, shared by training and validation."""

    def __init__(self, model: nn.Module, inner: nn.Module, device: torch.device, autocast: Optional[torch.dtype],
                 document_masking: bool) -> None:
        self.model, self.device, self.autocast = model, device, autocast
        self.pass_cu_seqlens = document_masking and forward_accepts(inner, "cu_seqlens")
        self.pass_use_cache = forward_accepts(inner, "use_cache")
        from dla.models import DLAForCausalLM

        # DLA models compute logits only where a label is scored (MQAR scores 6-25% of the positions)
        self.scored_logits = isinstance(inner, DLAForCausalLM)

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(nll_sum, logits [N, V] float32, labels [N])`` of ``batch``: every position (``N = B*T``), or the
        scored ones (labels other than -100) for models that take a ``logits_to_keep`` mask.

        The scored positions are found on the host, where the loader's batch is, and no copy waits for the device:
        a step launches its work while the device still runs the last one's."""
        input_ids, labels = batch["input_ids"], batch["labels"]
        B, T = input_ids.shape
        kwargs = {"use_cache": False} if self.pass_use_cache else {}
        if self.pass_cu_seqlens and "cu_seqlens" in batch:
            kwargs["cu_seqlens"] = batch["cu_seqlens"].to(self.device, non_blocking=True)
            input_ids, labels = input_ids.reshape(1, B * T), labels.reshape(1, B * T)
        if self.scored_logits:
            scored = labels != -100
            kwargs["logits_to_keep"] = scored  # on the host: the model selects the rows without a device sync
            labels = labels[scored]
        input_ids = input_ids.to(self.device, non_blocking=True)
        labels = labels.reshape(-1).to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            logits = self.model(input_ids=input_ids, **kwargs).logits
        logits = logits.reshape(labels.numel(), -1).float()
        return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum"), logits, labels


@torch.no_grad()
def evaluate(step_fn: _Step, model: nn.Module, loader, env: DistEnv, max_batches: Optional[int] = None) -> dict:
    """Validation over ``loader`` (from its start, at most ``max_batches`` per rank), summed over ranks.

    Returns:
        ``val_loss`` (mean NLL per scored token), ``val_ppl`` (its exp), ``val_acc`` (argmax accuracy over the
        scored labels; MQAR accuracy for ``task: mqar``) and ``val_tokens``.
    """
    was_training = model.training
    model.eval()
    rewind(loader)
    totals = torch.zeros(3, dtype=torch.float64, device=env.device)  # nll, scored labels, correct
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        nll, logits, labels = step_fn(batch)
        scored = labels != -100
        totals += torch.stack([nll.double(), scored.sum().double(),
                               ((logits.argmax(-1) == labels) & scored).sum().double()])
    all_reduce_sum(totals, env)
    model.train(was_training)
    nll, count, correct = totals.tolist()
    if count == 0:
        return {}
    loss = nll / count
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)), "val_acc": correct / count,
            "val_tokens": int(count)}


def _grad_norm(model: nn.Module, max_norm: Optional[float]) -> torch.Tensor:
    """Clip to ``max_norm`` (None: only measure); the global norm before clipping, as a tensor (no host sync)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm is not None else float("inf"))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def _local(param: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``param`` (its shard under FSDP2, whose parameters are DTensors)."""
    return param.to_local() if hasattr(param, "to_local") else param


def _nonfinite(tensors) -> torch.Tensor:
    """A bool tensor (no host sync): whether any element of ``tensors`` is NaN or infinite."""
    flags = [~torch.isfinite(t.detach()).all() for t in tensors if t.numel()]
    return torch.stack(flags).any() if flags else torch.zeros((), dtype=torch.bool)


def check_finite(model: nn.Module, interval_nll: torch.Tensor, env: DistEnv, step: int, ckpt_dir: Path) -> None:
    """Before a checkpoint: the loss summed since the last log and every weight (every rank's shard) must be
    finite; one host synchronisation.

    Raises:
        FloatingPointError: saying which (and the first parameters that hold NaN/inf on this rank), that no
            checkpoint was written and which one is the last good one, so a NaN never overwrites or rotates out a
            good checkpoint.
    """
    params = [_local(p) for p in model.parameters()]
    bad = torch.stack([~torch.isfinite(interval_nll), _nonfinite(params).to(interval_nll.device)]).double()
    bad = all_reduce_sum(bad, env).tolist()
    if not any(bad):
        return
    names = [n for n, p in model.named_parameters() if _local(p).numel() and not bool(torch.isfinite(_local(p)).all())]
    what = " and ".join(w for w, b in (("the loss", bad[0]), ("the weights", bad[1])) if b)
    where = f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""
    raise FloatingPointError(
        f"train: {what}{where} not finite at step {step}; no checkpoint written. {_last_good(ckpt_dir)}")


def _last_good(ckpt_dir: Path) -> str:
    last = latest_checkpoint(ckpt_dir)
    if last is None:
        return "No checkpoint was written before it."
    return f"The last good checkpoint is {last}: resume from it (--resume) with a lower train.lr or other data."


def _resolve_resume(resume: Union[bool, str, os.PathLike, None], ckpt_dir: Path) -> Optional[Path]:
    if resume is None or resume is False:
        existing = latest_checkpoint(ckpt_dir)
        if existing is not None:
            raise ValueError(f"resume: {ckpt_dir} already holds checkpoints (latest {existing.name}); pass "
                             f"--resume to continue that run, or choose another out_dir")
        return None
    if resume is True or resume == "auto":
        path = latest_checkpoint(ckpt_dir)
        if path is None and resume is True:
            raise FileNotFoundError(f"resume: no checkpoint in {ckpt_dir} to resume from")
        return path
    return Path(resume)


def _check_resumable(saved: dict, config: RunConfig, env: DistEnv, path: Path, allow_changes: bool,
                     total_steps: int) -> dict:
    """Refuse a checkpoint this run cannot continue; return the changed ``train`` settings as
    ``{name: [old, new]}`` (only with ``allow_changes``; without, changed settings raise)."""
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"resume: {path} has checkpoint format {saved.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    current = config.to_dict()
    for section in ("model", "data"):
        if saved["config"][section] != current[section]:
            raise ValueError(f"resume: the {section} section differs from the one {path} was trained with; "
                             f"resume with the same {section} settings")
    old = saved["config"]["train"]
    changed = {k: [old.get(k), v] for k, v in current["train"].items() if old.get(k) != v}
    refused = {k: v for k, v in changed.items() if k not in FREE_ON_RESUME}
    if refused and not allow_changes:
        listed = "; ".join(f"train.{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise ValueError(f"resume: settings differ from the ones {path} was trained with ({listed}); resume with "
                         f"the same settings, or pass --allow-changes (allow_changes=True) to continue with these")
    if saved["step"] >= total_steps:
        raise ValueError(f"resume: {path} is at step {saved['step']}, and this run ends at step {total_steps} "
                         f"(train.max_steps / train.max_tokens): nothing is left to train")
    return changed


def loader_position(saved: dict, current: dict, rank: int, path: Path) -> dict:
    """The ``state_dict`` for this rank's training loader (``current`` is its own) that continues where the saved
    run's loaders stopped. The same number of ranks: each rank's own position. Another number: the saved global
    position (every rank had consumed ``batch * batch_size * world_size`` sequences of the epoch's order) cut into
    this run's global batches, so no sequence is seen twice or skipped.

    Raises:
        ValueError: the position does not fall on one of this run's batch boundaries (the global batch changed).
    """
    states = saved["data"]
    if len(states) == current["world_size"] and states[rank]["batch_size"] == current["batch_size"]:
        return states[rank]
    old = states[0]
    consumed = old["batch"] * old["batch_size"] * old["world_size"]
    per_batch = current["batch_size"] * current["world_size"]
    if consumed % per_batch:
        raise ValueError(f"resume: {path} stopped after {consumed} sequences of epoch {old['epoch']}, not a multiple "
                         f"of this run's {current['world_size']} ranks x {current['batch_size']} sequences; keep "
                         f"train.global_batch_size and choose micro_batch_size so that they divide it")
    return {**current, "epoch": old["epoch"], "batch": consumed // per_batch,
            **{k: old[k] for k in ("seed", "shuffle", "num_sequences")}}


def _save_final_model(model: nn.Module, model_state: dict, model_config, data: TaskData, out: Path,
                      sharded: bool) -> None:
    from transformers.utils import logging as hf_logging

    final = out / "final"
    target = build_model(model_config) if sharded else unwrap(model)
    if sharded:
        target.load_state_dict(model_state)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one tiny "Writing model shards" bar per run otherwise
    try:
        target.save_pretrained(final, state_dict=model_state)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if data.tokenizer is not None:
        data.tokenizer.save(final)


def train(config: RunConfig, *, resume: Union[bool, str, os.PathLike, None] = None,
          allow_changes: bool = False) -> TrainResult:
    """Train ``config`` (see the module docstring); under torchrun every rank calls this.

    Args:
        config: a validated recipe (``load_config``).
        resume: None/False: start fresh (an error if the run directory already has checkpoints); True: continue
            from the latest checkpoint (an error if there is none); ``"auto"``: the latest if any, else fresh;
            a path: that checkpoint file.
        allow_changes: resume although ``train`` settings differ from the checkpoint's (without it that is an
            error, except for those in :data:`FREE_ON_RESUME`). The run's ``config.yaml`` always keeps the
            settings the run started with; changed ones are written to ``config.resume-<step>.yaml`` and a
            ``resume`` record of ``log.jsonl`` lists the changes.

    Returns:
        a ``TrainResult``.

    Raises:
        ValueError / FileNotFoundError: bad data paths, an empty corpus, sequences or splits too short, a model
            config or batch layout that does not fit, an unusable checkpoint; all before the first step.
    """
    env = init_distributed(config.train.device)
    try:
        return _train(config, env, resume, allow_changes)
    finally:
        destroy_distributed(env)


def _train(config: RunConfig, env: DistEnv, resume, allow_changes: bool) -> TrainResult:
    t, out = config.train, config.output_dir
    accum = check_fit(config, env.world_size)
    total_steps = t.steps(config.data.seq_len)
    ckpt_dir = out / "checkpoints"
    resume_path = _resolve_resume(resume, ckpt_dir)
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    seed_everything(t.seed)

    data = build_task_data(config.data, t.micro_batch_size, t.seed, env)
    model_config = build_model_config(config.model, data.vocab_size, data.eos_token_id)
    _check_model_fits(model_config, config)
    saved, changed = None, {}
    if resume_path is not None:
        saved = load_checkpoint(resume_path, tensors=False)  # a directory's tensors load resharded, below
        changed = _check_resumable(saved, config, env, resume_path, allow_changes, total_steps)

    seed_everything(t.seed)
    model = build_model(model_config)
    n_params = num_parameters(model)
    no_decay = no_weight_decay_names(model)
    if t.activation_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ValueError(f"train.activation_checkpointing: {type(model).__name__} does not support it")
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5 name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if t.compile:
        compile_blocks(model)
    autocast = _autocast_dtype(t.precision, env.device)
    sharded = env.distributed and t.parallelism == "fsdp"
    model = wrap_model(model, env, t.parallelism, param_dtype=autocast if sharded else None)
    inner = unwrap(model)
    model.train()
    optimizer = build_optimizer(inner.named_parameters(), no_decay, t, env.device)
    scheduler = build_scheduler(optimizer, total_steps, t)

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    start_step, tokens, train_time = 0, 0, 0.0
    if saved is not None:
        if is_sharded(resume_path):  # DCP reshards the N ranks' shards onto this run's layout
            model_state, optim_state = get_state_dict(model, optimizer)
            state = {"model": model_state, "optimizer": optim_state}
            load_sharded_state(resume_path, state)
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        else:
            set_state_dict(model, optimizer, model_state_dict=saved["model"], optim_state_dict=saved["optimizer"],
                           options=StateDictOptions(full_state_dict=True))
        scheduler.load_state_dict(saved["scheduler"])
        data.train.load_state_dict(loader_position(saved, data.train.state_dict(), env.rank, resume_path))
        set_rng_state(saved["rng"][env.rank if env.rank < len(saved["rng"]) else 0])
        start_step, tokens, train_time = saved["step"], saved["tokens"], saved["train_time_s"]
        saved = None

    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if resume_path is None:
            dump_config(config, out / "config.yaml")
        elif changed:
            dump_config(config, out / f"config.resume-{start_step:08d}.yaml")
    run_log = RunLogger(out, env.is_main, total_steps, start_step, tensorboard=config.log.tensorboard,
                        progress=config.log.progress, truncate_after=start_step if resume_path else None,
                        description=config.name)
    if env.is_main:
        run_log.log({"kind": "start", "step": start_step, "num_params": n_params, "world_size": env.world_size,
                     "grad_accum": accum, "total_steps": total_steps, "device": str(env.device), **data.description})
        if resume_path is not None:
            run_log.log({"kind": "resume", "step": start_step, "checkpoint": str(resume_path), "changed": changed})

    step_fn = _Step(model, inner, env.device, autocast, config.data.document_masking)
    state_options = StateDictOptions(full_state_dict=True, cpu_offload=True)

    def checkpoint(step: int) -> Optional[Path]:
        """One file from a single process; a DCP directory (every rank its shard, no gather) from several."""
        check_finite(model, interval_nll, env, step, ckpt_dir)
        per_rank = all_gather_objects({"data": data.train.state_dict(), "rng": rng_state()}, env)
        meta = {"format": CHECKPOINT_FORMAT, "step": step, "tokens": tokens, "train_time_s": train_time,
                "world_size": env.world_size, "scheduler": scheduler.state_dict(),
                "data": [r["data"] for r in per_rank], "rng": [r["rng"] for r in per_rank],
                "config": config.to_dict()}
        keep = config.checkpoint.keep_last
        if env.distributed:
            model_state, optim_state = get_state_dict(model, optimizer)
            return save_sharded_checkpoint({"model": model_state, "optimizer": optim_state}, meta, ckpt_dir, step,
                                           keep, rank=env.rank, barrier=lambda: barrier(env))
        model_state, optim_state = get_state_dict(model, optimizer, options=state_options)
        return save_checkpoint({**meta, "model": model_state, "optimizer": optim_state}, ckpt_dir, step, keep)

    def validate(step: int) -> dict:
        if data.val is None:
            return {}
        metrics = evaluate(step_fn, model, data.val, env, t.eval_batches)
        if metrics:
            run_log.log({"kind": "val", "step": step, "tokens": tokens, **metrics})
        return metrics

    tokens_per_step = t.global_batch_size * config.data.seq_len
    train_iter = iter(data.train)
    metrics: dict = {}
    last_ckpt: Optional[Path] = None
    final_loss: Optional[float] = None
    interval_nll = torch.zeros((), dtype=torch.float64, device=env.device)
    interval_count = torch.zeros((), dtype=torch.float64, device=env.device)
    interval_tokens, interval_time = 0, 0.0
    stopped_early = False
    step = start_step
    try:  # the progress bar is closed however the loop ends (Ctrl-C, a diverged loss)
        while step < total_steps:
            t0 = time.perf_counter()
            micro = [next(train_iter) for _ in range(accum)]
            # every rank's gradient is scaled by world_size / (scored labels of the step on all ranks): DDP and FSDP
            # average over ranks, so the update is the mean over all scored labels (a tensor: no host sync)
            scored = torch.full((), float(sum(int((b["labels"] != -100).sum()) for b in micro)),
                                dtype=torch.float64, device=env.device)  # a fill, not a copy that waits for the device
            scored = all_reduce_sum(scored, env)
            scale = (env.world_size / scored.clamp(min=1.0)).float()
            for i, batch in enumerate(micro):
                last = i == accum - 1
                if sharded:
                    model.set_requires_gradient_sync(last)
                sync = contextlib.nullcontext() if last or not isinstance(model, nn.parallel.DistributedDataParallel) \
                    else model.no_sync()
                with sync:
                    nll, _, _ = step_fn(batch)
                    (nll * scale).backward()
                interval_nll += nll.detach().double()
            grad_norm = _grad_norm(model, t.grad_clip)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += tokens_per_step
            elapsed = time.perf_counter() - t0
            train_time += elapsed
            interval_time += elapsed
            interval_tokens += tokens_per_step
            interval_count += scored

            if step % config.log.every == 0 or step == total_steps:
                count = float(interval_count)
                if count == 0:
                    raise ValueError(f"data: no scored label (all -100) in steps up to {step}")
                loss = float(all_reduce_sum(interval_nll, env)) / count
                if not math.isfinite(loss):
                    raise FloatingPointError(f"train: the loss is {loss} at step {step}. {_last_good(ckpt_dir)}")
                final_loss = loss
                tps = interval_tokens / max(interval_time, 1e-9)
                record = {"kind": "train", "step": step, "tokens": tokens, "loss": loss, "lr": lr,
                          "grad_norm": float(grad_norm), "tokens_per_s": tps, "time_s": train_time}
                if env.device.type == "cuda":  # this rank's peak, allocated by PyTorch since the run started
                    record["peak_mem_gib"] = torch.cuda.max_memory_allocated(env.device) / 2**30
                run_log.log(record)
                run_log.advance(0, loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
                interval_nll = torch.zeros((), dtype=torch.float64, device=env.device)
                interval_count = torch.zeros((), dtype=torch.float64, device=env.device)
                interval_tokens, interval_time = 0, 0.0
            run_log.advance(1)
            if t.eval_every and step % t.eval_every == 0 and step < total_steps:
                metrics = validate(step)
            out_of_time = t.max_time_s is not None and any_rank(train_time >= t.max_time_s, env)
            every = config.checkpoint.every
            if every and step % every == 0 and step < total_steps and not out_of_time:
                last_ckpt = checkpoint(step) or last_ckpt
            if out_of_time and step < total_steps:
                stopped_early = True
                break
    finally:
        run_log.close()

    metrics = validate(step) or metrics
    last_ckpt = checkpoint(step) or last_ckpt
    model_state, _ = get_state_dict(model, optimizer, options=state_options)
    if env.is_main:
        _save_final_model(model, model_state, model_config, data, out, sharded)
    tokens_per_s = tokens / train_time if train_time > 0 else 0.0
    result = TrainResult(out_dir=out, steps=step, tokens=tokens, train_time_s=train_time, tokens_per_s=tokens_per_s,
                         num_params=n_params, final_loss=final_loss, metrics=metrics, history=list(run_log.records),
                         checkpoint=last_ckpt, model=inner, stopped_early=stopped_early)
    if env.is_main:
        summary = {k: to_plain(v) if not isinstance(v, Path) else str(v) for k, v in vars(result).items()
                   if k not in ("history", "model")}
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if config.log.plot:
            plot_loss_curves({config.name: run_log.records}, out / "loss.png", title=f"{config.name}: loss")
    return result


__all__ = ["train", "evaluate", "TrainResult", "check_fit", "check_finite", "loader_position", "seed_everything"]
