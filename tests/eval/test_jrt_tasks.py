"""The project's JRT-style in-context NQ / TriviaQA / DROP tasks (dla/eval/tasks, dla.eval.jrt) end to end through
lm-eval on small generated jsonl files: the prompt, the generation request, the ``contains`` metric, with the tiny
DLA model and with a scripted model whose answers are known; and the retrieval group of the paper suite."""

import json

import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.model import LM  # noqa: E402

from dla.eval.checkpoint import load_checkpoint  # noqa: E402
from dla.eval.jrt import JRT_TASKS, TASK_DIR, contains, doc_to_text, doc_to_text_triviaqa, process_results  # noqa: E402
from dla.eval.lm_eval_model import DLALM  # noqa: E402
from dla.eval.local_tasks import write_local_task  # noqa: E402
from dla.eval.suite import SUITES, verify_suite  # noqa: E402

DOCS = {
    "nq": [
        {"context": "The Stone Bridge. The stone bridge crosses the quiet river near the market. It was built in "
                    "1820 by Anna Vale. who built the stone bridge?", "question": "who built the stone bridge?",
         "answers": ["Anna Vale", "Vale"]},
        {"context": "Green Hill is a town. Its bakery opened in spring...", "question": "when did the bakery open?",
         "answers": ["spring"]},
        {"context": "The red candle burns for nine hours.", "question": "how long does the red candle burn?",
         "answers": ["nine hours"]},
    ],
    "triviaqa": [
        {"context": "[DOC] [TLE] Blue Lake [PAR] Blue Lake lies in the north forest. Its depth is forty metres.",
         "question": "How deep is Blue Lake?", "answers": ["forty metres", "40 m"]},
        {"context": "[DOC] [TLE] Window [PAR] The morning window faces east.", "question": "Which way does the "
                    "morning window face?", "answers": ["east"]},
    ],
    "drop": [
        {"context": "The market had 12 stalls in May and 15 stalls in June. How many more stalls were there in June?",
         "question": "How many more stalls were there in June?", "answers": ["3", "three"]},
        {"context": "Evening games: the home team scored 21 points and the visitors 14.", "question": "Who scored "
                    "more points?", "answers": ["the home team"]},
    ],
}
SCHEMA = {"jrt_nq_512": "nq", "jrt_nq_1024": "nq", "jrt_nq_2048": "nq", "jrt_triviaqa": "triviaqa",
          "jrt_drop": "drop"}
EXPECTED_PROMPTS = {
    "nq": ["The Stone Bridge. The stone bridge crosses the quiet river near the market. It was built in 1820 by "
           "Anna Vale. who built the stone bridge?",
           "Green Hill is a town. Its bakery opened in spring. when did the bakery open?",
           "The red candle burns for nine hours. how long does the red candle burn?"],
    "triviaqa": ["Blue Lake  Blue Lake lies in the north forest. Its depth is forty metres. How deep is Blue Lake?",
                 "Window  The morning window faces east. Which way does the morning window face?"],
    "drop": ["The market had 12 stalls in May and 15 stalls in June. How many more stalls were there in June?",
             "Evening games: the home team scored 21 points and the visitors 14. Who scored more points?"],
}


