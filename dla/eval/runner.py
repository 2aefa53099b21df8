"""``dla eval``: run lm-eval suites on one or more checkpoints; results as JSON and a side-by-side markdown table.

Besides lm-eval's tasks, ``dla eval`` scores the synthetic tasks of :data:`SYNTHETIC_TASKS` itself: ``mqar`` runs
the model on multi-query associative recall examples (no tokenizer needed, so checkpoints trained on MQAR by
``dla train`` are evaluated as they are; by default on the held-out split of the run that trained them).

Per checkpoint, :func:`evaluate_checkpoint` returns a plain record::

    {"name": str, "checkpoint": str, "tasks": {task: {metric: value}}, "settings": {...}, "versions": {...}}

:func:`write_results` writes ``results.json`` (the list of records) and ``results.md`` (one row per task and
metric, one column per checkpoint, paper labels and x100 scaling from :mod:`dla.eval.suite`).
:func:`load_results` reads such files back, so checkpoints evaluated separately can be compared in one table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from dla import package_versions
from dla.eval.suite import RULER_LENGTHS, SUITES, TaskSpec, check_task_names, get_suite, suite_tasks, task_manager

logger = logging.getLogger(__name__)

Record = Dict[str, Any]

SYNTHETIC_TASKS = ("mqar",)
"""Task names ``dla eval`` scores itself (not through lm-eval)."""

MQAR_KEYS = ("seq_len", "num_kv_pairs", "vocab_size", "alpha", "num_examples", "num_passes", "seed")
"""Settings of the ``mqar`` task (``--mqar KEY=VALUE,...``): the fields of :class:`~dla.eval.synthetic.MQARConfig`
and the generator ``seed``."""


def versions() -> Dict[str, str]:
    """Versions of the packages that decide the numbers."""
    return package_versions(("dla", "lm_eval", "torch", "transformers", "datasets"))


def summarize(results: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """lm-eval's ``results`` dict -> ``{task: {metric: value}}``.

    Keys ``"<metric>,<filter>"`` become ``<metric>`` (the first filter seen wins); standard errors, aliases and
    values that are not finite numbers are dropped.
    """
    out: Dict[str, Dict[str, float]] = {}
    for task, metrics in results.items():
        row: Dict[str, float] = {}
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key:
                continue
            metric = key.split(",", 1)[0]
            if metric in row or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value) and value != -1:  # RULER reports -1 for lengths it did not run
                row[metric] = float(value)
        out[task] = row
    return out


def checkpoint_name(path: Union[str, os.PathLike], taken: Iterable[str] = ()) -> str:
    """A short column name: the directory's basename, with parents added until it differs from ``taken``."""
    parts = Path(path).resolve().parts
    taken = set(taken)
    for n in range(1, len(parts) + 1):
        name = "/".join(parts[-n:])
        if name not in taken:
            return name
    return str(path)


def mqar_settings(path: Union[str, os.PathLike], overrides: Optional[Dict[str, Any]] = None) -> Tuple[Any, int]:
    """The MQAR examples to score checkpoint ``path`` on: ``(MQARConfig, seed)``.

    By default the held-out split of the ``dla train`` run that trained it, read from the run's ``config.yaml``
    (in ``path`` or the directory above, where ``dla train`` writes it beside ``final/``): the same examples as
    the run's ``val_acc``. ``overrides`` (keys of :data:`MQAR_KEYS`) replace those settings; without a run
    record they must give ``seq_len``, ``num_kv_pairs`` and ``vocab_size``.

    Raises:
        ValueError: an unknown key, no run record and incomplete overrides, or settings MQAR refuses.
    """
    from dla.eval.synthetic import MQARConfig

    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(MQAR_KEYS))
    if unknown:
        raise ValueError(f"mqar: unknown setting {unknown[0]!r}; allowed: {', '.join(MQAR_KEYS)}")
    base: Dict[str, Any] = {}
    for directory in (Path(path), Path(path).parent):
        record = directory / "config.yaml"
        if record.is_file():
            import yaml

            data = (yaml.safe_load(record.read_text()) or {}).get("data") or {}
            if data.get("task") == "mqar":
                m = data.get("mqar") or {}
                base = {"seq_len": data.get("seq_len"), "num_kv_pairs": m.get("num_kv_pairs"),
                        "vocab_size": m.get("vocab_size"), "alpha": m.get("alpha"),
                        "num_examples": m.get("num_val"), "seed": m.get("seed")}
                base = {k: v for k, v in base.items() if v is not None}
                break
    settings = {**base, **overrides}
    missing = [k for k in ("seq_len", "num_kv_pairs", "vocab_size") if k not in settings]
    if missing:
        raise ValueError(f"mqar: {str(path)!r} has no MQAR run record (the config.yaml of a dla train run with "
                         f"data.task: mqar, beside or above it); give {', '.join(missing)} with --mqar KEY=VALUE,...")
    seed = settings.pop("seed", 0)
    return MQARConfig(**settings), seed


