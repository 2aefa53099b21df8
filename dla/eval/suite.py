"""The evaluation suites, checked against the installed lm-eval's task registry, and offline dataset caching.

``SUITES["paper"]`` is the DLA paper's evaluation (docs/evaluation.md has the table and its sources):

* commonsense (8, zero-shot log-likelihood): ``lambada_openai``, ``piqa``, ``hellaswag``, ``winogrande``,
  ``arc_easy``, ``arc_challenge``, ``openbookqa``, ``commonsense_qa``;
* in-context retrieval (6, generation, metric ``contains``): ``squad_completion``, ``swde``, ``fda`` (the Based
  recall tasks in stock lm-eval) and the project's ``jrt_nq_2048``, ``jrt_triviaqa``, ``jrt_drop``
  (:mod:`dla.eval.jrt`: stock lm-eval has NQ / TriviaQA / DROP only closed-book or as plain generation; these put
  the passage in the prompt as the JRT evaluation does);
* RULER NIAH: ``niah_single_1/2/3``, ``niah_multikey_1``, ``niah_multiquery``, ``niah_multivalue`` at 4K/8K/16K
  (``RULER_LENGTHS``, passed as lm-eval metadata ``max_seq_lengths``);
* LongBench (12 English tasks, metric ``score``).

Every name and metric here is checked against the installed lm-eval by :func:`verify_suite` (the registry
lists tasks and their configs without downloading data; :func:`task_manager` always indexes the project's task
files, :data:`dla.eval.jrt.TASK_DIR`, too); the tests run it.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

RULER_LENGTHS = (4096, 8192, 16384)
"""Context lengths of the RULER NIAH tasks in the paper."""


@dataclass(frozen=True)
class TaskSpec:
    """One evaluated task.

    Attributes:
        task: lm-eval task name.
        label: column name in the paper's tables.
        group: ``commonsense`` | ``retrieval`` | ``ruler`` | ``longbench`` | ``local``.
        metrics: metric names as lm-eval reports them (``acc``, ``acc_norm``, ``4096`` ...); the first is the
            headline number.
        scale: factor applied in tables (100 for accuracies, 1 for perplexity).
    """

    task: str
    label: str
    group: str
    metrics: Tuple[str, ...]
    scale: float = 100.0


_COMMONSENSE = (
    TaskSpec("lambada_openai", "LMB. acc", "commonsense", ("acc",)),
    TaskSpec("lambada_openai", "LMB. ppl", "commonsense", ("perplexity",), 1.0),
    TaskSpec("piqa", "PIQA", "commonsense", ("acc", "acc_norm")),
    TaskSpec("hellaswag", "Hella.", "commonsense", ("acc_norm", "acc")),
    TaskSpec("winogrande", "Wino.", "commonsense", ("acc",)),
    TaskSpec("arc_easy", "ARC-e", "commonsense", ("acc", "acc_norm")),
    TaskSpec("arc_challenge", "ARC-c", "commonsense", ("acc_norm", "acc")),
    TaskSpec("openbookqa", "OBQA", "commonsense", ("acc_norm", "acc")),
    TaskSpec("commonsense_qa", "CSQA", "commonsense", ("acc",)),
)
_RETRIEVAL = (
    TaskSpec("squad_completion", "SQuAD", "retrieval", ("contains",)),
    TaskSpec("jrt_triviaqa", "TQA", "retrieval", ("contains",)),
    TaskSpec("swde", "SWDE", "retrieval", ("contains",)),
    TaskSpec("fda", "FDA", "retrieval", ("contains",)),
    TaskSpec("jrt_nq_2048", "NQ", "retrieval", ("contains",)),
    TaskSpec("jrt_drop", "DROP", "retrieval", ("contains",)),
)
_RULER = tuple(TaskSpec(task, label, "ruler", tuple(str(n) for n in RULER_LENGTHS)) for task, label in (
    ("niah_single_1", "S-NIAH-1"), ("niah_single_2", "S-NIAH-2"), ("niah_single_3", "S-NIAH-3"),
    ("niah_multikey_1", "MK-NIAH-1"), ("niah_multiquery", "MQ-NIAH"), ("niah_multivalue", "MV-NIAH")))
_LONGBENCH = tuple(TaskSpec(f"longbench_{task}", label, "longbench", ("score",)) for task, label in (
    ("narrativeqa", "NQA"), ("qasper", "QQA"), ("multifieldqa_en", "MFQ"), ("hotpotqa", "HQA"),
    ("2wikimqa", "2WM"), ("musique", "Mus"), ("gov_report", "GvR"), ("qmsum", "QMS"), ("multi_news", "MNs"),
    ("trec", "TRC"), ("triviaqa", "TQA"), ("samsum", "SSM")))

SUITES: Dict[str, Tuple[TaskSpec, ...]] = {
    "commonsense": _COMMONSENSE,
    "retrieval": _RETRIEVAL,
    "ruler": _RULER,
    "longbench": _LONGBENCH,
    "paper": _COMMONSENSE + _RETRIEVAL + _RULER + _LONGBENCH,
}
"""Suites by name; ``paper`` is all four groups."""

ESSAY_DATASET = ("baber/paul_graham_essays", None)
"""The haystack RULER's essay tasks download at task-build time."""


