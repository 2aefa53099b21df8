"""The quickstart end to end at a small scale: every model trained on both tasks, table, plots and JSON."""

import json

from dla.train.quickstart import format_table, run_quickstart


def test_quickstart_trains_compares_and_writes(tmp_path, cache_dir):
    lines = []
    report = run_quickstart(tmp_path / "qs", scale=0.02, cache_dir=str(cache_dir), progress=False, echo=lines.append)
    rows = report["rows"]
    assert [r["model"] for r in rows] == ["DLA-Mamba-2", "Mamba-2", "Log-Linear Mamba-2"]
    assert [r["policy"] for r in rows] == ["dla", "single", "fenwick"]
    for row in rows:
        assert row["lm"]["steps"] == 1 and row["mqar"]["steps"] == 4  # 60 and 200 recipe steps, scaled by 0.02
        assert row["lm"]["val_ppl"] > 1.0 and 0.0 <= row["mqar"]["val_acc"] <= 1.0
        assert row["params"] == row["lm"]["params"] > 0
    assert rows[0]["params"] > rows[1]["params"]  # DLA's lam projection
    table = report["table"]
    assert table.splitlines()[0].startswith("| model | params | LM train s")
    assert len(table.splitlines()) == 2 + len(rows) and table in "\n".join(lines)
    for name in ("loss_lm.png", "loss_mqar.png", "comparison.png"):
        assert (tmp_path / "qs" / name).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "qs" / "quickstart.json").read_text())
    assert saved["table"] == table and saved["wall_time_s"] > 0
    assert (tmp_path / "qs" / "results.md").read_text().strip() == table


def test_format_table_marks_missing_scores():
    rows = [{"model": "A", "params": 12345, "lm": {"train_time_s": 1.0, "tokens_per_s": 10.0}}]
    table = format_table(rows, ("lm",))
    assert table.splitlines()[2] == "| A | 12K | 1.0 | 10 | - |"