def evaluate_mqar(model, config, seed: int = 0, batch_size: int = 32) -> Dict[str, float]:
    """MQAR accuracy of ``model`` (a causal LM taking ``input_ids``) on ``generate_mqar(config, (seed, 1))``, the
    split ``dla train`` validates on: ``acc`` over the queried keys (Zoology's accuracy) and ``acc_all`` (examples
    with every query right).

    Raises:
        ValueError: the task's vocabulary is larger than the model's.
    """
    import torch

    from dla.eval.synthetic import generate_mqar
    from dla.eval.metrics import masked_accuracy

    vocab = int(model.config.vocab_size)
    if config.vocab_size > vocab:
        raise ValueError(f"mqar: vocab_size={config.vocab_size} is larger than the model's vocab_size={vocab}")
    inputs, labels = generate_mqar(config, (seed, 1))
    device = next(model.parameters()).device
    predictions = []
    with torch.no_grad():
        for i in range(0, len(inputs), batch_size):
            ids = torch.as_tensor(inputs[i:i + batch_size], device=device)
            predictions.append(model(input_ids=ids, use_cache=False).logits.argmax(-1).cpu())
    predicted = torch.cat(predictions)
    return {"acc": masked_accuracy(predicted, labels), "acc_all": masked_accuracy(predicted, labels, per_example=True)}


def evaluate_checkpoint(path: Union[str, os.PathLike], *, tasks: Optional[Sequence[str]] = None,
                        suite: Optional[str] = None, include_path: Optional[Sequence[str]] = None,
                        limit: Optional[float] = None, num_fewshot: Optional[int] = 0, batch_size: int = 1,
                        device: Optional[str] = None, dtype: str = "auto", max_length: Optional[int] = None,
                        ruler_lengths: Sequence[int] = RULER_LENGTHS, model_args: Optional[Dict[str, Any]] = None,
                        gen_kwargs: Optional[str] = None, log_samples: bool = False, seed: int = 0,
                        mqar: Optional[Dict[str, Any]] = None, manager=None, name: Optional[str] = None) -> Record:
    """Evaluate one checkpoint with lm-eval on ``tasks`` (or a ``suite``'s tasks), and on the synthetic tasks of
    :data:`SYNTHETIC_TASKS` among ``tasks`` with the project's own scorers.

    Args:
        path: DLA checkpoint directory (a tokenizer inside, unless only synthetic tasks run).
        tasks: lm-eval task names (checked against the registry first) and/or ``mqar``; with ``suite`` both run.
        suite: a name of :data:`dla.eval.suite.SUITES`.
        include_path: directories of extra task YAMLs (local tasks).
        limit: documents per task (an int) or fraction; for smoke tests.
        num_fewshot: shots (the paper: 0); ``None`` keeps each task's default.
        batch_size, device, dtype, max_length: passed to :class:`~dla.eval.lm_eval_model.DLALM`.
        ruler_lengths: RULER ``max_seq_lengths``.
        model_args: further :class:`DLALM` arguments (``chunk_size``, ``truncation``, ``rolling`` ...).
        gen_kwargs: lm-eval ``--gen_kwargs`` string overriding the tasks' generation options (e.g.
            ``max_gen_toks=32``; reported in ``settings``).
        log_samples: keep lm-eval's per-sample records under ``"samples"``.
        mqar: settings of the ``mqar`` task over the run's own (see :func:`mqar_settings`).
        manager: a prebuilt lm-eval ``TaskManager`` indexing ``include_path`` (rebuilt with this checkpoint's
            tokenizer in its metadata when a RULER task runs).

    Returns:
        The record described in the module docstring.

    Raises:
        ValueError: not a DLA checkpoint, unknown task or suite, or an adapter argument out of range.
    """
    from dla.eval.checkpoint import check_dla_checkpoint

    check_dla_checkpoint(path)
    names = list(tasks or [])
    if suite is not None:
        names = suite_tasks(suite) + [t for t in names if t not in suite_tasks(suite)]
    if not names:
        raise ValueError("tasks: pass tasks or a suite")
    lm_names = [t for t in names if t not in SYNTHETIC_TASKS]
    settings: Dict[str, Any] = {"suite": suite, "tasks": names, "limit": limit, "num_fewshot": num_fewshot,
                                "gen_kwargs": gen_kwargs, "ruler_lengths": [int(n) for n in ruler_lengths],
                                "dtype": dtype, "seed": seed}
    results: Dict[str, Dict[str, float]] = {}
    out: Dict[str, Any] = {}
    if "mqar" in names:
        from dla.eval.checkpoint import load_model

        config, mqar_seed = mqar_settings(path, mqar)
        settings["mqar"] = {**dataclasses.asdict(config), "seed": mqar_seed}
        model = load_model(path, device or _default_device(), dtype)
        results["mqar"] = evaluate_mqar(model, config, mqar_seed, batch_size=max(batch_size, 1))
        del model
    if lm_names:
        out = _run_lm_eval(path, lm_names, settings, include_path=include_path, limit=limit,
                           num_fewshot=num_fewshot, batch_size=batch_size, device=device, dtype=dtype,
                           max_length=max_length, ruler_lengths=ruler_lengths, model_args=model_args,
                           gen_kwargs=gen_kwargs, log_samples=log_samples, seed=seed, manager=manager)
        results.update(summarize(out["results"]))
    record: Record = {"name": name or checkpoint_name(path), "checkpoint": str(Path(path).resolve()),
                      "tasks": results, "settings": settings, "versions": versions()}
    if log_samples:
        record["samples"] = out.get("samples", {})
    return record


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _run_lm_eval(path, names: List[str], settings: Dict[str, Any], *, include_path, limit, num_fewshot, batch_size,
                 device, dtype, max_length, ruler_lengths, model_args, gen_kwargs, log_samples, seed,
                 manager) -> Dict[str, Any]:
    """lm-eval's ``simple_evaluate`` of ``names`` on checkpoint ``path``; adds the adapter's settings to
    ``settings``."""
    import lm_eval

    from dla.eval.lm_eval_model import DLALM

    metadata = {"tokenizer": str(path), "pretrained": str(path), "max_seq_lengths": [int(n) for n in ruler_lengths]}
    if manager is None or any(t.startswith("niah_") or t == "ruler" for t in names):
        manager = task_manager(include_path, metadata=metadata)  # RULER sizes its prompts with this tokenizer
    check_task_names(names, manager)
    if any(t.startswith("niah_") for t in names) and max_length is None:
        max_length = max(int(n) for n in ruler_lengths)
    lm = DLALM(pretrained=str(path), batch_size=batch_size, device=device, dtype=dtype, max_length=max_length,
               **(model_args or {}))
    out = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit,
                                  task_manager=manager, gen_kwargs=gen_kwargs, log_samples=log_samples,
                                  random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                  fewshot_random_seed=seed)
    settings.update({"max_length": lm.max_length, "truncation": lm.truncation, "rolling": lm.rolling,
                     "truncated_requests": lm.truncated})
    return out


