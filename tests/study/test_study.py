"""The study machinery end to end on a two-cell toy sweep (CPU, seconds): run, interrupt and resume, skip finished
cells, refuse stale results, measure, report."""

import json

import pytest
import torch

from dla.study import load_sweep, run_sweep
from dla.study import runner as runner_mod
from dla.study.report import find_studies, load_results, report_sections, write_report
from dla.study.runner import cell_status, measure_sweep, result_path, run_dir
from dla.cli import main
from dla.train.logs import read_log


def test_run_interrupt_resume_skip_and_report(toy_sweep, tmp_path, monkeypatch):
    sweep = load_sweep(toy_sweep)
    root, results = tmp_path / "runs", tmp_path / "results"
    first, second = sweep.cells
    assert [c.id for c in sweep.cells] == ["T16-kv2__transformer__d16__lr3e-3__s0",
                                           "T16-kv2__dla-mamba2__d16__lr3e-3__s0"]

    # a piece whose time is (nearly) up: the first cell stops after its first step with a checkpoint
    monkeypatch.setattr(runner_mod.Piece, "left_s", lambda self: 1e-4)
    lines = []
    summary = run_sweep(sweep, root, results, progress=False, echo=lines.append, max_minutes=1)
    assert summary["paused"] == first.id and summary["done"] == [] and len(summary["left"]) == 2
    assert not result_path(results, first).exists()
    assert cell_status(first, root, results).startswith("partial at step ")
    assert cell_status(second, root, results) == "pending"
    monkeypatch.undo()

    summary = run_sweep(sweep, root, results, progress=False, echo=lines.append)
    assert summary["done"] == [first.id, second.id] and summary["paused"] is None and summary["left"] == []
    starts = [r["step"] for r in read_log(run_dir(root, first) / "log.jsonl") if r["kind"] == "start"]
    assert starts[-1] >= 1, "the first cell resumed from its checkpoint"
    for cell in (first, second):
        record = json.loads(result_path(results, cell).read_text())
        assert record["status"] == "done" and record["steps"] == 6 and record["tokens"] == 6 * 8 * 16
        assert 0.0 <= record["accuracy"] <= 1.0 and record["params"] > 0 and record["train_seconds"] > 0
        assert record["config"]["train"]["lr"] == 3e-3 and "max_time_s" not in record["config"]["train"]
        assert record["gpu"].startswith("CPU") and record["versions"]["torch"] and record["commit"]
        assert {3, 6} <= {s for s, _ in record["history"]} and record["history"][-1][0] == 6
    seg_first = json.loads(result_path(results, first).read_text())["segmentation"]
    seg = json.loads(result_path(results, second).read_text())["segmentation"]
    assert seg_first is None  # attention: no segmentation
    assert len(seg) == 1 and seg[0]["policy"] == "dla" and seg[0]["capacity"] == 4 and seg[0]["examples"] == 8
    assert 1.0 <= seg[0]["slots_end"] <= 4.0 and 0.0 <= seg[0]["boundary_rate_context"] <= 1.0
    assert json.loads(result_path(results, second).read_text())["state_floats"] == 2 * 4 * 16 * 4

    # a rerun skips both cells
    summary = run_sweep(sweep, root, results, progress=False, echo=lines.append)
    assert summary["skipped"] == [first.id, second.id] and summary["done"] == []

    # a cell trained to its end whose result was lost is scored again from its final model, not retrained
    before = json.loads(result_path(results, second).read_text())
    result_path(results, second).unlink()
    summary = run_sweep(sweep, root, results, progress=False, echo=lines.append)
    after = json.loads(result_path(results, second).read_text())
    assert summary["done"] == [second.id]
    assert (after["accuracy"], after["steps"], after["segmentation"]) == (before["accuracy"], 6, before["segmentation"])

    # the report: tables for both models, a plot, prose outside the section kept, a second report replaces it
    out = tmp_path / "docs" / "results.md"
    out.parent.mkdir()
    out.write_text("# Results\n\nProse the report must keep.\n")
    write_report(results, ["toy"], out)
    write_report(results, ["toy"], out)
    text = out.read_text()
    assert text.count("<!-- study:toy -->") == 1 and "Prose the report must keep." in text
    assert "| T16-kv2 | transformer | d16 |" in text and "| T16-kv2 | dla-mamba2 | d16 |" in text
    assert "| T16-kv2 | dla-mamba2 | d16 | 0 | dla (C=4) |" in text  # segmentation row of the DLA layer
    png = results / "toy" / "accuracy_vs_pairs.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy_vs_pairs.png" in text
    curves = results / "toy" / "learning_curves.png"  # the validation history of each model's best lr
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "learning_curves.png)" in text
    assert [r["cell"] for r in load_results(results, "toy")] == [first.id, second.id]
    (results / "lm").mkdir()
    (results / "lm" / "run.json").write_text('{"rows": []}')  # other results kept beside the studies
    assert find_studies(results) == ["toy"]
    assert report_sections(out) == ["toy"]

    # results moved away (a changed protocol): the section no longer shows them; a study never reported still fails
    for path in (results / "toy").glob("*.json"):
        path.rename(tmp_path / path.name)
    write_report(results, ["toy"], out)
    text = out.read_text()
    assert "No cell of this study has finished yet" in text and "| T16-kv2 |" not in text
    assert text.count("<!-- study:toy -->") == 1 and "Prose the report must keep." in text
    with pytest.raises(FileNotFoundError, match="no result JSON"):
        write_report(results, ["other"], out)