def suite_tasks(suite: str) -> List[str]:
    """The distinct lm-eval task names of ``suite``, in order."""
    return list(dict.fromkeys(s.task for s in get_suite(suite)))


def get_suite(suite: str) -> Tuple[TaskSpec, ...]:
    """``SUITES[suite]``, or ``ValueError`` naming the suites there are."""
    if suite not in SUITES:
        raise ValueError(f"suite: unknown {suite!r}; allowed: {', '.join(SUITES)}")
    return SUITES[suite]


def task_manager(include_path: Optional[Sequence[str]] = None, metadata: Optional[dict] = None):
    """lm-eval's ``TaskManager`` indexing the installed task YAMLs, the project's own task files
    (:data:`dla.eval.jrt.TASK_DIR`: the JRT in-context NQ / TriviaQA / DROP) and ``include_path``; downloads
    nothing."""
    from lm_eval.tasks import TaskManager

    from dla.eval.jrt import TASK_DIR

    paths = [str(TASK_DIR)] + [str(p) for p in include_path or () if Path(p).resolve() != TASK_DIR]
    return TaskManager(include_path=paths, metadata=metadata)


def check_task_names(names: Iterable[str], manager) -> List[str]:
    """``names`` as a list if lm-eval knows every one (task, group or tag), else ``ValueError`` with suggestions."""
    names = list(names)
    if not names:
        raise ValueError("tasks: expected at least one task name")
    known = set(manager.all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        hints = []
        for n in unknown:
            close = difflib.get_close_matches(n, known, n=3, cutoff=0.6)
            hints.append(f"{n!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ValueError(f"tasks: unknown to the installed lm-eval: {'; '.join(hints)}. List the known ones with "
                         f"`lm-eval ls tasks` (local task files need --include-path)")
    return names


def _class_of(entry):
    """The Python class of a class-based (``class:``) task entry, imported from the lm-eval package."""
    path = str(entry.cfg["class"])
    module_path, _, name = path.rpartition(".")
    import lm_eval

    root = Path(lm_eval.__file__).parent
    rel = Path(module_path).resolve().relative_to(root.resolve())
    module = importlib.import_module("lm_eval." + ".".join(rel.parts))
    return getattr(module, name)


def task_metrics(task: str, manager) -> Tuple[str, ...]:
    """The metric names the installed lm-eval's ``task`` reports (read from its config; nothing downloaded)."""
    entry = manager.task_index[task]
    if "class" in entry.cfg:
        cls = _class_of(entry)
        return tuple(cls.aggregation(cls.__new__(cls)))
    return tuple(m["metric"] for m in entry.cfg.get("metric_list", []))


def task_dataset(task: str, manager) -> Optional[Tuple[str, Optional[str]]]:
    """``(dataset_path, dataset_name)`` the installed lm-eval loads for ``task``; ``None`` for generated data."""
    entry = manager.task_index[task]
    if "class" in entry.cfg:
        cls = _class_of(entry)
        return cls.DATASET_PATH, getattr(cls, "DATASET_NAME", None)
    path = entry.cfg.get("dataset_path")
    if not path:
        return ESSAY_DATASET if task in {s.task for s in _RULER} - {"niah_single_1"} else None
    return path, entry.cfg.get("dataset_name") or None


def load_task_code(task: str, manager) -> Dict[str, object]:
    """``task``'s config with its ``!function`` entries imported (what lm-eval does when it builds the task, before
    any data is read): a missing optional package shows here, not after a download.

    Returns:
        The config dict (functions as callables); for class tasks, ``{"class": cls}``.

    Raises:
        ValueError: the task's code does not import (e.g. ``lm-eval[ruler]`` / ``lm-eval[longbench]`` missing).
    """
    entry = manager.task_index[task]
    try:
        if "class" in entry.cfg:
            return {"class": _class_of(entry)}
        from lm_eval.tasks._yaml_loader import load_yaml

        cfg = load_yaml(entry.yaml_path, resolve_func=True)
    except ImportError as e:
        raise ValueError(f"{task}: its task code does not import ({e}); RULER needs `pip install "
                         f"\"lm-eval[ruler]\"`, LongBench `pip install \"lm-eval[longbench]\"` (both in dla's eval "
                         f"extra)") from e
    for key in ("process_results", "custom_dataset"):
        if cfg.get(key) is not None and not callable(cfg[key]):
            raise ValueError(f"{task}: {key} did not resolve to a function, got {cfg[key]!r}")
    return cfg


def verify_suite(suite: str, manager, *, load_code: bool = False) -> List[TaskSpec]:
    """Check that every task of ``suite`` exists in the installed lm-eval and reports the metrics named here.

    Args:
        load_code: also import every task's functions (:func:`load_task_code`: prompt, metric and RULER data
            generator code), which needs the optional packages the tasks use; still no data is read.

    Raises:
        ValueError: listing unknown tasks, missing metrics or task code that does not import.
    """
    specs = list(get_suite(suite))
    check_task_names([s.task for s in specs], manager)
    problems = []
    for spec in specs:
        have = task_metrics(spec.task, manager)
        missing = [m for m in spec.metrics if m not in have]
        if missing:
            problems.append(f"{spec.task}: {', '.join(missing)} not among its metrics {', '.join(have)}")
    if problems:
        raise ValueError("suite " + suite + ": " + "; ".join(problems))
    if load_code:
        for task in dict.fromkeys(s.task for s in specs):
            load_task_code(task, manager)
    return specs


def suite_datasets(suite: str, manager) -> List[Tuple[str, Optional[str]]]:
    """The distinct ``(path, name)`` Hugging Face datasets the tasks of ``suite`` load."""
    out = []
    for task in suite_tasks(suite):
        ds = task_dataset(task, manager)
        if ds is not None and ds not in out:
            out.append(ds)
    return out


def cache_datasets(suite: str, cache_dir: Optional[str] = None, nltk_dir: Optional[str] = None) -> List[str]:
    """Download every dataset of ``suite`` into the ``datasets`` cache (run once, on a machine with internet).

    Args:
        cache_dir: becomes ``HF_HOME`` (hub and datasets caches under it); default: the current ``HF_HOME``.
        nltk_dir: where NLTK's ``punkt_tab`` (RULER's essay sentence splitter) is downloaded; ``None`` skips it.

    Returns:
        One line per dataset: ``path [name]: split sizes``.
    """
    if cache_dir is not None:
        os.environ["HF_HOME"] = str(cache_dir)
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise ValueError("HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set: caching needs a machine with internet access")
    import datasets

    lines = []
    for path, name in suite_datasets(suite, task_manager()):
        data = datasets.load_dataset(path, name)
        lines.append(f"{path} [{name or 'default'}]: " + ", ".join(f"{k}={len(v)}" for k, v in data.items()))
        logger.info(lines[-1])
    if nltk_dir is not None and any(s.group == "ruler" for s in get_suite(suite)):
        import nltk

        nltk.download("punkt_tab", download_dir=str(nltk_dir))
        lines.append(f"nltk punkt_tab -> {nltk_dir}")
    return lines


__all__ = ["TaskSpec", "SUITES", "RULER_LENGTHS", "ESSAY_DATASET", "get_suite", "suite_tasks", "task_manager",
           "check_task_names", "task_metrics", "task_dataset", "load_task_code", "verify_suite", "suite_datasets",
           "cache_datasets"]
