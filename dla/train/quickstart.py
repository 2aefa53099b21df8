"""Quickstart: train tiny DLA models and their baselines on CPU, evaluate them, print a comparison, write plots.

For every backbone (``mamba2``, ``gdn``) three memory policies of the same model, so that the rows differ in the
policy only: DLA (``dla``), the plain backbone (``single``) and Log-Linear (``fenwick``). Each is trained on

- ``lm``: the Python standard library corpus (recipe ``configs/tiny.yaml``), scored by validation perplexity;
- ``mqar``: multi-query associative recall (recipe ``configs/tiny-mqar.yaml``), scored by recall accuracy on
  held-out examples.

Outputs under ``out_dir``: one run directory per (task, model) (checkpoint, ``log.jsonl``, final model),
``loss_<task>.png`` (all models' curves), ``comparison.png`` (validation perplexity and MQAR accuracy bars),
``results.md`` (the table) and ``quickstart.json`` (every number).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from dla.train.logs import plot_loss_curves, read_log

BACKBONES = {"mamba2": "Mamba-2", "gdn": "GDN"}
"""Backbone -> display name."""

POLICIES = (("dla", "DLA-{}"), ("single", "{}"), ("fenwick", "Log-Linear {}"))
"""``(model.policy, display name)`` of the compared variants, DLA first."""

TASK_RECIPES = {"lm": "tiny", "mqar": "tiny-mqar"}
"""Task -> recipe it trains with."""


def _variants(backbones: Sequence[str]) -> list[tuple[str, str, str]]:
    out = []
    for backbone in backbones:
        if backbone not in BACKBONES:
            raise ValueError(f"backbones: unknown {backbone!r}; allowed: {', '.join(BACKBONES)}")
        for policy, label in POLICIES:
            slug = backbone if policy == "single" else f"{'loglinear' if policy == 'fenwick' else policy}-{backbone}"
            out.append((slug, label.format(BACKBONES[backbone]), policy))
    return out


def _scaled(base, steps: int) -> list[str]:
    """Overrides that stretch a recipe to ``steps``: warmup, validation and checkpoint intervals in proportion."""
    ratio = steps / base.train.steps(base.data.seq_len)

    def every(n: int) -> int:
        return 0 if not n or round(n * ratio) >= steps else max(1, round(n * ratio))

    return [f"train.max_steps={steps}", "train.max_tokens=null",
            f"train.warmup_steps={min(steps, round(base.train.warmup_steps * ratio))}",
            f"train.eval_every={every(base.train.eval_every)}", f"checkpoint.every={every(base.checkpoint.every)}"]


def format_table(rows: Sequence[dict], tasks: Sequence[str]) -> str:
    """The markdown comparison table of ``run_quickstart``'s rows."""
    header = ["model", "params"]
    if "lm" in tasks:
        header += ["LM train s", "LM tok/s", "val ppl"]
    if "mqar" in tasks:
        header += ["MQAR train s", "MQAR tok/s", "MQAR acc"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], f"{row['params'] / 1e3:,.0f}K"]
        for task in ("lm", "mqar"):
            if task not in tasks:
                continue
            r = row.get(task, {})
            score = f"{r['val_ppl']:.1f}" if task == "lm" and "val_ppl" in r else \
                f"{r['val_acc']:.3f}" if task == "mqar" and "val_acc" in r else "-"
            cells += [f"{r.get('train_time_s', 0):.1f}", f"{r.get('tokens_per_s', 0):,.0f}", score]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot_comparison(rows: Sequence[dict], tasks: Sequence[str], path: Path) -> Optional[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [(t, key, label) for t, key, label in (("lm", "val_ppl", "validation perplexity (lower is better)"),
                                                     ("mqar", "val_acc", "MQAR accuracy (higher is better)"))
              if t in tasks]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    names = [r["model"] for r in rows]
    for ax, (task, key, label) in zip(axes[0], panels):
        values = [r.get(task, {}).get(key, float("nan")) for r in rows]
        ax.bar(range(len(rows)), values, color=[f"C{i % 10}" for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_quickstart(out_dir: Union[str, Path] = "runs/quickstart", *, backbones: Sequence[str] = ("mamba2",),
                   tasks: Sequence[str] = ("lm", "mqar"), scale: float = 1.0, cache_dir: Optional[str] = "runs/cache",
                   progress: bool = True, echo: Callable[[str], None] = print) -> dict:
    """Train and compare the tiny models (see the module docstring); prints the table through ``echo``.

    Args:
        out_dir: where everything is written; the run directories under it are replaced.
        backbones: ``mamba2`` and/or ``gdn``; three models each.
        tasks: ``lm`` and/or ``mqar``.
        scale: multiplies every run's training steps (2.0 = twice as long, closer to convergence).
        cache_dir: tokenizer / token-stream cache shared with other runs; None = none.
        progress: progress bar per run.
        echo: where the one-line-per-run status and the table go.

    Returns:
        ``{"rows": [...], "table": str, "wall_time_s": float, "settings": {...}}`` (also in ``quickstart.json``).

    Raises:
        ValueError: an unknown backbone or task, or ``scale <= 0``.
    """
    from dla.train.config import load_config
    from dla.train.loop import train

    unknown = [t for t in tasks if t not in TASK_RECIPES]
    if unknown or not tasks:
        raise ValueError(f"tasks: expected some of {', '.join(TASK_RECIPES)}, got {list(tasks)!r}")
    if not scale > 0:
        raise ValueError(f"scale: expected a number > 0, got {scale!r}")
    variants = _variants(backbones)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = {slug: {"model": label, "policy": policy, "slug": slug} for slug, label, policy in variants}
    histories: dict[str, dict[str, list]] = {task: {} for task in tasks}
    for task in tasks:
        base = load_config(TASK_RECIPES[task])
        steps = max(1, round(base.train.steps(base.data.seq_len) * scale))
        for slug, label, policy in variants:
            run_dir = out / task / slug
            shutil.rmtree(run_dir, ignore_errors=True)
            overrides = [f"name={task}-{slug}", f"out_dir={run_dir}", f"model.mixer={slug.rsplit('-', 1)[-1]}",
                         f"model.policy={policy}", f"log.progress={str(progress).lower()}", "log.plot=false",
                         "log.tensorboard=false", f"data.cache_dir={cache_dir or 'null'}",
                         *_scaled(base, steps)]
            config = load_config(TASK_RECIPES[task], overrides)
            result = train(config)
            metrics = {"train_time_s": result.train_time_s, "tokens_per_s": result.tokens_per_s,
                       "tokens": result.tokens, "steps": result.steps, "params": result.num_params,
                       "final_loss": result.final_loss, **result.metrics}
            rows[slug][task] = metrics
            rows[slug].setdefault("params", result.num_params)
            histories[task][label] = read_log(run_dir / "log.jsonl")
            score = f"val ppl {metrics['val_ppl']:.1f}" if task == "lm" else f"MQAR acc {metrics['val_acc']:.3f}"
            echo(f"[{task}] {label}: {result.steps} steps, {result.train_time_s:.1f} s, "
                 f"{result.tokens_per_s:,.0f} tok/s, {score}")
    for task in tasks:
        plot_loss_curves(histories[task], out / f"loss_{task}.png", title=f"quickstart: {task} loss")
    table_rows = list(rows.values())
    _plot_comparison(table_rows, tasks, out / "comparison.png")
    table = format_table(table_rows, tasks)
    wall = time.perf_counter() - start
    (out / "results.md").write_text(table + "\n")
    report = {"rows": table_rows, "table": table, "wall_time_s": wall,
              "settings": {"backbones": list(backbones), "tasks": list(tasks), "scale": scale,
                           "recipes": {t: TASK_RECIPES[t] for t in tasks}}}
    (out / "quickstart.json").write_text(json.dumps(report, indent=2) + "\n")
    echo("")
    echo(table)
    echo(f"\nwall time {wall:.0f} s; plots, table and JSON in {out}/")
    return report


__all__ = ["run_quickstart", "format_table", "BACKBONES", "POLICIES", "TASK_RECIPES"]
