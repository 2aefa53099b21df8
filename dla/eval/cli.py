"""The ``dla eval*`` commands; :func:`add_eval_parser` adds them to the ``dla`` command's subparsers.

* ``dla eval CKPT [CKPT ...] --suite paper``: lm-eval suites or tasks; ``results.json`` + ``results.md`` side by
  side (``--suite local``: the generated fixture tasks, no data needed).
* ``dla eval-report RESULTS [RESULTS ...]``: one table from results of separate runs.
* ``dla eval-ppl CKPT [CKPT ...] --seq-len N``: held-out perplexity and loss per position; ``ppl.json``,
  ``ppl.md``, ``loss_per_position.png`` (all models on one plot).
* ``dla eval-needle CKPT [CKPT ...]``: needle depth x length grid; ``needle.json``, ``needle_<name>.png``.
* ``dla eval-segview CKPT --text FILE``: boundaries and merges on a text; HTML + PNG.
* ``dla eval-cache --suite paper``: download the suite's datasets once (machine with internet).

Every command prints where it wrote and returns 0; a bad argument (unknown task, not a DLA checkpoint, a length
past what the checkpoint supports) prints ``error: ...`` and returns 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, List, Optional


def one_line_errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``fn(args)``, with a ``ValueError`` (a bad argument, as the library words it) printed as one line
    ``dla <command>: error: ...`` and exit status 2, instead of a traceback."""
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except ValueError as e:
            print(f"dla {args.command}: error: {e}", file=sys.stderr)
            return 2
    run.__doc__ = fn.__doc__
    return run


def _csv(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _model_args(args: argparse.Namespace) -> dict:
    out = {"chunk_size": args.chunk_size, "truncation": args.truncation, "rolling": args.rolling}
    if args.max_gen_toks is not None:
        out["max_gen_toks"] = args.max_gen_toks
    return out


def _key_values(text: Optional[str]) -> dict:
    """``"seq_len=128,num_kv_pairs=16,alpha=0.1"`` -> ``{"seq_len": 128, "num_kv_pairs": 16, "alpha": 0.1}``."""
    out = {}
    for item in _csv(text or ""):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--mqar: expected KEY=VALUE,..., got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"--mqar: {key.strip()}: expected a number, got {value!r}") from None
    return out


def _eval(args: argparse.Namespace) -> int:
    from dla.eval.runner import run_eval

    limit = None if args.limit is None else (int(args.limit) if float(args.limit).is_integer() and args.limit >= 1
                                            else float(args.limit))
    paths = run_eval(args.checkpoints, args.out, suite=args.suite, tasks=_csv(args.tasks) if args.tasks else None,
                     include_path=args.include_path, limit=limit, num_fewshot=args.num_fewshot,
                     batch_size=args.batch_size, device=args.device, dtype=args.dtype, max_length=args.max_length,
                     ruler_lengths=args.ruler_lengths, model_args=_model_args(args), gen_kwargs=args.gen_kwargs,
                     log_samples=args.log_samples, seed=args.seed, mqar=_key_values(args.mqar))
    print(paths["md"].read_text())
    print(f"wrote {paths['json']} and {paths['md']}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from dla.eval.runner import load_results, write_results

    paths = write_results(load_results(args.results), args.out, args.suite)
    print(paths["md"].read_text())
    return 0


def _ppl(args: argparse.Namespace) -> int:
    from dla.eval.checkpoint import load_checkpoint
    from dla.eval.perplexity import evaluate_perplexity, heldout_documents
    from dla.eval.plots import loss_curves
    from dla.eval.runner import checkpoint_name

    results = []
    for ckpt in args.checkpoints:
        model, tok = load_checkpoint(ckpt, device=args.device or "cpu", dtype=args.dtype)
        docs = heldout_documents("files" if args.files else "stdlib", args.files or "", args.text_field,
                                 args.val_fraction, args.split_seed)
        name = checkpoint_name(ckpt, [r.name for r in results])
        results.append(evaluate_perplexity(model, tok, docs, seq_len=args.seq_len, train_length=args.train_length,
                                           max_documents=args.max_documents, min_tokens=args.min_tokens,
                                           batch_size=args.batch_size, chunk_size=args.chunk_size, name=name))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ppl.json").write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    lines = ["| model | docs | tokens | ppl | loss at train length | loss past it | still falling |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        t = r.trend()
        f = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {r.name} | {r.num_documents} | {r.num_tokens} | {r.perplexity:.3f} | "
                     f"{f(t['loss_at_train_length'])} | {f(t['loss_past_train_length'])} | "
                     f"{'—' if t['falling_past_train_length'] is None else t['falling_past_train_length']} |")
    (out / "ppl.md").write_text("\n".join(lines) + "\n")
    png = loss_curves(results, out / "loss_per_position.png")
    print("\n".join(lines))
    print(f"wrote {out / 'ppl.json'}, {out / 'ppl.md'} and {png}")
    return 0


