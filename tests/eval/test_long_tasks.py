"""RULER NIAH and LongBench through lm-eval offline: the stock task configs (prompt template, generation request,
metric and per-length aggregation) on small local files in the real tasks' row formats, written by the test, plus
the stock ``niah_single_1`` whose data lm-eval generates itself. A scripted model with known replies pins the
scores; the tiny DLA model runs the same path. The real data (LongBench's HF data, RULER's essay haystack) is
not available here."""

import json
import re
import string
from collections import Counter

import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("wonderwords")  # lm-eval[ruler]
pytest.importorskip("rouge")  # lm-eval[longbench]

from lm_eval.api.model import LM  # noqa: E402

from dla.eval.checkpoint import load_checkpoint, load_tokenizer  # noqa: E402
from dla.eval.lm_eval_model import DLALM  # noqa: E402
from dla.eval.local_tasks import ruler_documents, write_local_task  # noqa: E402
from dla.eval.metrics import string_match  # noqa: E402
from dla.eval.suite import verify_suite  # noqa: E402

NEEDLE = re.compile(r"One of the special magic numbers for (\S+) is: (\d+)\.")

LONGBENCH = {
    "longbench_qasper": [
        {"question": "Which bridge did the team measure?", "context": "We measured the red river bridge in May.",
         "answers": ["the red river bridge"], "all_classes": None},
        {"question": "What was measured?", "context": "The red river bridge was measured twice.",
         "answers": ["the red river bridge"], "all_classes": None},
    ],
    "longbench_gov_report": [
        {"question": "", "context": "The office reviewed the budget of the river agency and found gaps.",
         "answers": ["The office found gaps in the river agency budget."], "all_classes": None},
        {"question": "", "context": "Audit of the forest service.", "answers": ["Forest service audit results."],
         "all_classes": None},
    ],
    "longbench_trec": [
        {"question": "Question: Where is the stone garden?\nType:", "context": "Question: Who built it?\nType: Person",
         "answers": ["Location"], "all_classes": ["Person", "Location", "Number"]},
        {"question": "Question: Who lit the candle?\nType:", "context": "Question: How many?\nType: Number",
         "answers": ["Person"], "all_classes": ["Person", "Location", "Number"]},
    ],
}
# known replies and the scores the stock metrics must give them
LONGBENCH_REPLIES = {
    "longbench_qasper": (["The red river bridge.", " red river"], 0.9),  # QA-F1 1 and 2*(1*2/3)/(1+2/3) = 0.8
    "longbench_gov_report": (["The office found gaps in the river agency budget.", "zebra"], 0.5),  # ROUGE-L F
    "longbench_trec": (["Location", "Number"], 0.5),  # classification
}


@pytest.fixture(scope="module")
def long_tasks(tmp_path_factory, ckpt, manager):
    """Local RULER (``niah_multivalue``, ``niah_multikey_1``, 4096-token rows) and LongBench tasks written with
    ``write_local_task``, and a TaskManager that also builds the stock ``niah_single_1`` at 512 tokens."""
    from dla.eval.suite import task_manager

    tok = load_tokenizer(ckpt)
    out = tmp_path_factory.mktemp("long")
    data = {}
    for task in ("niah_multivalue", "niah_multikey_1"):
        data[task] = ruler_documents(task, [4096], num_examples=2, seed=1,
                                     tokenize=lambda s: tok.encode(s, add_special_tokens=False))
    data.update(LONGBENCH)
    local = {}
    for task, rows in data.items():
        path = out / f"{task}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        local[task] = write_local_task(out, task, {"test": path}, manager=manager).stem
    return data, local, task_manager([str(out)], metadata={"tokenizer": ckpt, "max_seq_lengths": [512]})