def test_stale_result_is_refused(toy_sweep, tmp_path):
    sweep = load_sweep(toy_sweep)
    results = tmp_path / "results"
    cell = sweep.cells[0]
    path = result_path(results, cell)
    path.parent.mkdir(parents=True)
    config = cell.config(tmp_path / "x").to_dict()
    config["train"]["max_steps"] = 99
    path.write_text(json.dumps({"study": "toy", "cell": cell.id, "status": "done", "config": config}))
    assert cell_status(cell, tmp_path / "runs", results) == \
        "stale: written for another config (its train section differs)"  # what --list shows
    with pytest.raises(ValueError, match="another config of cell T16-kv2__transformer.*train section"):
        run_sweep(sweep, tmp_path / "runs", results, progress=False, echo=lambda _: None)


def test_measure_times_each_model_shape(toy_sweep, tmp_path):
    sweep = load_sweep(toy_sweep)
    report = measure_sweep(sweep, tmp_path / "runs", steps=3, warmup=1, echo=lambda _: None)
    assert [r["model"] for r in report["rows"]] == ["transformer", "dla-mamba2"]
    for row in report["rows"]:
        assert row["step_ms"] > 0 and row["first_step_s"] > 0 and row["cells"] == 1 and row["cell_steps"] == 6
        assert row["minutes"] == pytest.approx((6 * row["step_ms"] / 1000 + row["first_step_s"]) / 60, abs=2e-3)
    assert report["total_minutes"] == pytest.approx(sum(r["minutes"] for r in report["rows"]), abs=2e-3)
    assert not any((tmp_path / "runs").iterdir())  # the timing runs are removed
    # kept beside the results, merged with an earlier table, and used to plan a piece
    from dla.study.runner import measure_path, merge_measures

    older = {"rows": [{"model": "gdn", "setting": "d16", "seq_len": 16, "step_ms": 1.0, "minutes": 0.5},
                      {**report["rows"][0], "step_ms": 999.0}]}
    merged = merge_measures(older, report)
    assert [r["model"] for r in merged["rows"]] == ["gdn", "transformer", "dla-mamba2"]
    assert merged["rows"][1]["step_ms"] == report["rows"][0]["step_ms"]
    path = measure_path(tmp_path / "results", "toy")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"rows": [{**r, "step_ms": 1e6} for r in report["rows"]]}))  # 1,000 s a step
    lines = []
    summary = run_sweep(sweep, tmp_path / "runs", tmp_path / "results", max_minutes=5, progress=False,
                        echo=lines.append)
    assert summary["done"] == [] and len(summary["left"]) == 2 and "left for the next piece" in lines[0]
    # allowed to pause, a piece starts them all the same (here they finish: their real steps are fast)
    summary = run_sweep(sweep, tmp_path / "runs", tmp_path / "results", max_minutes=5, progress=False,
                        allow_pause=True, echo=lines.append)
    assert len(summary["done"]) == 2 and summary["left"] == []
    for cell in sweep.cells:
        result_path(tmp_path / "results", cell).unlink()
    assert load_sweep(toy_sweep) and not find_studies(tmp_path / "results")  # measure.json is not a result