def _fmt(value: Optional[float], scale: float) -> str:
    if value is None:
        return "—"
    v = value * scale
    return f"{v:.1f}" if scale != 1 else f"{v:.2f}"


def _rows(records: List[Record], specs: Optional[Sequence[TaskSpec]]) -> List[tuple]:
    """``(label, task, metric, scale)`` rows: the suite's headline metrics, then everything else measured."""
    rows, seen = [], set()
    for spec in specs or ():
        metrics = spec.metrics if spec.group == "ruler" else spec.metrics[:1]
        for metric in metrics:
            label = f"{spec.label} @{metric}" if spec.group == "ruler" else f"{spec.label} ({metric})"
            rows.append((label, spec.task, metric, spec.scale))
            seen.add((spec.task, metric))
    extra = sorted({(t, m) for r in records for t, ms in r["tasks"].items() for m in ms} - seen)
    for task, metric in extra:
        scale = 1.0 if "perplexity" in metric or metric in ("bits_per_byte",) else 100.0
        rows.append((f"{task} ({metric})", task, metric, scale))
    return rows


def results_table(records: List[Record], suite: Optional[str] = None) -> str:
    """A markdown table: one row per task/metric, one column per checkpoint; x100 except perplexities.

    With ``suite``, its tasks come first under their paper labels, followed by the average of each group's
    headline accuracies (rows ``avg <group>``); metrics outside the suite follow.
    """
    if not records:
        raise ValueError("records: expected at least one result record")
    specs = get_suite(suite) if suite is not None else None
    names = [r["name"] for r in records]
    lines = ["| task | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, task, metric, scale in _rows(records, specs):
        cells = [_fmt(r["tasks"].get(task, {}).get(metric), scale) for r in records]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for group in dict.fromkeys(s.group for s in specs or ()):
        heads = [(s.task, m) for s in specs if s.group == group and s.scale != 1
                 for m in (s.metrics if group == "ruler" else s.metrics[:1])]
        cells = []
        for r in records:
            vals = [r["tasks"].get(t, {}).get(m) for t, m in heads]
            cells.append(_fmt(sum(vals) / len(vals), 100.0) if vals and None not in vals else "—")
        lines.append(f"| avg {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(records: List[Record], out_dir: Union[str, os.PathLike],
                  suite: Optional[str] = None) -> Dict[str, Path]:
    """Write ``results.json`` and ``results.md`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "results.md"}
    paths["json"].write_text(json.dumps(records, indent=2, default=str) + "\n")
    settings = records[0].get("settings", {})
    head = [f"# Evaluation results{f' — suite {suite}' if suite else ''}", "",
            "Checkpoints: " + ", ".join("`" + r["name"] + "`" for r in records) + ". "
            f"Shots: {settings.get('num_fewshot')}, limit: {settings.get('limit')}, "
            f"max_length: {settings.get('max_length')}, versions: "
            + ", ".join(f"{k} {v}" for k, v in records[0].get("versions", {}).items()) + ".", ""]
    paths["md"].write_text("\n".join(head) + results_table(records, suite))
    return paths


def load_results(paths: Sequence[Union[str, os.PathLike]]) -> List[Record]:
    """Records from ``results.json`` files (or directories holding one), in order; names made distinct."""
    records: List[Record] = []
    for p in paths:
        p = Path(p)
        file = p / "results.json" if p.is_dir() else p
        if not file.is_file():
            raise ValueError(f"results: no results.json at {str(p)!r}")
        data = json.loads(file.read_text())
        for r in data if isinstance(data, list) else [data]:
            if not isinstance(r, dict) or "tasks" not in r or "name" not in r:
                raise ValueError(f"results: {str(file)!r} is not a results.json written by dla eval")
            names = {x["name"] for x in records}
            if r["name"] in names:
                r = {**r, "name": checkpoint_name(r.get("checkpoint", r["name"]), names)}
            records.append(r)
    return records


def run_eval(checkpoints: Sequence[Union[str, os.PathLike]], out_dir: Union[str, os.PathLike], *,
             suite: Optional[str] = None, tasks: Optional[Sequence[str]] = None,
             include_path: Optional[Sequence[str]] = None, **kwargs) -> Dict[str, Path]:
    """Evaluate every checkpoint (same tasks, same settings) and write the side-by-side results.

    ``suite="local"`` writes the fixture tasks (:mod:`dla.eval.local_tasks`) sized with the first checkpoint's
    tokenizer into ``out_dir/local_tasks`` and runs them (a smoke test of the whole pipeline, no data needed).
    Other keyword arguments go to :func:`evaluate_checkpoint`.
    """
    if not checkpoints:
        raise ValueError("checkpoints: expected at least one checkpoint directory")
    from dla.eval.checkpoint import check_dla_checkpoint

    for c in checkpoints:
        check_dla_checkpoint(c)
    include = list(include_path or [])
    table_suite = suite
    if suite == "local":
        from dla.eval.checkpoint import load_tokenizer
        from dla.eval.local_tasks import FIXTURE_TASKS, write_fixture_tasks

        tok = load_tokenizer(checkpoints[0])
        local = Path(out_dir) / "local_tasks"
        write_fixture_tasks(local, tokenize=lambda s: tok.encode(s, add_special_tokens=False),
                            niah_lengths=kwargs.pop("niah_lengths", (256, 320)))
        include.append(str(local))
        tasks, suite, table_suite = list(FIXTURE_TASKS) + list(tasks or []), None, None
    elif suite is not None and suite not in SUITES:
        get_suite(suite)
    only_synthetic = suite is None and tasks and all(t in SYNTHETIC_TASKS for t in tasks)
    manager = None if only_synthetic else task_manager(include)
    records: List[Record] = []
    for c in checkpoints:
        name = checkpoint_name(c, [r["name"] for r in records])
        logger.info("dla eval: %s", c)
        records.append(evaluate_checkpoint(c, tasks=tasks, suite=suite, include_path=include, manager=manager,
                                           name=name, **kwargs))
    return write_results(records, out_dir, table_suite)


__all__ = ["summarize", "checkpoint_name", "evaluate_checkpoint", "evaluate_mqar", "mqar_settings", "results_table",
           "write_results", "load_results", "run_eval", "versions", "SYNTHETIC_TASKS", "MQAR_KEYS"]