class ScriptedLM(LM):
    """Replies through ``reply(prompt)``; by default it answers RULER prompts with the queried needle's value."""

    def __init__(self, reply=None):
        super().__init__()
        self.reply, self.requests = reply or self.needle_value, []

    @staticmethod
    def needle_value(prompt: str) -> str:
        query = re.search(r"for (\S+) mentioned in the provided text is$", prompt).group(1)
        return " " + dict(NEEDLE.findall(prompt))[query] + "."

    def generate_until(self, requests, disable_tqdm=False):
        self.requests += [r.args for r in requests]
        return [self.reply(r.args[0]) for r in requests]

    def loglikelihood(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError


def test_ruler_and_longbench_score_known_answers(long_tasks):
    data, local, manager = long_tasks
    replies = {}  # RULER: by the exact prompt
    for task in ("niah_multivalue", "niah_multikey_1"):
        for i, row in enumerate(data[task]):
            assert row["max_length"] == 4096 and row["length"] <= 4096
            assert all(v in row["input"] for v in row["outputs"])
            prompt = row["input"] + " " + row["gen_prefix"]  # RULER's prompt: input, the answer prefix after it
            if task == "niah_multivalue":  # 4 values: all of them, then 2 of them (partial credit 0.5)
                replies[prompt] = " " + ", ".join(row["outputs"] if i == 0 else row["outputs"][:2])
            else:  # 4 keys, 1 queried: its value, then a distractor key's value
                values = dict(NEEDLE.findall(row["input"]))
                wrong = next(v for v in values.values() if v not in row["outputs"])
                replies[prompt] = f" {row['outputs'][0] if i == 0 else wrong}."
    by_context = {row["context"]: (task, reply) for task, rows in LONGBENCH.items()  # LongBench: by the context
                  for row, reply in zip(rows, LONGBENCH_REPLIES[task][0])}
    prompts = {}

    def reply(prompt):
        if prompt in replies:
            return replies[prompt]
        task, text = next(v for c, v in by_context.items() if c in prompt)
        prompts.setdefault(task, []).append(prompt)
        return text

    lm = ScriptedLM(reply)
    out = lm_eval.simple_evaluate(model=lm, tasks=list(local.values()), task_manager=manager, num_fewshot=0)
    res = out["results"]
    assert res[local["niah_multivalue"]]["4096,none"] == pytest.approx(0.75)
    assert res[local["niah_multikey_1"]]["4096,none"] == pytest.approx(0.5)
    for task, (_, score) in LONGBENCH_REPLIES.items():
        assert res[local[task]]["score,none"] == pytest.approx(score, abs=1e-6), task
    # the stock templates and generation settings
    qasper = prompts["longbench_qasper"][0]
    assert qasper.startswith("You are given a scientific article and a question.") and qasper.endswith(
        "Question: Which bridge did the team measure?\n\nAnswer:") and "Article: We measured the red river" in qasper
    kwargs = dict(lm.requests)
    assert kwargs[qasper]["max_gen_toks"] == 128 and kwargs[qasper]["until"] == []
    trec = prompts["longbench_trec"][0]
    assert kwargs[trec]["until"] == ["\n"] and kwargs[trec]["max_gen_toks"] == 64
    assert kwargs[prompts["longbench_gov_report"][0]]["max_gen_toks"] == 512
    ruler = next(p for p in kwargs if p.startswith("Some special magic numbers"))
    assert kwargs[ruler]["until"] == [] and kwargs[ruler]["max_gen_toks"] == 128


def _qa_f1(prediction: str, truth: str) -> float:
    def norm(s):
        s = "".join(c for c in s.lower() if c not in string.punctuation)
        return re.sub(r"\b(a|an|the)\b", " ", s).split()
    p, t = norm(prediction), norm(truth)
    common = sum((Counter(p) & Counter(t)).values())
    return 0.0 if common == 0 else 2 * common / (len(p) + len(t))


def test_generated_niah_single_1_and_the_dla_model(ckpt, long_tasks):
    _, local, manager = long_tasks
    # the stock task, its haystack and needles generated by lm-eval (at 512 tokens of this tokenizer), answered
    # right by the scripted model
    out = lm_eval.simple_evaluate(model=ScriptedLM(), tasks=["niah_single_1"], task_manager=manager, limit=3,
                                  log_samples=True)
    assert out["results"]["niah_single_1"]["512,none"] == 1.0
    assert all(s["doc"]["max_length"] == 512 and s["doc"]["length"] <= 512 for s in out["samples"]["niah_single_1"])
    model, tok = load_checkpoint(ckpt, dtype="float32")
    lm = DLALM(pretrained=model, tokenizer=tok, batch_size=2, max_length=1024)
    tasks = ["niah_single_1", local["longbench_qasper"]]
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, num_fewshot=0, limit=2,
                                  log_samples=True)
    assert lm.truncated == 0
    ruler = out["samples"]["niah_single_1"]
    for s in ruler:
        assert s["arguments"][0][0] == s["doc"]["input"] + " " + s["doc"]["gen_prefix"]
        assert s["512"] == string_match(s["resps"][0][0].strip(), s["doc"]["outputs"])
    assert out["results"]["niah_single_1"]["512,none"] == pytest.approx(sum(s["512"] for s in ruler) / len(ruler))
    qasper = out["samples"][local["longbench_qasper"]]
    for s in qasper:
        assert s["doc"]["context"] in s["arguments"][0][0]
        assert s["qa_f1_score"] == pytest.approx(max(_qa_f1(s["resps"][0][0], a) for a in s["doc"]["answers"]))
    assert out["results"][local["longbench_qasper"]]["score,none"] == pytest.approx(
        sum(s["score"] for s in qasper) / len(qasper))


def test_suite_ruler_and_longbench_configs_load(manager):
    """Every paper-suite task (RULER and LongBench included) resolves its metric / data-generator code."""
    specs = verify_suite("paper", manager, load_code=True)
    assert {s.task for s in specs if s.group == "ruler"} == {
        "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multiquery", "niah_multivalue"}
    assert sum(s.group == "longbench" for s in specs) == 12 and all(
        s.metrics == ("score",) for s in specs if s.group == "longbench")
    with pytest.raises(ValueError, match="lengths: expected lengths > tokens_to_generate=128"):
        ruler_documents("niah_single_1", [128])
