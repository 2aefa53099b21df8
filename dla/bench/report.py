"""Benchmark JSON -> markdown table and PNG plot (``dla bench report``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple


def _fmt(x: Optional[float], digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def length_label(T: int) -> str:
    """``T=16K`` for whole multiples of 1024, else ``T=300``: a table column's name."""
    return f"T={T // 1024}K" if T >= 1024 and T % 1024 == 0 else f"T={T}"


def _missing(row: Optional[dict]) -> str:
    """The cell of a row without times: not run, needs CUDA, out of memory, or another error."""
    if row is None or not row["note"]:
        return "—"
    note = row["note"].lower()
    return "needs CUDA" if "needs cuda" in note else "OOM" if "out of memory" in note else "err"


_SAME_ENV = ("gpu", "torch", "triton", "fla", "dtype", "tokens_per_call", "dla_precision")
"""What every run merged into one table must share."""
BASELINE = "fla_chunk_log_linear_attn"
"""The op the ratio table divides by (the multi-state peer issue #4's targets are set against)."""


def merge_results(results: Sequence[dict], names: Sequence[str]) -> dict:
    """Several ``dla bench ops`` results (a sweep run in pieces) as one: a later run's row replaces an earlier run's
    row of the same (shape, T, op); each row records its run (``run``, an index into ``meta["runs"]``, which
    names each file, its date and command). Runs on another GPU or other versions are refused, naming the key."""
    if not results or len(results) != len(names):
        raise ValueError(f"results: expected one or more, with a name each; got {len(results)} and {len(names)}")
    first = results[0]["meta"]
    for name, res in zip(names[1:], results[1:]):
        for key in _SAME_ENV:
            if res["meta"].get(key) != first.get(key):
                raise ValueError(f"{name}: its {key} {res['meta'].get(key)!r} differs from {names[0]}'s "
                                 f"{first.get(key)!r}; only runs on the same GPU and versions merge into one table")
    rows: Dict[tuple, dict] = {}
    for i, res in enumerate(results):
        for row in res["rows"]:
            key = (row["shape"], row["T"], row["op"])
            rows.pop(key, None)  # re-inserted: the newest measurement, in its run's order
            rows[key] = {**row, "run": i}
    shapes = list(dict.fromkeys(k[0] for k in rows))
    order = sorted(rows, key=lambda k: (shapes.index(k[0]), k[1]))  # stable: each length keeps its ops' order
    meta = {key: first.get(key) for key in _SAME_ENV}
    meta["python"] = first.get("python")
    meta["date"] = " .. ".join(sorted({r["meta"]["date"] for r in results}))
    meta["runs"] = [{"file": str(name), "date": res["meta"]["date"], "command": res["meta"].get("command", "")}
                    for name, res in zip(names, results)]
    return {"meta": meta, "rows": [rows[k] for k in order]}


def _runs_line(sub: List[dict], lengths: List[int]) -> str:
    """Which run measured each length's rows (merged results only)."""
    parts = []
    for T in lengths:
        runs = sorted({r["run"] + 1 for r in sub if r["T"] == T})
        parts.append(f"{length_label(T)}: run{'s' if len(runs) > 1 else ''} {', '.join(map(str, runs))}")
    return "Rows by run (`meta.runs`): " + "; ".join(parts)


def ops_markdown(result: dict) -> str:
    """One table per shape: rows = ops, columns = lengths, cells = fwd+bwd ms (fwd ms); then each op's fwd+bwd time
    over :data:`BASELINE`'s at the same length, and the segmentation statistics of the DLA rows."""
    meta, rows = result["meta"], result["rows"]
    lines = [f"GPU: {meta['gpu']} · torch {meta['torch']} · Triton {meta['triton']} · fla {meta.get('fla')} · "
             f"{meta['dtype']} · DLA products {meta.get('dla_precision', 'auto')} · "
             f"{meta['tokens_per_call']:,} tokens per call · {meta['date']}", ""]
    if meta.get("runs"):
        lines += [f"Merged from {len(meta['runs'])} runs: " + "; ".join(
            f"{i + 1}. `{run['file']}` ({run['date']})" for i, run in enumerate(meta["runs"])), ""]
    for shape in sorted({r["shape"] for r in rows}):
        sub = [r for r in rows if r["shape"] == shape]
        lengths = sorted({r["T"] for r in sub})
        ops = list(dict.fromkeys(r["op"] for r in sub))
        lines += [f"**{shape}** — fwd+bwd ms (fwd ms); `—`: not run (too slow at a shorter length, or refused)", "",
                  "| op | " + " | ".join(length_label(T) for T in lengths) + " |",
                  "|---|" + "---|" * len(lengths)]
        for op in ops:
            cells = []
            for T in lengths:
                r = next((x for x in sub if x["op"] == op and x["T"] == T), None)
                if r is None or (r["fwd_ms"] is None and r["fwdbwd_ms"] is None):
                    cells.append(_missing(r))
                else:
                    cells.append(f"{_fmt(r['fwdbwd_ms'])} ({_fmt(r['fwd_ms'])})")
            lines.append(f"| {op} | " + " | ".join(cells) + " |")
        if "run" in sub[0]:
            lines += ["", _runs_line(sub, lengths)]
        base = {r["T"]: r["fwdbwd_ms"] for r in sub if r["op"] == BASELINE and r["fwdbwd_ms"]}
        if base:
            lines += ["", f"fwd+bwd time over `{BASELINE}`'s at the same length (below 1: faster)", "",
                      "| op | " + " | ".join(length_label(T) for T in lengths) + " |",
                      "|---|" + "---|" * len(lengths)]
            for op in ops:
                if op == BASELINE:
                    continue
                cells = []
                for T in lengths:
                    r = next((x for x in sub if x["op"] == op and x["T"] == T), None)
                    ok = r is not None and r["fwdbwd_ms"] is not None and T in base
                    cells.append(f"{r['fwdbwd_ms'] / base[T]:.2f}" if ok else "—")
                lines.append(f"| {op} | " + " | ".join(cells) + " |")
        stats = [r for r in sub if r["stats"]]
        if stats:
            lines += ["", f"DLA segmentation on the benchmark's inputs ({shape}): per head, slots opened (and their "
                      "share of the tokens) / merges / distinct key chunks of live boundaries per 64-token query "
                      "chunk", "",
                      "| op | T | slots opened | merges | key chunks / query chunk |", "|---|---|---|---|---|"]
            for r in stats:
                s = r["stats"]
                share = s["slots_opened_per_head"] / r["T"]
                lines.append(f"| {r['op']} | {r['T']} | {s['slots_opened_per_head']:.0f} ({100 * share:.1f}%) | "
                             f"{s['merges_per_head']:.0f} | {s['key_chunks_per_query_chunk']:.1f} |")
        notes = sorted({r["note"] for r in sub if r["note"]})
        if notes:
            lines += [""] + [f"- {n}" for n in notes]
        lines.append("")
    return "\n".join(lines)


