"""Sweep definitions: a catalog of tasks, models and settings, and the grids of cells to train from them.

A sweep file (YAML, JSON or TOML; ``base:`` merges another file underneath, as recipes do)::

    study: capacity                    # results go to <results>/capacity/<cell>.json
    recipe: ../mqar-study.yaml         # the dla train recipe every cell starts from (path or recipe name)
    overrides: {train: {max_steps: 4000}}   # recipe-shaped mapping applied to every cell
    segmentation_examples: 128         # held-out examples the segmentation statistics are taken on
    tasks:                             # catalog: name -> recipe-shaped overrides
      T256-kv16: {data: {seq_len: 256, mqar: {num_kv_pairs: 16}}}
    models:
      mamba2: {model: {mixer: mamba2, policy: single}}
      attention:
        model: {mixer: attention}
        per_setting: {d128: {model: {intermediate_size: 416}}}   # applied after that setting
    settings:
      d64: {model: {hidden_size: 64}}
      boundary-ste: {model: {boundary_grad: ste}, enabled: false}   # listed, never run, not validated
    lrs: [5.0e-4, 1.0e-3]              # default learning rates of the grids
    seeds: [0]                         # default seeds of the grids
    grids:                             # each: lists of catalog names (omitted: all), lrs, seeds
      - {tasks: [T256-kv16], settings: [d64]}

A cell is one ``(task, model, setting, lr, seed)``; its config is the recipe with ``overrides``, the task's, the
model's, the setting's (a setting may change what a model sets, e.g. its policy in an ablation), the model's
``per_setting`` entry for that setting, then ``train.lr`` and ``train.seed`` applied in that order. Its id is
``<task>__<model>__<setting>__lr<lr>__s<seed>``. A cell listed by several grids is one cell. Every enabled cell's
config is built and validated when the sweep is loaded, so a typo fails before anything trains.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from dla.train.config import RunConfig, config_from_dict, merge, read_file
from dla.train.recipes import resolve_recipe

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
"""Names of studies and catalog entries: they become file and directory names."""

AXES = ("tasks", "models", "settings")
"""The catalogs a grid picks from."""

RESERVED = ("enabled", "per_setting")
"""Keys of a catalog entry that are not recipe overrides."""

_TOP_KEYS = ("study", "recipe", "overrides", "segmentation_examples", "tasks", "models", "settings", "lrs", "seeds",
             "grids", "description")
_GRID_KEYS = ("tasks", "models", "settings", "lrs", "seeds")


@dataclass(frozen=True)
class Entry:
    """One catalog entry: its recipe overrides, whether it runs, and (models only) per-setting overrides."""

    name: str
    overrides: dict
    enabled: bool = True
    per_setting: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    """One training run of a sweep."""

    study: str
    task: str
    model: str
    setting: str
    lr: float
    seed: int
    data: dict  # the cell's whole recipe as plain data (what config_from_dict reads)
    enabled: bool = True  # False: an entry it uses is disabled; never run, config not validated

    @property
    def id(self) -> str:
        """``<task>__<model>__<setting>__lr<lr>__s<seed>``."""
        return f"{self.task}__{self.model}__{self.setting}__lr{format_lr(self.lr)}__s{self.seed}"

    @property
    def group(self) -> tuple[str, str, str]:
        """``(task, model, setting)``: the cells that differ only in lr and seed."""
        return self.task, self.model, self.setting

    def config(self, out_dir: Union[str, Path], extra: Optional[Mapping] = None) -> RunConfig:
        """The validated ``RunConfig`` of this cell, writing to ``out_dir`` (named after the cell); ``extra`` is a
        recipe-shaped mapping merged last (e.g. the runner's time limit)."""
        data = merge(self.data, {"name": self.id, "out_dir": str(out_dir)})
        return config_from_dict(merge(data, extra or {}))


@dataclass(frozen=True)
class Sweep:
    """A loaded sweep file: its cells in a stable order (grid order, then task, model, setting, lr, seed as
    listed)."""

    study: str
    path: Path
    cells: tuple[Cell, ...]
    segmentation_examples: int = 128
    description: str = ""

    @property
    def enabled_cells(self) -> list[Cell]:
        return [c for c in self.cells if c.enabled]

    def select(self, patterns: Sequence[str] = ()) -> list[Cell]:
        """The enabled cells whose id matches one of the shell patterns (all enabled cells when none given)."""
        import fnmatch

        cells = self.enabled_cells
        if not patterns:
            return cells
        return [c for c in cells if any(fnmatch.fnmatchcase(c.id, p) for p in patterns)]


def format_lr(lr: float) -> str:
    """A learning rate as it appears in cell ids: ``1e-3``, ``5e-4``, ``3.2e-3``."""
    mantissa, exponent = f"{lr:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _check_name(where: str, name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or "__" in name:
        raise ValueError(f"{where}: expected a name of letters, digits, '.', '_' or '-' (no '__'), got {name!r}")
    return name


def _entries(where: str, value: Any) -> dict[str, Entry]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{where}: expected a non-empty mapping of name -> overrides, got {value!r}")
    out = {}
    for name, body in value.items():
        _check_name(f"{where}.{name}", name)
        body = {} if body is None else body
        if not isinstance(body, Mapping):
            raise ValueError(f"{where}.{name}: expected a mapping of recipe overrides, got {body!r}")
        body = dict(body)
        enabled = body.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise ValueError(f"{where}.{name}.enabled: expected true or false, got {enabled!r}")
        per_setting = body.pop("per_setting", {}) or {}
        if per_setting and where != "models":
            raise ValueError(f"{where}.{name}.per_setting: only models may have per-setting overrides")
        if not isinstance(per_setting, Mapping) or not all(isinstance(v, Mapping) for v in per_setting.values()):
            raise ValueError(f"{where}.{name}.per_setting: expected setting name -> overrides, got {per_setting!r}")
        out[name] = Entry(name, body, enabled, {k: dict(v) for k, v in per_setting.items()})
    return out


def _numbers(where: str, value: Any, kind: type) -> list:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where}: expected a non-empty list, got {value!r}")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
            raise ValueError(f"{where}[{i}]: expected {'an int' if kind is int else 'a number'}, got {v!r}")
        if (kind is float and not v > 0) or (kind is int and v < 0):
            raise ValueError(f"{where}[{i}]: expected {'a number > 0' if kind is float else 'an int >= 0'}, got {v!r}")
        out.append(kind(v))
    if len(set(out)) != len(out):
        raise ValueError(f"{where}: values repeat in {value!r}")
    return out


