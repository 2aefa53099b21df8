"""The study's sweep files under configs/study/: they load, and the capacity sweep's seven models have identical
blocks and embeddings and parameter counts within 2% of each other in every (task, setting)."""

from collections import defaultdict
from pathlib import Path

import pytest
import torch

from dla.study.sweep import load_sweep
from dla.train.model import build_model, build_model_config, num_parameters

STUDY = Path(__file__).resolve().parents[2] / "configs" / "study"
RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
MODELS = ["transformer", "mamba2", "loglinear-mamba2", "dla-mamba2", "gdn", "loglinear-gdn", "dla-gdn"]


@pytest.mark.parametrize("name", ["calibration", "capacity", "capacity-2k", "ablation"])
def test_sweeps_load(name):
    sweep = load_sweep(STUDY / f"{name}.yaml")
    assert sweep.study == name and sweep.enabled_cells
    for cell in sweep.enabled_cells:
        config = cell.config("unused")
        assert config.data.task == "mqar" and config.model.options.get("skip_init", 1.0) is None


def _params(cell) -> int:
    config = cell.config("unused")
    with torch.device("meta"):
        return num_parameters(build_model(build_model_config(config.model, config.data.mqar.vocab_size)))


def test_capacity_models_within_two_percent():
    sweep = load_sweep(STUDY / "capacity.yaml")
    groups = defaultdict(dict)
    for cell in sweep.enabled_cells:
        if cell.lr == sweep.enabled_cells[0].lr and cell.seed == 0:
            groups[(cell.task, cell.setting)].setdefault(cell.model, cell)
    assert len(groups) == 14  # 7 tasks x 2 widths
    for (task, setting), cells in groups.items():
        assert list(cells) == MODELS
        counts = {model: _params(cell) for model, cell in cells.items()}
        spread = max(counts.values()) / min(counts.values()) - 1
        assert spread <= 0.02, (task, setting, counts)
        configs = [cell.config("unused").model.options for cell in cells.values()]
        for key in ("hidden_size", "num_hidden_layers", "vocab_size", "tie_word_embeddings", "rms_norm_eps"):
            assert len({str(c.get(key)) for c in configs}) == 1, key  # same blocks and embeddings


def test_calibration_and_capacity_share_the_models():
    calibration, capacity = (load_sweep(STUDY / f"{n}.yaml") for n in ("calibration", "capacity"))
    assert sorted({c.model for c in calibration.cells}) == sorted(MODELS) == sorted({c.model for c in capacity.cells})
    a = calibration.cells[0].config("unused")
    assert (a.data.seq_len, a.data.mqar.num_kv_pairs, a.data.mqar.vocab_size, a.model.options["hidden_size"],
            a.model.options["num_hidden_layers"]) == (64, 8, 256, 64, 2)


@pytest.mark.parametrize("name", ["calibration", "capacity", "capacity-2k", "ablation"])
def test_committed_results_belong_to_their_sweep(name):
    """Every result JSON under docs/results/<study>/ is a cell of that sweep, trained with the config the sweep
    gives it today (a sweep whose protocol changed moves its old results to a study of their own, as capacity-2k)."""
    from dla.study.runner import MEASURE_FILE, _check_stored, result_path

    sweep = load_sweep(STUDY / f"{name}.yaml")
    cells = {cell.id: cell for cell in sweep.cells}
    found = [p for p in (RESULTS / name).glob("*.json") if p.name != MEASURE_FILE]
    for path in found:
        assert path.stem in cells, f"{path} is no cell of {name}.yaml"
        cell = cells[path.stem]
        assert result_path(RESULTS, cell) == path
        _check_stored(path, cell, cell.config("unused").to_dict())
    assert name not in ("calibration", "capacity-2k") or found  # the studies that ran have results
