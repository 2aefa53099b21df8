"""Studies: sweeps of ``dla train`` runs (task x model x setting x learning rate x seed) that run in pieces, and the
report they become.

- ``dla.study.sweep``: the sweep file (a catalog of tasks, models and settings, and grids of cells) -> ``Sweep``.
- ``dla.study.runner``: ``run_sweep`` (skip finished cells, resume interrupted ones, stop at a time limit, one
  result JSON per cell), ``measure_sweep`` (step times per model shape, to size a sweep).
- ``dla.study.segstats``: the segmentation statistics of a trained model on held-out MQAR examples.
- ``dla.study.report``: tables and plots from the result JSONs, as sections of ``docs/results.md``.
- ``dla.study.cli``: ``dla study run|report``.

The sweeps of the recall study are under ``configs/study/``; docs/results.md holds what they gave.

Example:
    >>> from dla.study import load_sweep, run_sweep
    >>> sweep = load_sweep("configs/study/calibration.yaml")
    >>> run_sweep(sweep, root="runs/study", results="docs/results", max_minutes=10)
"""

from dla.study.report import load_results, write_report
from dla.study.runner import cell_status, measure_sweep, run_sweep
from dla.study.sweep import Cell, Sweep, load_sweep

__all__ = ["load_sweep", "Sweep", "Cell", "run_sweep", "measure_sweep", "cell_status", "load_results", "write_report"]
