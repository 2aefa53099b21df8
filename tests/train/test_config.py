"""Recipes, overrides and validation: every recipe loads and builds, bad fields fail with their dotted name."""

import math

import pytest
import torch

from dla.train import apply_overrides, check_fit, config_from_dict, list_recipes, load_config
from dla.train.config import parse_value, read_file
from dla.train.model import build_model, build_model_config, num_parameters
from dla.train.optim import WarmupDecay

PAPER = {"paper-dla-mamba2": "dla", "paper-mamba2": "single", "paper-loglinear-mamba2": "fenwick",
         "paper-dla-gdn": "dla", "paper-gdn": "single", "paper-loglinear-gdn": "fenwick", "paper-transformer": None}


def meta_params(config) -> float:
    with torch.device("meta"):
        return num_parameters(build_model(build_model_config(config.model))) / 1e6


def test_every_recipe_loads_and_the_issue_recipes_exist():
    recipes = list_recipes()
    assert {"tiny", "tiny-mqar", "dla-gdn-125m", "dla-gdn-340m", *PAPER} <= set(recipes)
    assert not any(r.startswith("_") for r in recipes)  # shared bases are not recipes
    for name in recipes:
        config = load_config(name)
        assert config.name == name
        assert config.train.steps(config.data.seq_len) >= 1


def test_paper_recipes_match_the_paper_scale():
    for name, policy in PAPER.items():
        config = load_config(name)
        m, t = config.model.options, config.train
        assert m["hidden_size"] == 1536 and m["num_hidden_layers"] == (24 if name == "paper-transformer" else 21)
        assert m.get("policy") == policy or policy is None
        assert config.data.seq_len == 16384 and t.max_tokens == 50_000_000_000
        assert (t.lr, t.min_lr_ratio, t.warmup_steps, t.grad_clip, t.schedule) == (3e-4, 0.1, 1024, 1.0, "cosine")
    sizes = {name: meta_params(load_config(name)) for name in ("paper-mamba2", "paper-gdn", "paper-transformer")}
    assert 700 < sizes["paper-mamba2"] < 900 and 700 < sizes["paper-gdn"] < 950, sizes
    assert 700 < sizes["paper-transformer"] < 850, sizes


def test_small_recipes_have_their_advertised_size():
    assert 110 < meta_params(load_config("dla-gdn-125m")) < 140
    assert 310 < meta_params(load_config("dla-gdn-340m")) < 370


def test_overrides_parse_as_yaml_and_reach_nested_fields():
    config = load_config("tiny", ["train.lr=1e-3", "model.capacity=8", "train.betas=[0.8, 0.9]",
                                  "data.sources.0.max_documents=5", "train.grad_clip=null", "log.plot=false"])
    assert config.train.lr == 1e-3 and isinstance(config.train.lr, float)
    assert config.model.options["capacity"] == 8
    assert config.train.betas == (0.8, 0.9)
    assert config.data.sources[0].max_documents == 5
    assert config.train.grad_clip is None and config.log.plot is False
    assert parse_value("3e-4") == 3e-4 and parse_value("true") is True and parse_value("abc") == "abc"


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "train.lrr: unknown field"),
    ("train.lr=-1", "train.lr: expected a finite number > 0"),
    ("train.max_steps=abc", "train.max_steps: expected an int"),
    ("train.max_tokens=100", "max_steps, max_tokens: set exactly one"),
    ("train.warmup_steps=1000", "train.warmup_steps: 1000 is more than"),
    ("train.global_batch_size=10", "train.global_batch_size: must be a multiple of micro_batch_size"),
    ("train.schedule=step", "train.schedule: expected one of cosine"),
    ("data.sources.0.kind=web", "data.sources[0].kind"),
    ("data.task=qa", "data.task: expected one of lm, mqar"),
    ("model.capcity=3", "model.capcity: not a field of DLAConfig"),
    ("model.tau=-1", "model.tau"),
    ("model.type=nonesuch", "model.type: unknown model_type"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last: expected an int >= 1"),
    ("train.betas=[0.9]", "train.betas: expected 2 values"),
])
def test_bad_fields_are_named(override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config("tiny", [override])


def test_malformed_override_and_missing_files():
    with pytest.raises(ValueError, match="expected section.field=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ValueError, match="is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])
    with pytest.raises(FileNotFoundError, match="no recipe of that name; recipes: .*tiny"):
        load_config("no-such-recipe")


def test_base_files_merge_and_cycles_fail(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\ntrain: {max_steps: 5, lr: 0.5}\nmodel: {hidden_size: 32}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nname: b\ntrain: {lr: 0.25}\n")
    data = read_file(tmp_path / "b.yaml")
    assert data == {"name": "b", "train": {"max_steps": 5, "lr": 0.25}, "model": {"hidden_size": 32}}
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ValueError, match="includes itself"):
        read_file(tmp_path / "c.yaml")
    (tmp_path / "e.json").write_text('{"name": "e", "train": {"max_steps": 3}}')
    assert config_from_dict(read_file(tmp_path / "e.json")).train.max_steps == 3
    (tmp_path / "f.toml").write_text('name = "f"\n[train]\nmax_steps = 4\nlr = 1e-3\n')
    assert config_from_dict(read_file(tmp_path / "f.toml")).train.lr == 1e-3


def test_config_round_trips_through_to_dict():
    config = load_config("paper-dla-gdn")
    again = config_from_dict(config.to_dict())
    assert again == config


def test_check_fit_splits_the_global_batch_over_ranks():
    config = load_config("tiny", ["train.global_batch_size=16", "train.micro_batch_size=4"])
    assert check_fit(config, 1) == 4 and check_fit(config, 2) == 2 and check_fit(config, 4) == 1
    with pytest.raises(ValueError, match="not a multiple of micro_batch_size \\* processes"):
        check_fit(config, 3)
    with pytest.raises(ValueError, match="data.val_fraction is 0"):
        check_fit(load_config("tiny", ["data.val_fraction=0"]), 1)


def test_schedule_warmup_cosine_linear_constant():
    f = WarmupDecay(total=110, warmup=10, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == 1.0 and f(10) == 1.0
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 120))
    lin = WarmupDecay(total=100, warmup=0, min_ratio=0.2, kind="linear")
    assert lin(50) == pytest.approx(0.6) and lin(100) == pytest.approx(0.2)
    assert WarmupDecay(total=100, warmup=5, kind="constant")(80) == 1.0
    assert math.isclose(WarmupDecay(total=10, warmup=10)(9), 1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupDecay(total=10, warmup=11)