def _picked(where: str, value: Any, catalog: dict[str, Entry], axis: str) -> list[str]:
    if value is None:
        return list(catalog)
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where}: expected a non-empty list of {axis} names, got {value!r}")
    for name in value:
        if name not in catalog:
            raise ValueError(f"{where}: unknown {axis[:-1]} {name!r}; defined: {', '.join(catalog) or 'none'}")
    return list(value)


def load_sweep(path: Union[str, Path], validate: bool = True) -> Sweep:
    """Read and check a sweep file (see the module docstring).

    Args:
        path: the sweep file.
        validate: build every enabled cell's config (catches bad overrides before anything trains).

    Raises:
        FileNotFoundError: no such file, or its recipe is missing.
        ValueError: an unknown key, a bad name or value, an unknown catalog name in a grid, or a cell whose config
            does not validate (the message names the cell and the field).
    """
    path = Path(path)
    raw = read_file(path)
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r}; allowed: {', '.join(_TOP_KEYS)}")
    study = _check_name("study", raw.get("study"))
    if not isinstance(raw.get("recipe"), str):
        raise ValueError(f"recipe: expected the path (relative to {path.name}) or name of a dla train recipe, "
                         f"got {raw.get('recipe')!r}")
    recipe_path = path.parent / raw["recipe"]
    recipe = read_file(recipe_path if recipe_path.is_file() else resolve_recipe(raw["recipe"]))
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"overrides: expected a recipe-shaped mapping, got {overrides!r}")
    seg_examples = raw.get("segmentation_examples", 128)
    if isinstance(seg_examples, bool) or not isinstance(seg_examples, int) or seg_examples < 0:
        raise ValueError(f"segmentation_examples: expected an int >= 0, got {seg_examples!r}")
    catalogs = {axis: _entries(axis, raw.get(axis)) for axis in AXES}
    for axis in AXES:
        if not catalogs[axis]:
            raise ValueError(f"{axis}: the sweep defines none; expected a mapping of name -> overrides")
    for model in catalogs["models"].values():
        for setting in model.per_setting:
            if setting not in catalogs["settings"]:
                raise ValueError(f"models.{model.name}.per_setting: unknown setting {setting!r}; defined: "
                                 f"{', '.join(catalogs['settings'])}")
    lrs = _numbers("lrs", raw["lrs"], float) if "lrs" in raw else None
    seeds = _numbers("seeds", raw["seeds"], int) if "seeds" in raw else [0]
    grids = raw.get("grids") or [{}]
    if not isinstance(grids, list):
        raise ValueError(f"grids: expected a list of grids, got {grids!r}")

    base = merge(recipe, overrides)
    cells: dict[str, Cell] = {}
    for g, grid in enumerate(grids):
        where = f"grids[{g}]"
        if not isinstance(grid, Mapping):
            raise ValueError(f"{where}: expected a mapping with some of {', '.join(_GRID_KEYS)}, got {grid!r}")
        bad = sorted(set(grid) - set(_GRID_KEYS))
        if bad:
            raise ValueError(f"{where}.{bad[0]}: unknown key; allowed: {', '.join(_GRID_KEYS)}")
        picked = {axis: _picked(f"{where}.{axis}", grid.get(axis), catalogs[axis], axis) for axis in AXES}
        grid_lrs = _numbers(f"{where}.lrs", grid["lrs"], float) if "lrs" in grid else lrs
        if grid_lrs is None:
            raise ValueError(f"{where}.lrs: no learning rates (set lrs in the grid or at the top of the sweep)")
        grid_seeds = _numbers(f"{where}.seeds", grid["seeds"], int) if "seeds" in grid else seeds
        for task, model, setting, lr, seed in itertools.product(picked["tasks"], picked["models"],
                                                                picked["settings"], grid_lrs, grid_seeds):
            t, m, s = catalogs["tasks"][task], catalogs["models"][model], catalogs["settings"][setting]
            data = base
            for part in (t.overrides, m.overrides, s.overrides, m.per_setting.get(setting, {}),
                         {"train": {"lr": lr, "seed": seed}}):
                data = merge(data, part)
            cell = Cell(study, task, model, setting, lr, seed, data, t.enabled and m.enabled and s.enabled)
            cells.setdefault(cell.id, cell)
    sweep = Sweep(study, path, tuple(cells.values()), seg_examples, str(raw.get("description", "")))
    if validate:
        for cell in sweep.enabled_cells:
            try:
                cell.config("unused")
            except (ValueError, FileNotFoundError) as e:
                raise ValueError(f"{path}: cell {cell.id}: {e}") from None
    return sweep


__all__ = ["Sweep", "Cell", "Entry", "load_sweep", "format_lr", "AXES"]
