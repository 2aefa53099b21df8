"""From result JSONs to ``docs/results.md`` sections: tables (mean and spread over seeds at the best learning rate
of each cell, every learning rate listed), the segmentation of the DLA-type models, and accuracy-vs-pairs plots.

A study's section sits between ``<!-- study:<name> -->`` and ``<!-- /study:<name> -->`` in the markdown file;
``write_report`` replaces that section (or appends it) and leaves the rest of the file, the prose around the
tables, as it is.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev
from typing import Optional, Sequence, Union

from dla.eval.plots import pyplot, save_figure
from dla.study.sweep import format_lr

SEG_COLUMNS = (("boundary_rate_context", "bnd ctx"), ("boundary_rate_query", "bnd query"),
               ("boundary_rate_keys", "at keys"), ("boundary_rate_values", "at values"),
               ("boundary_rate_query_keys", "at query keys"), ("slots_end_context", "slots after ctx"),
               ("slots_end", "slots at end"), ("merges_context", "merges ctx"), ("merges_query", "merges query"),
               ("starts_at_keys", "starts at keys"))
"""Segmentation statistics shown in the report (key, column title); the JSONs hold them all."""


MEASURE_FILE = "measure.json"
"""The step-time table ``dla study run --measure`` keeps beside a study's results (not a result)."""


def load_results(results: Union[str, Path], study: str) -> list[dict]:
    """The result JSONs of ``study`` under ``results`` (``<results>/<study>/*.json`` but ``measure.json``), in
    sweep order.

    Raises:
        FileNotFoundError: no result JSON for that study.
        ValueError: a file that is not a result JSON (the message names it).
    """
    folder = Path(results) / study
    paths = sorted(p for p in folder.glob("*.json") if p.name != MEASURE_FILE) if folder.is_dir() else []
    if not paths:
        raise FileNotFoundError(f"results: no result JSON in {folder}; run `dla study run` first")
    out = []
    for path in paths:
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"results: {path} is not JSON ({e})") from e
        if not isinstance(record, dict) or record.get("study") != study or "cell" not in record:
            raise ValueError(f"results: {path} is not a result JSON of study {study!r}")
        out.append(record)
    return sorted(out, key=lambda r: (r.get("index", 0), r["cell"]))


def find_studies(results: Union[str, Path]) -> list[str]:
    """The folders under ``results`` that hold result JSONs of ``dla study run`` (others, such as benchmark or
    language-model results kept beside them, are passed over)."""
    out = []
    for folder in sorted(p for p in Path(results).iterdir() if p.is_dir()):
        for path in folder.glob("*.json"):
            if path.name == MEASURE_FILE:
                continue
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(record, dict) and record.get("study") == folder.name and "cell" in record:
                out.append(folder.name)
                break
    return out


@dataclass
class Group:
    """The runs of one ``(task, model, setting)``: per learning rate, its seeds' records."""

    task: str
    model: str
    setting: str
    by_lr: dict = field(default_factory=dict)  # lr -> [record]

    def lr_mean(self, lr: float) -> Optional[float]:
        """Mean accuracy over the seeds at ``lr``; a diverged seed counts as 0; None when none finished."""
        accs = [r["accuracy"] if r["status"] == "done" else 0.0 for r in self.by_lr[lr]]
        done = [r for r in self.by_lr[lr] if r["status"] == "done" and r["accuracy"] is not None]
        return mean(accs) if done else None

    @property
    def best_lr(self) -> Optional[float]:
        """The learning rate of the highest mean accuracy (the smaller lr on a tie); None if all diverged."""
        scored = [(m, -lr) for lr in self.by_lr if (m := self.lr_mean(lr)) is not None]
        return -max(scored)[1] if scored else None

    def best_records(self) -> list[dict]:
        lr = self.best_lr
        return [r for r in self.by_lr[lr] if r["status"] == "done"] if lr is not None else []


