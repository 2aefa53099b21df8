"""``dla bench report`` and the benchmarks' timer on CPU: merging a sweep run in pieces, the ratio table, one plot
per shape, bad input named."""

import json
import time

import pytest

from dla.bench.report import BASELINE, headline_ops, merge_results, ops_markdown, plot_paths, write_report
from dla.bench.timing import median_ms
from dla.cli import main


def _meta(date="2026-12-04", gpu="GPU X", **kw):
    return {"gpu": gpu, "torch": "2.x", "triton": "3.6.0", "python": "3.12", "date": date, "fla": "0.6.0",
            "dtype": "bf16", "tokens_per_call": 65536, "dla_precision": "auto", **kw}


def _row(op, shape, T, ms, stats=None):
    return {"op": op, "shape": shape, "T": T, "B": 65536 // T, "fwd_ms": ms / 2, "fwdbwd_ms": ms, "peak_mib": 1.0,
            "note": "", "stats": stats or {}}


def _pieces():
    a = {"meta": _meta(command="dla bench ops --lengths 2048 4096"),
         "rows": [_row("dla_x", "h16", 2048, 30.0), _row(BASELINE, "h16", 2048, 60.0),
                  _row("dla_x", "h16", 4096, 99.0)]}  # cut short: 4096 lacks its baseline, re-run below
    b = {"meta": _meta(date="2026-12-05", command="dla bench ops --lengths 4096"),
         "rows": [_row("dla_x", "h16", 4096, 40.0), _row(BASELINE, "h16", 4096, 50.0),
                  _row("dla_x", "ll_mamba2", 4096, 70.0, {"slots_opened_per_head": 5.0, "merges_per_head": 1.0,
                                                         "key_chunks_per_query_chunk": 2.5})]}
    return a, b


def test_merge_keeps_the_newest_row_and_names_the_runs():
    a, b = _pieces()
    merged = merge_results([a, b], ["a.json", "b.json"])
    got = {(r["shape"], r["T"], r["op"]): (r["fwdbwd_ms"], r["run"]) for r in merged["rows"]}
    assert got == {("h16", 2048, "dla_x"): (30.0, 0), ("h16", 2048, BASELINE): (60.0, 0),
                   ("h16", 4096, "dla_x"): (40.0, 1), ("h16", 4096, BASELINE): (50.0, 1),
                   ("ll_mamba2", 4096, "dla_x"): (70.0, 1)}
    assert [(r["shape"], r["T"]) for r in merged["rows"]][:2] == [("h16", 2048)] * 2  # by shape, then length
    runs = merged["meta"]["runs"]
    assert [r["file"] for r in runs] == ["a.json", "b.json"] and runs[1]["command"].endswith("--lengths 4096")
    assert merged["meta"]["date"] == "2026-12-04 .. 2026-12-05" and merged["meta"]["gpu"] == "GPU X"


def test_merge_refuses_other_hardware_or_versions():
    a, b = _pieces()
    b["meta"]["gpu"] = "GPU Y"
    with pytest.raises(ValueError, match="b.json: its gpu 'GPU Y'"):
        merge_results([a, b], ["a.json", "b.json"])
    with pytest.raises(ValueError, match="results"):
        merge_results([a], [])


def test_markdown_has_ratios_and_runs():
    a, b = _pieces()
    md = ops_markdown(merge_results([a, b], ["a.json", "b.json"]))
    assert "| dla_x | 30.0 (15.0) | 40.0 (20.0) |" in md
    assert "| dla_x | 0.50 | 0.80 |" in md  # 30 / 60 and 40 / 50
    assert "T=2K: run 1; T=4K: run 2" in md and "1. `a.json` (2026-12-04); 2. `b.json` (2026-12-05)" in md
    assert "| dla_x | 4096 | 5 (0.1%) | 1 | 2.5 |" in md  # ll_mamba2's segmentation; no baseline there, so no ratios
    assert md.count("over `fla_chunk_log_linear_attn`") == 1


def test_report_cli_merges_and_plots_each_shape(tmp_path):
    a, b = _pieces()
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = tmp_path / "all" / "m.json"
    assert main(["bench", "report", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["rows"]) == 5
    assert "| dla_x | 0.50 | 0.80 |" in out.with_suffix(".md").read_text()
    for shape in ("h16", "ll_mamba2"):
        png = out.with_name(f"m_{shape}.png")
        assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="--out"):
        main(["bench", "report", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    # one JSON, one shape: its plot beside it under its own name
    assert plot_paths(a, tmp_path / "a.png") == {"h16": tmp_path / "a.png"}
    assert write_report(tmp_path / "a.json", tmp_path / "a.md", tmp_path / "a.png")["h16"].exists()


def test_median_ms_counts_calls_and_respects_the_budget():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01)

    ms = median_ms(fn, "cpu", reps=5)
    assert len(calls) == 6 and 9.0 <= ms < 1000  # a warm-up, then five timed calls of >= 10 ms
    calls.clear()
    median_ms(fn, "cpu", reps=5, budget_s=0.001)  # one call is already over budget: one timed repetition
    assert len(calls) == 3
    calls.clear()
    median_ms(fn, "cpu", reps=4, budget_s=60.0)
    assert len(calls) == 6  # warm-up, the measuring call, the four repetitions
    with pytest.raises(ValueError, match="reps"):
        median_ms(fn, "cpu", reps=0)


def test_headline_plot_keeps_the_largest_capacity_and_the_peers(tmp_path):
    rows = [_row(op, "h16", 2048, 10.0) for op in ("dla_mamba2_C8_tau0.6", "dla_mamba2_C30_tau0.6",
                                                     "dla_mamba2_C30_tau0", "dla_gdn_C16_tau0.6", "fenwick_gdn (ours)",
                                                     "sdpa_flash", BASELINE)]
    result = {"meta": _meta(), "rows": rows}
    assert headline_ops(result, "h16") == ["dla_mamba2_C30_tau0.6", "dla_gdn_C16_tau0.6", BASELINE, "sdpa_flash"]
    assert headline_ops(result, "ll_mamba2") == []
    (tmp_path / "r.json").write_text(json.dumps(result))
    write_report(tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.png")
    assert (tmp_path / "r_headline.png").read_bytes()[:4] == b"\x89PNG"