@pytest.fixture(scope="module")
def jrt_local(tmp_path_factory, manager):
    """Local copies of the five JRT tasks (write_local_task on generated jsonl) and their TaskManager."""
    from dla.eval.suite import task_manager

    out = tmp_path_factory.mktemp("jrt")
    for schema, docs in DOCS.items():
        (out / f"{schema}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    names = {}
    for task, schema in SCHEMA.items():
        path = write_local_task(out, task, {"validation": out / f"{schema}.jsonl"}, manager=manager)
        names[task] = path.stem
    return names, task_manager([str(out)])


def test_prompt_and_metric_functions():
    assert doc_to_text(DOCS["nq"][0]) == EXPECTED_PROMPTS["nq"][0]  # trailing copy of the question removed
    assert doc_to_text({"context": "A b. Q? q?", "question": "q?"}) == "A b. q?"  # repeated copies, any case
    assert doc_to_text_triviaqa(DOCS["triviaqa"][1]) == EXPECTED_PROMPTS["triviaqa"][1]
    assert contains(" ANNA vale built it", ["Anna Vale"]) == 1.0
    assert contains("nobody\nAnna Vale", ["Anna Vale"]) == 0.0  # only the first line counts
    assert contains("it is 3", ["three", "3"]) == 1.0 and contains("", ["x"]) == 0.0
    assert process_results(DOCS["drop"][1], ["The Home Team."]) == {"contains": 1.0}
    with pytest.raises(ValueError, match="answers: the document has no non-empty answer"):
        process_results({"question": "q", "answers": ["", " "]}, ["x"])
    with pytest.raises(ValueError, match="answers: expected a list of strings"):
        process_results({"question": "q", "answers": [3]}, ["x"])
    with pytest.raises(ValueError, match="context: every document needs a string 'context' field"):
        doc_to_text({"question": "q"})


class ScriptedLM(LM):
    """Answers every generation request from a table: prompt -> reply (what lm-eval then scores)."""

    def __init__(self, replies):
        super().__init__()
        self.replies, self.requests = replies, []

    def generate_until(self, requests, disable_tqdm=False):
        self.requests += [r.args for r in requests]
        return [self.replies[r.args[0]] for r in requests]

    def loglikelihood(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError


def test_jrt_tasks_score_known_answers(jrt_local):
    names, manager = jrt_local
    # right answers in odd case on the first line for the first document of each set, the answer on the second
    # line only (not counted) or a wrong answer for the others
    replies, expected = {}, {}
    for schema, docs in DOCS.items():
        for i, (doc, prompt) in enumerate(zip(docs, EXPECTED_PROMPTS[schema])):
            replies[prompt] = f" {doc['answers'][-1].upper()} it is" if i == 0 else \
                (f" not sure\n{doc['answers'][0]}" if i == 1 else " no idea")
        expected[schema] = 1.0 / len(docs)
    lm = ScriptedLM(replies)
    out = lm_eval.simple_evaluate(model=lm, tasks=list(names.values()), task_manager=manager, num_fewshot=0)
    for task, local in names.items():
        assert out["results"][local]["contains,none"] == pytest.approx(expected[SCHEMA[task]]), task
    assert {p for p, _ in lm.requests} == set(replies)  # every prompt exactly as the recipe builds it
    assert all(kw["until"] == ["\n"] and kw["max_gen_toks"] == 48 and not kw["do_sample"] for _, kw in lm.requests)


def test_jrt_tasks_with_the_dla_model(ckpt, jrt_local):
    names, manager = jrt_local
    model, tok = load_checkpoint(ckpt, dtype="float64")
    lm = DLALM(pretrained=model, tokenizer=tok, batch_size=2, max_length=256, max_gen_toks=48)
    tasks = [names["jrt_nq_2048"], names["jrt_triviaqa"], names["jrt_drop"]]
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, num_fewshot=0, log_samples=True)
    for task in tasks:
        samples = out["samples"][task]
        schema = SCHEMA[task.removesuffix("_local")]
        assert [s["arguments"][0][0] for s in samples] == EXPECTED_PROMPTS[schema]
        scores = []
        for s in samples:
            reply = s["resps"][0][0]
            assert "\n" not in reply  # generation stopped at the first newline
            first = reply.lower()
            scores.append(float(any(a.lower() in first for a in s["doc"]["answers"])))
            assert s["contains"] == scores[-1]
        assert out["results"][task]["contains,none"] == pytest.approx(sum(scores) / len(scores))
    # the greedy reply is the model's own continuation of the prompt
    s = out["samples"][tasks[0]][0]
    import torch

    ids = torch.tensor([lm.tok_encode(s["arguments"][0][0])])
    ref = model.generate(ids, max_new_tokens=48, do_sample=False, pad_token_id=lm.eot_token_id)
    assert s["resps"][0][0] == tok.decode(ref[0, ids.shape[1]:].tolist()).split("\n")[0].split("<|endoftext|>")[0]


def test_paper_suite_retrieval_is_in_context(manager):
    specs = [s for s in verify_suite("paper", manager) if s.group == "retrieval"]
    assert [s.task for s in specs] == ["squad_completion", "jrt_triviaqa", "swde", "fda", "jrt_nq_2048", "jrt_drop"]
    assert all(s.metrics == ("contains",) for s in specs)
    from dla.eval.suite import suite_datasets

    data = suite_datasets("retrieval", manager)
    assert ("hazyresearch/based_nq_2048", None) in data and ("hazyresearch/based_triviaqa", None) in data
    assert ("hazyresearch/based_drop", None) in data and ("hazyresearch/based-squad", "default") in data
    assert set(JRT_TASKS) <= set(manager.all_tasks) and (TASK_DIR / "jrt_drop.yaml").is_file()
    assert not {"nq_open", "triviaqa", "drop"} & {s.task for s in SUITES["paper"]}


def test_harness_command_line_indexes_the_task_dir():
    from dla.eval.harness import with_task_dir

    assert with_task_dir(["run", "--tasks", "jrt_drop"]) == ["run", "--tasks", "jrt_drop", "--include_path",
                                                              str(TASK_DIR)]
    assert with_task_dir(["--model", "dla", "--tasks", "x"])[-2:] == ["--include_path", str(TASK_DIR)]  # legacy form
    mine = ["run", "--tasks", "x", "--include_path", "/my/tasks"]
    assert with_task_dir(mine) == mine and with_task_dir(["--help"])[-1] == str(TASK_DIR)
    assert with_task_dir([]) == [] and with_task_dir(["ls", "tasks"])[-1] == str(TASK_DIR)
