"""lm-eval tasks on local files: mirrors of stock tasks and the small fixture tasks the tests run.

* :func:`write_local_task` writes a task YAML that runs a stock lm-eval task (its prompt, choices and metrics)
  on local ``.jsonl`` / ``.parquet`` files: YAML tasks ``include:`` the stock YAML and override
  ``dataset_path`` / ``dataset_kwargs.data_files``; the class-based Based tasks (``swde``, ``fda``,
  ``squad_completion``) point at :class:`LocalSWDE` / :class:`LocalFDA` / :class:`LocalSQuADCompletion`, which
  read the files instead of the hub. Offline runs from a plain file mirror of the data use this.
* :func:`write_fixture_tasks` makes tiny deterministic data in each task's schema and the YAMLs for it:
  ``dla_lambada_local`` (loglikelihood), ``dla_piqa_local`` (multiple choice), ``dla_swde_local`` (generation,
  class task), ``dla_niah_local`` (generation on :mod:`dla.eval.synthetic` NIAH prompts, metric
  ``string_match``) and ``dla_ppl_local`` (``loglikelihood_rolling``, word perplexity). Run them with
  ``--include_path DIR``.

The YAMLs name functions of this module (``!function dla.eval.local_tasks.…``), so nothing is generated but data
and configuration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from dla.eval.metrics import string_match
from dla.eval.synthetic import niah_grid, write_jsonl

FIXTURE_TASKS = ("dla_lambada_local", "dla_piqa_local", "dla_swde_local", "dla_niah_local", "dla_ppl_local")
"""Tasks :func:`write_fixture_tasks` writes."""


def _local_class_task(base):
    """A subclass of a Based class task that loads ``dataset_kwargs.data_files`` from its YAML config."""

    class Local(base):
        def __init__(self, config: Optional[dict] = None):
            kwargs = dict((config or {}).get("dataset_kwargs") or {})
            files = kwargs.get("data_files")
            if not files:
                raise ValueError(f"data_files: the local {base.__name__} task needs dataset_kwargs.data_files")
            self._data_files = files
            super().__init__()

        def download(self, *args, **kwargs) -> None:
            import datasets

            builder = _builder(next(iter(self._data_files.values())))
            self.dataset = datasets.load_dataset(builder, data_files=self._data_files)

    Local.__name__ = Local.__qualname__ = f"Local{base.__name__}"
    Local.__doc__ = f"lm-eval's ``{base.__name__}`` task reading local files (YAML ``dataset_kwargs.data_files``)."
    return Local


def _based_class(name: str):
    module = {"swde": "lm_eval.tasks.swde.task", "fda": "lm_eval.tasks.fda.task",
              "squad_completion": "lm_eval.tasks.squad_completion.task"}[name]
    cls = {"swde": "SWDE", "fda": "FDA", "squad_completion": "SQUADCompletion"}[name]
    import importlib

    return getattr(importlib.import_module(module), cls)


def __getattr__(name: str):
    """``LocalSWDE``, ``LocalFDA``, ``LocalSQuADCompletion``: built on first use (lm-eval is imported lazily)."""
    bases = {"LocalSWDE": "swde", "LocalFDA": "fda", "LocalSQuADCompletion": "squad_completion"}
    if name in bases:
        cls = _local_class_task(_based_class(bases[name]))
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


CLASS_TASKS = {"swde": "LocalSWDE", "fda": "LocalFDA", "squad_completion": "LocalSQuADCompletion"}


def _builder(path: Union[str, Path]) -> str:
    suffix = Path(str(path)).suffix
    if suffix in (".jsonl", ".json"):
        return "json"
    if suffix == ".parquet":
        return "parquet"
    raise ValueError(f"data_files: expected .jsonl, .json or .parquet files, got {str(path)!r}")


def _yaml(obj: dict) -> str:
    """A YAML document of plain values (JSON is YAML) plus ``!function`` tags for keys ending in ``!``."""
    lines = []
    for key, value in obj.items():
        if key.endswith("!"):
            lines.append(f"{key[:-1]}: !function {value}")
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def write_local_task(out_dir: Union[str, Path], task: str, data_files: Dict[str, Union[str, Path]], *,
                     name: Optional[str] = None, manager=None) -> Path:
    """Write ``<out_dir>/<name>.yaml``: the stock lm-eval ``task`` run on local files.

    Args:
        out_dir: the directory to pass as ``--include_path``.
        task: a stock lm-eval task (YAML task, or one of ``swde``, ``fda``, ``squad_completion``).
        data_files: split name -> ``.jsonl`` / ``.parquet`` file in the task's schema (e.g. ``{"validation": ...}``
            for ``piqa``); splits the stock task declares but ``data_files`` lacks are switched off (so a 0-shot
            run needs no training split).
        name: the new task's name; default ``<task>_local``.
        manager: an lm-eval ``TaskManager`` (built when ``None``).

    Returns:
        The YAML path.
    """
    from dla.eval.suite import check_task_names, task_manager

    manager = manager or task_manager()
    check_task_names([task], manager)
    if not data_files:
        raise ValueError("data_files: expected at least one split")
    files = {split: str(Path(p).resolve()) for split, p in data_files.items()}
    for p in files.values():
        _builder(p)
        if not Path(p).is_file():
            raise ValueError(f"data_files: {p!r} does not exist")
    name = name or f"{task}_local"
    entry = manager.task_index[task]
    if task in CLASS_TASKS:
        cfg = {"task": name, "class!": f"dla.eval.local_tasks.{CLASS_TASKS[task]}", "dataset_kwargs": {"data_files": files}}
    elif "class" in entry.cfg:
        raise ValueError(f"task: {task!r} is a Python class task without a local variant here; "
                         f"local class tasks: {', '.join(CLASS_TASKS)}")
    else:
        cfg = {"include": str(entry.yaml_path), "task": name, "dataset_path": _builder(next(iter(files.values()))),
               "dataset_name": None, "dataset_kwargs": {"data_files": files}, "tag": []}
        for key, split in (("training_split", "train"), ("validation_split", "validation"), ("test_split", "test")):
            declared = entry.cfg.get(key)
            if declared and declared not in files:
                cfg[key] = None
        if not any(entry.cfg.get(k) in files for k in ("validation_split", "test_split")):
            raise ValueError(f"data_files: {task!r} evaluates split "
                             f"{entry.cfg.get('test_split') or entry.cfg.get('validation_split')!r}; got "
                             f"{', '.join(files)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.yaml"
    path.write_text(_yaml(cfg))
    return path


def niah_process_results(doc: dict, results: List[str]) -> Dict[str, float]:
    """lm-eval ``process_results`` of ``dla_niah_local``: RULER's ``string_match`` of the generation."""
    return {"string_match": string_match(results[0], doc["target"])}


