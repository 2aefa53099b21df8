"""In-context ("recall-intensive") versions of Natural Questions, TriviaQA and DROP, as the JRT paper scores them.

Stock lm-eval 0.4.13 has NQ, TriviaQA and DROP only closed-book (``nq_open``, ``triviaqa``) or as plain
generation with F1 (``drop``). The Based / "Just read twice" evaluation (Arora et al., 2024) instead puts the
retrieved passage(s) in the prompt and asks for an answer that is written in them; it uses HazyResearch's
pre-processed validation sets (``hazyresearch/based_nq_{512,1024,2048}``, ``hazyresearch/based_triviaqa``,
``hazyresearch/based_drop``: columns ``context``, ``question``, ``answers``). The task files in
``dla/eval/tasks/`` (directory :data:`TASK_DIR`, indexed by :func:`dla.eval.suite.task_manager`) run that recipe:

* prompt (:func:`doc_to_text`): the context without a trailing copy of the question, trailing full stops
  removed, then ``". "`` and the question: ``"<context>. <question>"``, no instruction, zero-shot;
* greedy generation until the first newline, at most 48 tokens;
* metric ``contains`` (:func:`contains`): 1 when one of the gold answers occurs, case-insensitively, in the first
  line of the generation, else 0; the task's score is the mean.

Tasks: ``jrt_nq_512``, ``jrt_nq_1024``, ``jrt_nq_2048`` (the passage budget of the data set), ``jrt_triviaqa``
(the evidence document's ``[PAR]``, ``[DOC]``, ``[TLE]`` markers removed) and ``jrt_drop``; tag ``dla_jrt``.
Local copies of the data run through :func:`dla.eval.local_tasks.write_local_task` (``{"validation":
"nq.jsonl"}``), which overrides the data files and keeps everything else.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Sequence, Union

TASK_DIR = Path(__file__).resolve().parent / "tasks"
"""Directory of the project's own lm-eval task files."""

JRT_TASKS = ("jrt_nq_512", "jrt_nq_1024", "jrt_nq_2048", "jrt_triviaqa", "jrt_drop")
"""The task names defined in :data:`TASK_DIR`."""

_MARKERS = re.compile(r"\[(?:PAR|DOC|TLE)\]")


def _field(doc: dict, name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name}: every document needs a string {name!r} field, got {type(value).__name__} "
                         f"(fields: {', '.join(sorted(doc))})")
    return value


def build_prompt(context: str, question: str) -> str:
    """``"<context>. <question>"``: the context stripped, without trailing copies of the question (compared
    case-insensitively) and without trailing full stops, then the stripped question."""
    context, question = context.strip(), question.strip()
    if question:
        while context.lower().endswith(question.lower()):
            context = context[: len(context) - len(question)].rstrip()
    return context.strip().rstrip(".").rstrip() + ". " + question


def doc_to_text(doc: dict) -> str:
    """The prompt of an NQ or DROP document (fields ``context`` and ``question``)."""
    return build_prompt(_field(doc, "context"), _field(doc, "question"))


def doc_to_text_triviaqa(doc: dict) -> str:
    """The prompt of a TriviaQA document: :func:`doc_to_text` after removing ``[PAR]``, ``[DOC]``, ``[TLE]``."""
    return build_prompt(_MARKERS.sub("", _field(doc, "context")), _field(doc, "question"))


def answers_of(doc: dict) -> List[str]:
    """The non-empty gold answers of ``doc`` (``answers``: a list of strings, or one string)."""
    raw = doc.get("answers")
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not all(isinstance(a, str) for a in raw):
        raise ValueError(f"answers: expected a list of strings, got {raw!r}")
    answers = [a.strip() for a in raw if a.strip()]
    if not answers:
        raise ValueError(f"answers: the document has no non-empty answer (question {doc.get('question')!r})")
    return answers


def doc_to_target(doc: dict) -> str:
    """The first gold answer (what lm-eval logs as the target; scoring uses all of them)."""
    return answers_of(doc)[0]


def contains(prediction: str, answers: Union[str, Sequence[str]]) -> float:
    """1.0 if one of ``answers`` occurs case-insensitively in the first line of ``prediction``, else 0.0."""
    if not isinstance(prediction, str):
        raise ValueError(f"prediction: expected a string, got {type(prediction).__name__}")
    answers = [answers] if isinstance(answers, str) else list(answers)
    line = prediction.split("\n", 1)[0].casefold()
    return float(any(a.strip() and a.strip().casefold() in line for a in answers))


def process_results(doc: dict, results: List[str]) -> Dict[str, float]:
    """lm-eval ``process_results``: ``{"contains": contains(generation, answers)}``."""
    return {"contains": contains(results[0], answers_of(doc))}


__all__ = ["TASK_DIR", "JRT_TASKS", "build_prompt", "doc_to_text", "doc_to_text_triviaqa", "answers_of",
           "doc_to_target", "contains", "process_results"]
