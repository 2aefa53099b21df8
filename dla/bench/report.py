"""Benchmark JSON -> markdown table and PNG plot (``dla bench report``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple


def _fmt(x: Optional[float], digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def ops_markdown(result: dict) -> str:
    """One table per shape: rows = ops, columns = lengths, cells = fwd+bwd ms (fwd ms)."""
    meta, rows = result["meta"], result["rows"]
    lines = [f"GPU: {meta['gpu']} · torch {meta['torch']} · Triton {meta['triton']} · fla {meta.get('fla')} · "
             f"{meta['dtype']} · DLA products {meta.get('dla_precision', 'auto')} · "
             f"{meta['tokens_per_call']:,} tokens per call · {meta['date']}", ""]
    for shape in sorted({r["shape"] for r in rows}):
        sub = [r for r in rows if r["shape"] == shape]
        lengths = sorted({r["T"] for r in sub})
        ops = list(dict.fromkeys(r["op"] for r in sub))
        lines += [f"**{shape}** — fwd+bwd ms (fwd ms); `—`: not run (too slow at a shorter length, or refused)", "",
                  "| op | " + " | ".join(f"T={T // 1024}K" for T in lengths) + " |",
                  "|---|" + "---|" * len(lengths)]
        for op in ops:
            cells = []
            for T in lengths:
                r = next((x for x in sub if x["op"] == op and x["T"] == T), None)
                if r is None or (r["fwd_ms"] is None and r["fwdbwd_ms"] is None):
                    cells.append("—" if r is None or not r["note"] else "err")
                else:
                    cells.append(f"{_fmt(r['fwdbwd_ms'])} ({_fmt(r['fwd_ms'])})")
            lines.append(f"| {op} | " + " | ".join(cells) + " |")
        stats = [r for r in sub if r["stats"]]
        if stats:
            lines += ["", f"DLA segmentation on the benchmark's inputs ({shape}): per head, slots opened / merges / "
                      "distinct key chunks of live boundaries per 64-token query chunk", "",
                      "| op | T | slots opened | merges | key chunks / query chunk |", "|---|---|---|---|---|"]
            for r in stats:
                s = r["stats"]
                lines.append(f"| {r['op']} | {r['T']} | {s['slots_opened_per_head']:.0f} | "
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
    else:
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


def write_report(json_path: Path, md_path: Path, png_path: Path) -> None:
    result = json.loads(Path(json_path).read_text())
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(ops_markdown(result))
    ops_plot(result, png_path)