def test_diverged_and_failed_cells(toy_sweep, tmp_path, monkeypatch):
    toy_sweep.write_text(toy_sweep.read_text().replace("lrs: [3.0e-3]", "lrs: [3.0e-3, 1.0e+4]"))
    sweep = load_sweep(toy_sweep)
    root, results = tmp_path / "runs", tmp_path / "results"
    from dla.train import loop

    real = loop.train

    def flaky(config, **kw):  # the Transformer's kernels "fail" at the usable lr
        if "transformer" in config.name and "lr3e-3" in config.name:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(config, **kw)

    monkeypatch.setattr(loop, "train", flaky)
    lines = []
    summary = run_sweep(sweep, root, results, only=["*transformer*"], progress=False, echo=lines.append)
    assert summary["failed"] == ["T16-kv2__transformer__d16__lr3e-3__s0"]
    assert summary["diverged"] == ["T16-kv2__transformer__d16__lr1e4__s0"]
    assert any("illegal memory access" in line for line in lines)
    record = json.loads(result_path(results, sweep.cells[1]).read_text())
    assert record["status"] == "diverged" and record["accuracy"] is None and record["error"].startswith("train:")
    assert not result_path(results, sweep.cells[0]).exists()


def test_out_of_gpu_memory_stops_the_piece(toy_sweep, tmp_path, monkeypatch):
    """Several processes share one GPU: a cell that runs out of memory ends this process's piece, so the next
    cells are left pending instead of failing one after another."""
    toy_sweep.write_text(toy_sweep.read_text().replace("lrs: [3.0e-3]", "lrs: [1.0e-3, 3.0e-3]"))
    sweep = load_sweep(toy_sweep)
    from dla.train import loop

    calls = []

    def oom(config, **kw):
        calls.append(config.name)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "train", oom)
    lines = []
    summary = run_sweep(sweep, tmp_path / "runs", tmp_path / "results", progress=False, echo=lines.append)
    ids = [c.id for c in sweep.cells]
    assert calls == [ids[0]] and summary["failed"] == [ids[0]] and summary["left"] == ids[1:]
    assert "out of GPU memory" in lines[0] and "JOBS" in lines[0]


def test_a_shard_plans_with_the_shared_step_time(toy_sweep, tmp_path, monkeypatch):
    """With n processes on one GPU, a cell's estimate is the measured step time x 0.3 n: a cell that fits alone
    is left for the next piece when 8 processes share the GPU."""
    sweep = load_sweep(toy_sweep)
    from dla.study.runner import measure_path
    from dla.train import loop

    cell = sweep.cells[0]
    steps = cell.config(tmp_path).train.steps(cell.config(tmp_path).data.seq_len)
    path = measure_path(tmp_path / "results", sweep.study)
    path.parent.mkdir(parents=True)
    row = {"model": cell.model, "setting": cell.setting, "seq_len": cell.config(tmp_path).data.seq_len,
           "step_ms": 1000 * 60 / steps}  # one minute of steps alone
    path.write_text(json.dumps({"rows": [row]}))
    calls = []
    monkeypatch.setattr(loop, "train", lambda config, **kw: calls.append(config.name) or 1 / 0)
    kw = dict(only=[cell.id], max_minutes=2.0, progress=False, echo=lambda _: None)
    assert run_sweep(sweep, tmp_path / "runs", tmp_path / "results", shard=(0, 8), **kw)["left"] == [cell.id]
    assert not calls  # 60 s x 2.4 x 1.15 does not fit in 2 minutes
    assert run_sweep(sweep, tmp_path / "runs", tmp_path / "results", shard=(0, 2), **kw)["failed"] == [cell.id]
    assert calls == [cell.id]  # 60 s x 1 x 1.15 does