_WORDS = ("red", "blue", "green", "small", "large", "river", "stone", "garden", "house", "quiet", "bright",
          "window", "morning", "evening", "table", "letter", "market", "forest", "bridge", "candle")


def _sentence(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(_WORDS, n)).capitalize()


def fixture_documents(num: int, seed: int = 0) -> List[Dict[str, object]]:
    """``num`` tiny deterministic documents per schema (``lambada``, ``piqa``, ``swde``, ``ppl``)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num):
        words = [str(w) for w in rng.choice(_WORDS, 8)]
        a, b = _sentence(rng, 4), _sentence(rng, 4)
        out.append({
            "lambada": {"text": " ".join(words)},
            "piqa": {"goal": f"How do you reach the {words[0]} {words[1]}?", "sol1": a + ".", "sol2": b + ".",
                     "label": int(rng.integers(2))},
            "swde": {"doc_id": str(i), "key": "color", "value": words[2],
                     "text": f"name: {words[0]} {words[1]}. color: {words[2]}. place: {words[3]}.\ncolor:"},
            "ppl": {"page": " ".join(_sentence(rng, 12) + "." for _ in range(3))},
        })
    return out


def write_fixture_tasks(out_dir: Union[str, Path], *, num_docs: int = 6, niah_lengths: Sequence[int] = (64, 128),
                        niah_depths: Sequence[float] = (10.0, 90.0), tokenize=None,
                        seed: int = 0) -> Dict[str, Path]:
    """Write the fixture tasks (``FIXTURE_TASKS``) with their data into ``out_dir``.

    Args:
        num_docs: documents per task (NIAH: one per length x depth cell).
        niah_lengths, niah_depths: the NIAH grid (lengths in tokens of ``tokenize``, words when ``None``).
        tokenize: ``str -> sequence`` sizing the NIAH prompts (the model's tokenizer).
        seed: data seed (same seed, same files).

    Returns:
        task name -> YAML path.
    """
    import lm_eval

    out = Path(out_dir)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    docs = fixture_documents(num_docs, seed)
    for schema in ("lambada", "piqa", "swde", "ppl"):
        write_jsonl([d[schema] for d in docs], data / f"{schema}.jsonl")
    stock = Path(lm_eval.__file__).parent / "tasks"

    def local(name: str, include: Optional[str], split: str, schema: str, **extra) -> Path:
        files = {"data_files": {split: str((data / f"{schema}.jsonl").resolve())}}
        cfg = {"include": str(stock / include), "task": name, "dataset_path": "json", "dataset_name": None,
               "dataset_kwargs": files, "tag": [], **extra} if include else \
            {"task": name, **extra, "dataset_kwargs": files}
        (out / f"{name}.yaml").write_text(_yaml(cfg))
        return out / f"{name}.yaml"

    paths = {
        "dla_lambada_local": local("dla_lambada_local", "lambada/lambada_openai.yaml", "test", "lambada"),
        "dla_piqa_local": local("dla_piqa_local", "piqa/piqa.yaml", "validation", "piqa", training_split=None),
        "dla_swde_local": local("dla_swde_local", None, "validation", "swde",
                                **{"class!": "dla.eval.local_tasks.LocalSWDE"}),
    }

    niah = niah_grid("niah_single_1", niah_lengths, niah_depths, tokenize=tokenize, seed=seed)
    write_jsonl(niah, data / "niah.jsonl")
    paths["dla_niah_local"] = out / "dla_niah_local.yaml"
    paths["dla_niah_local"].write_text(_yaml({
        "task": "dla_niah_local", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str((data / "niah.jsonl").resolve())}},
        "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{input}}",
        "doc_to_target": "{{target[0]}}", "process_results!": "dla.eval.local_tasks.niah_process_results",
        "metric_list": [{"metric": "string_match", "aggregation": "mean", "higher_is_better": True}],
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 12, "do_sample": False},
        "metadata": {"version": 1.0}}))
    paths["dla_ppl_local"] = out / "dla_ppl_local.yaml"
    paths["dla_ppl_local"].write_text(_yaml({
        "task": "dla_ppl_local", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str((data / "ppl.jsonl").resolve())}},
        "test_split": "test", "output_type": "loglikelihood_rolling", "doc_to_text": "",
        "doc_to_target": "{{page}}", "should_decontaminate": False,
        "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"}, {"metric": "bits_per_byte"}],
        "metadata": {"version": 1.0}}))
    return paths


__all__ = ["FIXTURE_TASKS", "CLASS_TASKS", "write_local_task", "write_fixture_tasks", "fixture_documents",
           "niah_process_results"]