def _needle(args: argparse.Namespace) -> int:
    from dla.eval.checkpoint import load_checkpoint
    from dla.eval.needle import needle_sweep, sweep_summary
    from dla.eval.plots import needle_heatmap
    from dla.eval.runner import checkpoint_name

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report, names = {}, []
    for ckpt in args.checkpoints:
        model, tok = load_checkpoint(ckpt, device=args.device or "cpu", dtype=args.dtype)
        name = checkpoint_name(ckpt, names)
        names.append(name)
        recs = needle_sweep(model, tok, lengths=args.lengths, depths=args.depths, task=args.task,
                            num_examples=args.examples, max_new_tokens=args.max_new_tokens,
                            batch_size=args.batch_size, chunk_size=args.chunk_size, seed=args.seed)
        train = args.train_length or model.config.max_position_embeddings
        png = needle_heatmap([(r["length"], r["depth"], r["score"]) for r in recs],
                             out / f"needle_{name.replace('/', '_')}.png", title=f"{args.task}: {name}",
                             train_length=train)
        report[name] = {"summary": sweep_summary(recs, train), "records": recs, "png": str(png)}
        print(f"{name}: {report[name]['summary']} -> {png}")
    (out / "needle.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _segview(args: argparse.Namespace) -> int:
    from dla.eval.checkpoint import load_checkpoint
    from dla.eval.segview import segment_view

    if (args.text is None) == (args.string is None):
        raise ValueError("text: pass exactly one of --text FILE and --string TEXT")
    text = Path(args.text).read_text(encoding="utf-8") if args.text else args.string
    model, tok = load_checkpoint(args.checkpoint, device=args.device or "cpu", dtype=args.dtype)
    paths = segment_view(model, tok, text, args.out, max_tokens=args.max_tokens, layers=args.layers,
                         heads=args.heads)
    for p in paths.values():
        print(f"wrote {p}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from dla.eval.suite import cache_datasets

    for line in cache_datasets(args.suite, args.cache_dir, args.nltk_dir):
        print(line)
    return 0


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16", "float64"])
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=2048, help="tokens per forward through the cache")


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval``, ``eval-report``, ``eval-ppl``, ``eval-needle``, ``eval-segview`` and ``eval-cache`` to the
    ``dla`` command's ``subparsers`` (each sets ``fn``)."""
    from dla.eval.suite import RULER_LENGTHS, SUITES

    p = subparsers.add_parser("eval", help="lm-eval suites/tasks on checkpoints; results.json + results.md",
                              description="Run lm-eval on DLA checkpoints and write the results side by side.")
    p.add_argument("checkpoints", nargs="+", help="DLA checkpoint directories (tokenizer inside, except for mqar)")
    p.add_argument("--suite", choices=[*SUITES, "local"], default=None,
                   help="paper = commonsense + retrieval + ruler + longbench; local = generated fixture tasks")
    p.add_argument("--tasks", default=None, help="comma-separated lm-eval task names (with or instead of --suite); "
                   "mqar: multi-query associative recall, scored here (no tokenizer needed)")
    p.add_argument("--mqar", default=None, metavar="KEY=VALUE,...",
                   help="mqar settings (seq_len, num_kv_pairs, vocab_size, alpha, num_examples, num_passes, seed); "
                        "default: the held-out split of the dla train run that wrote the checkpoint")
    p.add_argument("--include-path", action="append", default=None, help="directory of extra task YAMLs")
    p.add_argument("--limit", type=float, default=None, help="documents per task (int) or fraction (smoke tests)")
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per request (default: the checkpoint's limit or max_position_embeddings; RULER "
                        "tasks: the largest --ruler-lengths)")
    p.add_argument("--ruler-lengths", type=int, nargs="+", default=list(RULER_LENGTHS))
    p.add_argument("--max-gen-toks", type=int, default=None, help="default generation budget of tasks that set none")
    p.add_argument("--gen-kwargs", default=None, help="lm-eval generation overrides, e.g. max_gen_toks=32")
    p.add_argument("--truncation", choices=["left", "error"], default="left")
    p.add_argument("--rolling", choices=["windows", "carry"], default="windows")
    p.add_argument("--log-samples", action="store_true", help="keep per-sample records in results.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="eval_results")
    _model_options(p)
    p.set_defaults(fn=one_line_errors(_eval))

    p = subparsers.add_parser("eval-report", help="one side-by-side table from several results.json")
    p.add_argument("results", nargs="+", help="results.json files or the directories holding them")
    p.add_argument("--suite", choices=list(SUITES), default=None, help="label rows as in this suite")
    p.add_argument("--out", default="eval_results")
    p.set_defaults(fn=one_line_errors(_report))

    p = subparsers.add_parser("eval-ppl", help="held-out perplexity and loss per position (+ curves PNG)")
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--seq-len", type=int, required=True, help="predictions per document (may pass training length)")
    p.add_argument("--train-length", type=int, default=None, help="default: config.max_position_embeddings")
    p.add_argument("--files", default=None, help="held-out files (file, directory or glob); default: the stdlib "
                                                 "corpus' validation split")
    p.add_argument("--text-field", default="text")
    p.add_argument("--val-fraction", type=float, default=0.01, help="validation split of the source (0: all)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--max-documents", type=int, default=200)
    p.add_argument("--min-tokens", type=int, default=1, help="skip shorter documents (= --seq-len: same docs "
                                                             "in every bucket)")
    p.add_argument("--out", default="eval_ppl")
    _model_options(p)
    p.set_defaults(fn=one_line_errors(_ppl))

    p = subparsers.add_parser("eval-needle", help="needle depth x length grid and heat map")
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--task", default="niah_single_1")
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--depths", type=float, nargs="+", default=[0, 25, 50, 75, 100])
    p.add_argument("--examples", type=int, default=4, help="examples per cell")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--train-length", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="eval_needle")
    _model_options(p)
    p.set_defaults(fn=one_line_errors(_needle))

    p = subparsers.add_parser("eval-segview", help="DLA boundaries and merges on a text (HTML + PNG)")
    p.add_argument("checkpoint")
    p.add_argument("--text", default=None, help="a UTF-8 text file")
    p.add_argument("--string", default=None, help="the text itself")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--layers", type=int, nargs="+", default=None)
    p.add_argument("--heads", type=int, nargs="+", default=None)
    p.add_argument("--out", default="eval_segview")
    _model_options(p)
    p.set_defaults(fn=one_line_errors(_segview))

    p = subparsers.add_parser("eval-cache", help="download a suite's datasets once (needs internet)")
    p.add_argument("--suite", choices=list(SUITES), default="paper")
    p.add_argument("--cache-dir", default=None, help="becomes HF_HOME (default: the current one)")
    p.add_argument("--nltk-dir", default=None, help="where to put NLTK punkt_tab (RULER essay tasks)")
    p.set_defaults(fn=one_line_errors(_cache))


def main(argv=None) -> int:
    """``python -m dla.eval.cli ...``: the eval commands on their own (same as ``dla eval ...``)."""
    parser = argparse.ArgumentParser(prog="dla")
    add_eval_parser(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