def test_shards_split_the_pending_cells(toy_sweep, tmp_path, monkeypatch):
    toy_sweep.write_text(toy_sweep.read_text().replace("lrs: [3.0e-3]", "lrs: [1.0e-3, 3.0e-3]"))
    sweep = load_sweep(toy_sweep)
    root, results = tmp_path / "runs", tmp_path / "results"
    ids = [c.id for c in sweep.cells]
    result_path(results, sweep.cells[0]).parent.mkdir(parents=True)
    result_path(results, sweep.cells[0]).write_text("{}")  # a finished cell: in no shard
    from dla.train import loop

    calls = []

    def record(config, **kw):
        calls.append(config.name)
        raise RuntimeError("not trained in this test")

    monkeypatch.setattr(loop, "train", record)
    shards = [run_sweep(sweep, root, results, progress=False, shard=(i, 2), echo=lambda _: None)["failed"]
              for i in range(2)]
    assert shards == [ids[1::2], ids[2::2]]
    assert sorted(shards[0] + shards[1]) == sorted(ids[1:]) and len(calls) == len(ids) - 1
    with pytest.raises(ValueError, match="shard"):
        run_sweep(sweep, root, results, shard=(2, 2))
    assert main(["study", "run", str(toy_sweep), "--root", str(root), "--results", str(results),
                 "--shard", "1of2"]) == 2


def test_report_cli_refreshes_every_section_of_the_page(tmp_path, capsys):
    """`dla study report` with no study named writes every study with results and every section already on the
    page: a study whose results moved away no longer shows them."""
    from dla.cli import main

    results, out = tmp_path / "results", tmp_path / "results.md"
    (results / "old").mkdir(parents=True)
    out.write_text("# Results\n\n<!-- study:old -->\n| stale | row |\n<!-- /study:old -->\n")
    assert main(["study", "report", "--results", str(results), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| stale | row |" not in text and "No cell of this study has finished yet" in text
    assert "wrote the sections of old" in capsys.readouterr().out
    assert main(["study", "report", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "x.md")]) == 2


def test_learning_curves_need_a_validation_history(tmp_path, monkeypatch):
    """No curve without a history; a model's curve is the mean over its seeds at the steps they share."""
    from dla.study.report import Group, plot_learning_curves

    rec = dict(task="T", model="m", setting="s", lr=1e-3, status="done", accuracy=0.5)
    plain = Group("T", "m", "s", {1e-3: [dict(rec, seed=0)]})
    assert plot_learning_curves([plain], tmp_path / "none.png", "t") is None and not (tmp_path / "none.png").exists()
    seeds = Group("T", "m", "s", {1e-3: [dict(rec, seed=0, history=[[10, 0.2], [20, 0.4]]),
                                         dict(rec, seed=1, history=[[10, 0.4], [20, 0.6], [30, 0.9]])]})
    import matplotlib.axes

    drawn, original = [], matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, x, y, **kw: drawn.append((list(x), list(y))) or original(self, x, y, **kw))
    assert plot_learning_curves([seeds], tmp_path / "c.png", "t") == tmp_path / "c.png"
    assert drawn == [([10, 20], [pytest.approx(30.0), pytest.approx(50.0)])]
