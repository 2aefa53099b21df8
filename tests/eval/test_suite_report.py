"""The paper suite against the installed lm-eval registry, task-name errors, local task YAMLs, and the results
JSON/markdown arithmetic on hand-made records."""

import json

import pytest

pytest.importorskip("lm_eval")

from dla.eval.local_tasks import write_local_task  # noqa: E402
from dla.eval.runner import load_results, results_table, summarize, write_results  # noqa: E402
from dla.eval.suite import (RULER_LENGTHS, SUITES, check_task_names, suite_datasets, suite_tasks,  # noqa: E402
                            verify_suite)


def test_paper_suite_names_and_metrics_exist_in_installed_lm_eval(manager):
    specs = verify_suite("paper", manager)
    groups = {g: [s.task for s in specs if s.group == g] for g in ("commonsense", "retrieval", "ruler", "longbench")}
    assert len(set(groups["commonsense"])) == 8 and len(groups["retrieval"]) == 6
    assert len(groups["ruler"]) == 6 and len(groups["longbench"]) == 12
    assert all(s.metrics == tuple(str(n) for n in RULER_LENGTHS) for s in specs if s.group == "ruler")
    assert suite_tasks("paper") == list(dict.fromkeys(s.task for s in SUITES["paper"]))
    datasets = suite_datasets("paper", manager)
    for ds in [("EleutherAI/lambada_openai", "default"), ("hazyresearch/based-swde-v2", "default"),
               ("baber/paul_graham_essays", None), ("Xnhyacinth/LongBench", "qasper")]:
        assert ds in datasets


def test_unknown_task_names_are_clear_errors(manager):
    with pytest.raises(ValueError, match=r"'pqia' \(did you mean .*piqa"):
        check_task_names(["piqa", "pqia"], manager)
    with pytest.raises(ValueError, match="suite: unknown 'papers'"):
        suite_tasks("papers")
    assert check_task_names(["dla_piqa_local", "hellaswag"], manager) == ["dla_piqa_local", "hellaswag"]


def test_write_local_task(tmp_path, manager):
    data = tmp_path / "piqa.jsonl"
    data.write_text(json.dumps({"goal": "g", "sol1": "a", "sol2": "b", "label": 0}) + "\n")
    path = write_local_task(tmp_path, "piqa", {"validation": data}, manager=manager)
    text = path.read_text()
    assert "task: \"piqa_local\"" in text and "training_split: null" in text and str(data) in text
    with pytest.raises(ValueError, match="evaluates split 'validation'"):
        write_local_task(tmp_path, "piqa", {"test": data}, manager=manager)
    with pytest.raises(ValueError, match="unknown to the installed lm-eval"):
        write_local_task(tmp_path, "piqa2", {"validation": data}, manager=manager)
    with pytest.raises(ValueError, match=".jsonl, .json or .parquet"):
        write_local_task(tmp_path, "piqa", {"validation": tmp_path / "x.csv"}, manager=manager)


def test_summarize_hand_made():
    raw = {"piqa": {"alias": "piqa", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.25},
           "triviaqa": {"exact_match,remove_whitespace": 0.125},
           "niah_single_1": {"4096,none": 0.75, "8192,none": -1, "16384,none": 0.5}}
    assert summarize(raw) == {"piqa": {"acc": 0.5, "acc_norm": 0.25}, "triviaqa": {"exact_match": 0.125},
                              "niah_single_1": {"4096": 0.75, "16384": 0.5}}


def _record(name, **tasks):
    return {"name": name, "checkpoint": f"/x/{name}", "tasks": tasks, "settings": {}, "versions": {}}


def test_results_table_arithmetic(tmp_path):
    a = _record("a", lambada_openai={"acc": 0.2, "perplexity": 123.456}, piqa={"acc": 0.6}, hellaswag={"acc_norm": 0.3},
                winogrande={"acc": 0.5}, arc_easy={"acc": 0.4}, arc_challenge={"acc_norm": 0.2},
                openbookqa={"acc_norm": 0.3}, commonsense_qa={"acc": 0.2}, extra_task={"acc": 0.9})
    b = _record("b", piqa={"acc": 0.55})
    table = results_table([a, b], suite="commonsense")
    lines = table.splitlines()
    assert lines[0] == "| task | a | b |"
    assert "| PIQA (acc) | 60.0 | 55.0 |" in lines
    assert "| LMB. ppl (perplexity) | 123.46 | — |" in lines
    # the average of the 8 headline accuracies (ppl excluded); b lacks some: no average
    assert "| avg commonsense | 33.8 | — |" in lines
    assert "| extra_task (acc) | 90.0 | — |" in lines
    paths = write_results([a, b], tmp_path, "commonsense")
    again = load_results([tmp_path, paths["json"]])
    assert [r["name"] for r in again] == ["a", "b", "x/a", "x/b"]
    with pytest.raises(ValueError, match="no results.json"):
        load_results([tmp_path / "missing"])
