"""Sweep files: cells from the catalog and grids, the order overrides apply in, and errors that name the field."""

import pytest

from dla.study.sweep import format_lr, load_sweep

from .conftest import RECIPE


def write(tmp_path, body: str):
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    path = tmp_path / "sweep.yaml"
    path.write_text(body)
    return path


CATALOG = """
study: s
recipe: recipe.yaml
tasks:
  a: {data: {seq_len: 16, mqar: {num_kv_pairs: 2}}}
  b: {data: {seq_len: 16, mqar: {num_kv_pairs: 4}}}
models:
  m2: {model: {mixer: mamba2, policy: dla, capacity: 4}, per_setting: {wide: {model: {head_k_dim: 8}}}}
  att: {model: {mixer: attention}}
settings:
  narrow: {model: {hidden_size: 16}}
  wide: {model: {hidden_size: 32}}
  fixed: {model: {policy: fixed, block_size: 4}}
  later: {model: {not_a_field_yet: 1}, enabled: false}
lrs: [1.0e-3, 3.0e-3]
"""


def test_cells_overrides_order_dedup_and_disabled(tmp_path):
    sweep = load_sweep(write(tmp_path, CATALOG + """
grids:
  - {tasks: [b], models: [m2], settings: [wide, fixed, later], lrs: [5.0e-4]}
  - {tasks: [b], models: [m2], settings: [wide], lrs: [5.0e-4, 1.0e-3], seeds: [0, 1]}
"""))
    ids = [c.id for c in sweep.cells]
    assert ids == ["b__m2__wide__lr5e-4__s0", "b__m2__fixed__lr5e-4__s0", "b__m2__later__lr5e-4__s0",
                   "b__m2__wide__lr5e-4__s1", "b__m2__wide__lr1e-3__s0", "b__m2__wide__lr1e-3__s1"]
    wide, fixed, later = sweep.cells[:3]
    config = wide.config(tmp_path / "run")
    assert config.model.options["hidden_size"] == 32 and config.model.options["head_k_dim"] == 8  # per_setting
    assert config.data.mqar.num_kv_pairs == 4 and config.train.lr == 5e-4 and config.train.seed == 0
    assert config.name == wide.id and config.output_dir == tmp_path / "run"
    assert fixed.config(tmp_path / "x").model.options["policy"] == "fixed"  # a setting overrides the model
    assert fixed.config(tmp_path / "x").model.options["head_k_dim"] == 4  # per_setting of another setting: no
    assert not later.enabled and later not in sweep.enabled_cells  # disabled: listed, never validated or run
    assert [c.id for c in sweep.select(["*__s1"])] == ["b__m2__wide__lr5e-4__s1", "b__m2__wide__lr1e-3__s1"]


def test_without_grids_every_combination(tmp_path):
    sweep = load_sweep(write(tmp_path, CATALOG.replace("  later: {model: {not_a_field_yet: 1}, enabled: false}\n",
                                                       "")))
    assert len(sweep.cells) == 2 * 2 * 3 * 2  # tasks x models x settings x lrs, one seed
    assert all(c.enabled for c in sweep.cells)


@pytest.mark.parametrize("edit, message", [
    (("study: s", "study: a__b"), "study: expected a name"),
    (("lrs: [1.0e-3, 3.0e-3]", "lrs: [1.0e-3, -3.0e-3]"), r"lrs\[1\]: expected a number > 0"),
    (("lrs: [1.0e-3, 3.0e-3]", "lrs: [1.0e-3, 1.0e-3]"), "lrs: values repeat"),
    (("recipe: recipe.yaml", "recipe: recipe.yaml\nsteps: 3"), "unknown key 'steps'"),
    (("  att: {model: {mixer: attention}}", "  att: {model: {mixer: attention}, per_setting: {huge: {}}}"),
     "models.m2.per_setting|models.att.per_setting: unknown setting 'huge'"),
    (("  att: {model: {mixer: attention}}", "  att: {model: {mixer: atention}}"),
     "cell a__att__narrow__lr1e-3__s0: model.mixer: unknown 'atention'"),
    (("  later: {model: {not_a_field_yet: 1}, enabled: false}", "  later: {model: {not_a_field_yet: 1}}"),
     "model.not_a_field_yet: not a field of DLAConfig"),
])
def test_errors_name_the_field(tmp_path, edit, message):
    with pytest.raises(ValueError, match=message):
        load_sweep(write(tmp_path, CATALOG.replace(*edit)))


def test_grid_names_must_exist(tmp_path):
    with pytest.raises(ValueError, match=r"grids\[0\].models: unknown model 'm3'; defined: m2, att"):
        load_sweep(write(tmp_path, CATALOG + "grids:\n  - {models: [m3]}\n"))
    with pytest.raises(ValueError, match=r"grids\[0\].lr: unknown key"):
        load_sweep(write(tmp_path, CATALOG + "grids:\n  - {lr: [1.0e-3]}\n"))


def test_format_lr():
    assert [format_lr(x) for x in (1e-3, 5e-4, 3.2e-3, 0.01, 3e-3)] == ["1e-3", "5e-4", "3.2e-3", "1e-2", "3e-3"]