def style_loglog(ax, xlabel: str, ylabel: str) -> None:
    """Log-log axes (powers of two along x) with labels and a light grid: every benchmark plot's frame."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders created) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def loglog_plot(series: Dict[str, List[Tuple[float, float]]], path: Path, xlabel: str, ylabel: str,
                title: str, dashed: Sequence[str] = ()) -> Path:
    """One log-log line per named series of ``(x, y)`` points (empty series are left out); the series named in
    ``dashed`` are drawn dashed (the peers, beside our solid lines). More than ten series take the 20-colour map,
    and the legend goes outside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live = {name: pts for name, pts in series.items() if pts}
    many = len(live) > 10
    fig, ax = plt.subplots(figsize=(9.5, 4.8) if many else (7, 4.5))
    colors = plt.get_cmap("tab20").colors if many else plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, pts) in enumerate(live.items()):
        ax.plot(*zip(*sorted(pts)), marker="o", label=name, color=colors[i % len(colors)],
                linestyle="--" if name in dashed else "-")
    style_loglog(ax, xlabel, ylabel)
    ax.set_title(title)
    if many:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    elif live:
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def ops_plot(result: dict, path: Path, shape: str = "h16", ops: Optional[List[str]] = None) -> Path:
    """fwd+bwd ms against T, log-log, one line per op (the peers dashed)."""
    rows = [r for r in result["rows"] if r["shape"] == shape and r["fwdbwd_ms"] is not None]
    names = ops or list(dict.fromkeys(r["op"] for r in rows))
    series = {op: [(r["T"], r["fwdbwd_ms"]) for r in rows if r["op"] == op] for op in names}
    peers = [op for op in names if op.startswith(("fla_", "sdpa"))]
    return loglog_plot(series, path, "sequence length T (tokens per call fixed)", "forward + backward, ms",
                       f"{result['meta']['gpu']}, {shape}", dashed=peers)


def headline_ops(result: dict, shape: str) -> List[str]:
    """The ops of the short plot: DLA at ``tau = 0.6`` and the largest capacity measured, per backbone, then the
    peers (fla's log-linear, SDPA, fla's GDN and simple GLA), those measured at ``shape``."""
    names = list(dict.fromkeys(r["op"] for r in result["rows"] if r["shape"] == shape))
    ours = []
    for backbone in ("mamba2", "gdn"):
        caps = [int(n.split("_C")[1].split("_")[0]) for n in names
                if n.startswith(f"dla_{backbone}_C") and n.endswith("_tau0.6")]
        if caps:
            ours.append(f"dla_{backbone}_C{max(caps)}_tau0.6")
    peers = ["fla_chunk_log_linear_attn", "sdpa_flash", "fla_chunk_gated_delta_rule", "fla_chunk_simple_gla"]
    return ours + [n for n in peers if n in names]


def plot_paths(result: dict, png_path: Path) -> Dict[str, Path]:
    """Where :func:`write_report` puts each shape's plot: ``png_path`` for a single shape, else
    ``<stem>_<shape>.png`` beside it (the ``:`` of a ``captured:<name>`` shape as ``_``); the short plot of
    :func:`headline_ops` adds ``_headline`` to the stem."""
    shapes = list(dict.fromkeys(r["shape"] for r in result["rows"]))
    if len(shapes) == 1:
        return {shapes[0]: Path(png_path)}
    return {s: Path(png_path).with_name(f"{Path(png_path).stem}_{s.replace(':', '_')}.png") for s in shapes}


def write_report(json_path: Path, md_path: Path, png_path: Path) -> Dict[str, Path]:
    """The markdown tables of a ``dla bench ops`` JSON at ``md_path``, one plot of every op per shape
    (:func:`plot_paths`) and a short one of :func:`headline_ops` beside it; returns the full plots by shape."""
    result = json.loads(Path(json_path).read_text())
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(ops_markdown(result))
    paths = plot_paths(result, png_path)
    for shape, path in paths.items():
        ops_plot(result, path, shape=shape)
        short = headline_ops(result, shape)
        if short:
            ops_plot(result, path.with_name(f"{path.stem}_headline.png"), shape=shape, ops=short)
    return paths
