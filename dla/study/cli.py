"""The ``dla study`` subcommands: ``run`` (train a sweep's cells, in pieces; ``--measure``: time them; ``--list``:
their status) and ``report`` (result JSONs -> docs/results.md sections and plots)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from dla.study.runner import cell_status, measure_path, measure_sweep, merge_measures, run_sweep
    from dla.study.sweep import load_sweep

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        sweep = load_sweep(args.sweep)
        if args.list:
            cells = sweep.cells if not args.only else sweep.select(args.only)
            for cell in cells:
                print(f"{cell.id}  {cell_status(cell, args.root, args.results)}")
            return 0
        if args.measure:
            report = measure_sweep(sweep, args.root, only=args.only, steps=args.measure_steps,
                                   warmup=args.measure_warmup, max_minutes=args.max_minutes, progress=args.progress)
            path = measure_path(args.results, sweep.study)
            path.parent.mkdir(parents=True, exist_ok=True)
            report = merge_measures(json.loads(path.read_text()) if path.is_file() else None, report)
            path.write_text(json.dumps(report, indent=1) + "\n")
            missing = f"; {len(report['not_measured'])} shapes not measured in time" if report["not_measured"] else ""
            print(f"{sweep.study}: about {report['total_minutes']:.1f} minutes for the measured cells on "
                  f"{report['gpu']}{missing} (table in {path})")
            return 0
        summary = run_sweep(sweep, args.root, args.results, only=args.only, max_minutes=args.max_minutes,
                            reserve_s=args.reserve_s, progress=args.progress, shard=_shard(args.shard),
                            allow_pause=args.allow_pause)
    except (ValueError, FileNotFoundError) as e:
        print(f"dla study: error: {e}", file=sys.stderr)
        return 2
    left = len(summary["left"]) + len(summary["failed"])
    print(f"{sweep.study}: {len(summary['done'])} cells finished, {len(summary['diverged'])} diverged, "
          f"{len(summary['failed'])} failed, {len(summary['skipped'])} already done, {left} left"
          + (" (rerun to continue)" if left else ""))
    return 1 if summary["failed"] else 0


def _shard(text):
    """``--shard I/N`` as ``(I, N)`` (None when not given)."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard: expected I/N with integers 0 <= I < N, got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard: expected I/N with 0 <= I < N, got {text!r}")
    return i, n


def _report(args: argparse.Namespace) -> int:
    from dla.study.report import find_studies, report_sections, write_report

    results = Path(args.results)
    found = find_studies(results) if results.is_dir() else []
    # by default every study with results, and every section of the page (one whose results moved away says so)
    studies = list(args.studies) or found + [s for s in report_sections(args.out) if s not in found]
    if not studies:
        print(f"dla study report: error: no study under {results}", file=sys.stderr)
        return 2
    try:
        out = write_report(results, studies, args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"dla study report: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote the sections of {', '.join(studies)} to {out}")
    return 0


def add_study_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``study run SWEEP [--root DIR] [--results DIR] [--max-minutes M] [--only PATTERN ...] [--measure]
    [--list]`` and ``study report [STUDY ...] [--results DIR] [--out FILE]``."""
    p = subparsers.add_parser("study", help="sweeps of training runs (configs/study/*.yaml) and their report",
                              description="Run a sweep of dla train cells (task x model x setting x lr x seed) in "
                                          "pieces, and turn the result JSONs into docs/results.md.")
    sub = p.add_subparsers(dest="study", metavar="ACTION", required=True)
    r = sub.add_parser("run", help="train the sweep's cells: finished ones are skipped, interrupted ones resume",
                       description="Train every pending cell of SWEEP in order. A finished cell (result JSON "
                                   "present) is skipped; an interrupted one resumes from its checkpoint; with "
                                   "--max-minutes the run stops between steps (with a checkpoint) or between cells, "
                                   "and a rerun continues.")
    r.add_argument("sweep", help="sweep file, e.g. configs/study/calibration.yaml")
    r.add_argument("--root", default="runs/study", help="run directories: ROOT/<study>/<cell> (default runs/study)")
    r.add_argument("--results", default="docs/results",
                   help="result JSONs: RESULTS/<study>/<cell>.json (default docs/results)")
    r.add_argument("--max-minutes", type=float, default=None, help="stop after this many minutes (default: none)")
    r.add_argument("--reserve-s", type=float, default=20.0,
                   help="seconds of --max-minutes kept for the last cell's validation and result (default 20)")
    r.add_argument("--only", nargs="+", default=(), metavar="PATTERN",
                   help="run only cells whose id matches one of these shell patterns (e.g. '*__dla-mamba2__*')")
    r.add_argument("--measure", action="store_true",
                   help="instead of training: time a few steps of every model shape and estimate the sweep's "
                        "minutes (RESULTS/<study>/measure.json, which later pieces plan with)")
    r.add_argument("--measure-steps", type=int, default=20, help="timed steps per shape (default 20)")
    r.add_argument("--measure-warmup", type=int, default=5, help="untimed steps before them (default 5)")
    r.add_argument("--shard", default=None, metavar="I/N",
                   help="train only every N-th cell without a result, from the I-th (0-based): N processes started "
                        "together with shards 0/N .. N-1/N share one GPU and never train the same cell")
    r.add_argument("--allow-pause", action="store_true",
                   help="start a cell even when it cannot finish before --max-minutes: it pauses with a checkpoint "
                        "and a rerun on the same machine resumes it (pieces shorter than a cell)")
    r.add_argument("--list", action="store_true", help="list the cells and their status, then exit")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar per cell")
    r.set_defaults(fn=_run)
    s = sub.add_parser("report", help="tables and plots of result JSONs as sections of docs/results.md",
                       description="Write (or replace) one section per study in the markdown file: accuracy tables "
                                   "(mean and spread over seeds at the best lr, every lr listed), accuracy by pairs, "
                                   "the DLA models' segmentation, and a plot per study.")
    s.add_argument("studies", nargs="*", help="studies to report (default: every folder of result JSONs under "
                   "--results, and every study section already in --out)")
    s.add_argument("--results", default="docs/results", help="where the result JSONs are (default docs/results)")
    s.add_argument("--out", default="docs/results.md", help="the markdown file (default docs/results.md)")
    s.set_defaults(fn=_report)
    return p


__all__ = ["add_study_parser"]