def group_results(records: Sequence[dict]) -> list[Group]:
    """Records grouped by ``(task, model, setting)``, in the order they first appear."""
    groups: dict[tuple, Group] = {}
    for r in records:
        g = groups.setdefault((r["task"], r["model"], r["setting"]), Group(r["task"], r["model"], r["setting"]))
        g.by_lr.setdefault(r["lr"], []).append(r)
    return list(groups.values())


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _spread(values: Sequence[float]) -> str:
    if len(values) < 2:
        return "-"
    return f"{100 * min(values):.1f}-{100 * max(values):.1f} (sd {100 * stdev(values):.1f})"


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def _short(values: Sequence) -> str:
    values = sorted(set(str(v) for v in values))
    return ", ".join(values)


def accuracy_table(groups: Sequence[Group]) -> str:
    """One row per ``(task, model, setting)``: accuracy (%) at the best lr, mean and spread over its seeds, every
    lr's mean, and the steps, tokens, seeds, GPU and commit the numbers come from."""
    header = ["task", "model", "setting", "params", "acc % (best lr)", "spread over seeds", "best lr",
              "acc % by lr", "steps", "tokens", "seeds", "GPU", "commit"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for g in groups:
        best = g.best_records()
        accs = [r["accuracy"] for r in best]
        by_lr = ", ".join(f"{format_lr(lr)}: " + (_pct(g.lr_mean(lr)) if g.lr_mean(lr) is not None else "diverged")
                          + (f" ({len(g.by_lr[lr])} seeds)" if len(g.by_lr[lr]) > 1 else "")
                          for lr in sorted(g.by_lr))
        every = [r for rs in g.by_lr.values() for r in rs]
        ran = [r for r in every if r["status"] == "done"] or every
        steps = _short(r.get("steps", "-") for r in (best or ran))
        tokens = _short(_count(r["tokens"]) for r in (best or ran) if "tokens" in r) or "-"
        seeds = ", ".join(str(r["seed"]) for r in best) or "-"
        params = _short(f"{r['params'] / 1e6:.3f}M" for r in ran if r.get("params")) or "-"
        lines.append("| " + " | ".join([
            g.task, g.model, g.setting, params, _pct(mean(accs)) if accs else "diverged", _spread(accs),
            format_lr(g.best_lr) if g.best_lr is not None else "-", by_lr, steps, tokens, seeds,
            _short(r["gpu"] for r in every), _short(r["commit"] for r in every)]) + " |")
    return "\n".join(lines)


def pairs_table(groups: Sequence[Group]) -> Optional[str]:
    """Accuracy (%) at the best lr by model (rows) and key-value pairs (columns), one block per ``(T, setting)``;
    None when no task varies the pairs."""
    cells: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for g in groups:
        best = g.best_records()
        if not best or best[0].get("num_kv_pairs") is None:
            continue
        key = (best[0]["seq_len"], g.setting)
        cells[key][g.model][best[0]["num_kv_pairs"]] = mean(r["accuracy"] for r in best)
    if not cells or all(len({n for row in models.values() for n in row}) < 2 for models in cells.values()):
        return None
    blocks = []
    for (T, setting), models in cells.items():
        pairs = sorted({n for row in models.values() for n in row})
        lines = [f"T = {T}, {setting}:", "", "| model | " + " | ".join(f"{n} pairs" for n in pairs) + " |",
                 "|" + " --- |" * (len(pairs) + 1)]
        for model, row in models.items():
            lines.append(f"| {model} | " + " | ".join(_pct(row.get(n)) for n in pairs) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def segmentation_table(groups: Sequence[Group]) -> Optional[str]:
    """Per recurrent layer of every DLA-type model (best lr, mean over seeds): boundary rates, slots, merges and
    where slots start; None when no record has segmentation statistics."""
    header = ["task", "model", "setting", "layer", "policy"] + [title for _, title in SEG_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    found = False
    for g in groups:
        segs = [r["segmentation"] for r in g.best_records() if r.get("segmentation")]
        if not segs:
            continue
        found = True
        for i, layer in enumerate(segs[0]):
            cells = [g.task, g.model, g.setting, re.sub(r"^model\.layers\.(\d+)\.mixer$", r"\1", layer["layer"]),
                     f"{layer['policy']} (C={layer['capacity']})"]
            for key, _ in SEG_COLUMNS:
                values = [s[i][key] for s in segs if s[i].get(key) is not None]
                cells.append("-" if not values else f"{mean(values):.3f}" if "rate" in key or key == "starts_at_keys"
                             else f"{mean(values):.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if found else None


def plot_accuracy_vs_pairs(groups: Sequence[Group], path: Union[str, Path], title: str) -> Optional[Path]:
    """Accuracy at the best lr against key-value pairs, one line per model (error bars: min and max over seeds),
    one panel per ``(T, setting)``. Returns ``path``, or None when matplotlib is missing or nothing has pairs."""
    try:
        plt = pyplot()
    except ImportError:
        return None
    panels: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for g in groups:
        best = g.best_records()
        if best and best[0].get("num_kv_pairs") is not None:
            accs = [100 * r["accuracy"] for r in best]
            panels[(best[0]["seq_len"], g.setting)][g.model].append((best[0]["num_kv_pairs"], mean(accs), min(accs),
                                                                      max(accs)))
    if not panels:
        return None
    models = list(dict.fromkeys(m for p in panels.values() for m in p))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.8), squeeze=False)
    for ax, ((T, setting), rows) in zip(axes[0], sorted(panels.items(), key=lambda kv: (kv[0][0], kv[0][1]))):
        for model, points in rows.items():
            points.sort()
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            err = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
            ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=2, color=f"C{models.index(model) % 10}",
                        label=model)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("key-value pairs")
        ax.set_ylabel("MQAR accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(f"T = {T}, {setting}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def plot_learning_curves(groups: Sequence[Group], path: Union[str, Path], title: str) -> Optional[Path]:
    """Held-out accuracy against training step at each model's best lr (the mean over its seeds), one line per
    model, one panel per ``(task, setting)``: whether the cells trained long enough. Returns ``path``, or None when
    matplotlib is missing or no record has a validation history."""
    try:
        plt = pyplot()
    except ImportError:
        return None
    panels: dict[tuple, dict[str, tuple]] = defaultdict(dict)
    for g in groups:
        curves = [dict(r["history"]) for r in g.best_records() if r.get("history")]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if steps:
            accs = [100 * mean(c[s] for c in curves) for s in steps]
            panels[(g.task, g.setting)][g.model] = (steps, accs, format_lr(g.best_lr), len(curves))
    if not panels:
        return None
    models = list(dict.fromkeys(m for p in panels.values() for m in p))
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax, ((task, setting), lines) in zip(axes.flat, panels.items()):
        for model, (steps, accs, lr, seeds) in lines.items():
            ax.plot(steps, accs, marker="o", ms=3, color=f"C{models.index(model) % 10}",
                    label=f"{model} ({lr}{f', {seeds} seeds' if seeds > 1 else ''})")
        ax.set_xlabel("step")
        ax.set_ylabel("MQAR accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(f"{task}, {setting}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to the directory ``start`` when inside it (markdown links), else as given."""
    path, start = Path(path).resolve(), Path(start).resolve()
    return path.relative_to(start).as_posix() if path.is_relative_to(start) else path.as_posix()


def study_section(study: str, records: Sequence[dict], plot: Optional[Path], docs_dir: Path,
                  results: Union[str, Path] = "docs/results", curves: Optional[Path] = None) -> str:
    """The markdown of one study (no markers); links are relative to ``docs_dir`` (the markdown file's folder)."""
    groups = group_results(records)
    done = [r for r in records if r["status"] == "done"]
    diverged = [r for r in records if r["status"] != "done"]
    gpus, commits = _short(r["gpu"] for r in records), _short(r["commit"] for r in records)
    versions = _short(f"torch {r['versions'].get('torch')}, triton {r['versions'].get('triton')}" for r in records)
    dates = sorted(r["date"] for r in records)
    parts = [f"### Study `{study}`", "",
             f"{len(records)} cells ({len(done)} finished, {len(diverged)} diverged) on {gpus}; commit {commits}; "
             f"{versions}; {dates[0][:10]} to {dates[-1][:10]}. Accuracy is MQAR accuracy on the held-out split "
             f"(percent of the queried values predicted), at the learning rate with the best mean over seeds; "
             f"every learning rate that ran is listed; the JSONs are in "
             f"[{_relative(Path(results) / study, docs_dir)}/]({_relative(Path(results) / study, docs_dir)}/).", "",
             accuracy_table(groups)]
    pairs = pairs_table(groups)
    if pairs:
        parts += ["", "Accuracy (%) by key-value pairs, best learning rate per cell:", "", pairs]
    if plot is not None:
        parts += ["", f"![accuracy against key-value pairs, {study}]({_relative(plot, docs_dir)})"]
    if curves is not None:
        parts += ["", "Held-out accuracy during training at each model's best learning rate:", "",
                  f"![learning curves, {study}]({_relative(curves, docs_dir)})"]
    seg = segmentation_table(groups)
    if seg:
        parts += ["", "Segmentation on held-out examples (per recurrent layer; rates are the fraction of tokens "
                      "opening a slot; slots and merges per sequence and head; `starts at keys`: of the slots live "
                      "after the context, the fraction starting at a key):", "", seg]
    return "\n".join(parts)


def report_sections(out: Union[str, Path]) -> list[str]:
    """The studies that have a section in the markdown file ``out`` (none when it does not exist)."""
    out = Path(out)
    return re.findall(r"<!-- study:([A-Za-z0-9][A-Za-z0-9._-]*) -->", out.read_text()) if out.is_file() else []


def write_report(results: Union[str, Path], studies: Sequence[str], out: Union[str, Path]) -> Path:
    """Write (or replace) the sections of ``studies`` in the markdown file ``out``, with a plot per study under
    ``<results>/<study>/accuracy_vs_pairs.png`` (when the study varies the pairs) and its learning curves under
    ``<results>/<study>/learning_curves.png``. A study without results whose section exists gets a section saying
    so.

    Returns:
        ``out``.

    Raises:
        FileNotFoundError / ValueError: from :func:`load_results`.
    """
    out = Path(out)
    text = out.read_text() if out.is_file() else "# Results\n"
    for study in studies:
        begin, end = f"<!-- study:{study} -->", f"<!-- /study:{study} -->"
        try:
            records = load_results(results, study)
        except FileNotFoundError:
            if begin not in text:
                raise
            # a section whose results moved away (a sweep whose protocol changed): it must not show them still
            folder = _relative(Path(results) / study, out.parent)
            body = f"### Study `{study}`\n\nNo cell of this study has finished yet (its result JSONs land in " \
                   f"[{folder}/]({folder}/))."
        else:
            groups = group_results(records)
            plot = plot_accuracy_vs_pairs(groups, Path(results) / study / "accuracy_vs_pairs.png",
                                          f"MQAR accuracy, study {study}")
            curves = plot_learning_curves(groups, Path(results) / study / "learning_curves.png",
                                          f"Learning curves, study {study}")
            body = study_section(study, records, plot, out.parent, results, curves)
        block = f"{begin}\n{body}\n{end}"
        if begin in text and end in text:
            text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


__all__ = ["load_results", "find_studies", "report_sections", "group_results", "Group", "accuracy_table", "pairs_table",
           "segmentation_table", "plot_accuracy_vs_pairs", "plot_learning_curves", "study_section", "write_report",
           "SEG_COLUMNS", "MEASURE_FILE"]
