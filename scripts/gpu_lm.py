"""Small language models on the public-domain English corpus (configs/lm/): step times, training runs that resume,
loss by position to 4x the training length, held-out perplexity per domain, and the report over runs.

Needs the token corpus (``bash scripts/fetch_books.sh`` writes ``runs/books/tokens``, ~45 MB; carry that path to
the GPU machine). Every mode writes under ``--out`` (``$OUT`` on the GPU machine): JSON, a log, plots.

    # step time of all seven models at 2K (bf16 autocast, the trainer's own loop): sizes the runs
    python scripts/gpu_lm.py steptime --out $OUT/steptime

    # one run: at most --minutes of training (a checkpoint when time runs out; the same command resumes), then,
    # once its tokens are done, loss by position to 8K and per-domain perplexity, and for DLA models the
    # segmentation on held-out text (--seg-tokens) with a picture of one held-out paragraph (<run>/segview/)
    python scripts/gpu_lm.py train configs/lm/dla-gdn.yaml --seed 0 --tokens 50e6 --minutes 8 --out $OUT/runs

    # where a step's time goes: one fwd+bwd of the first training batch, packed (cu_seqlens, as the trainer runs
    # it) and as [B, T] rows, and torch.profiler's top operators of the packed step (OUT/profile/<recipe>.txt)
    python scripts/gpu_lm.py profile --recipes transformer mamba2 --out $OUT/profile

    # tables and plots over finished runs (CPU)
    python scripts/gpu_lm.py report OUT1/runs OUT2/runs --out docs/results/lm

Runs train in ``runs/lm/<recipe>-s<seed>`` (kept between calls on a warm machine, which is what resuming needs);
their ``log.jsonl``, ``summary.json``, ``loss.png`` and ``result.json`` are copied to ``--out/<recipe>-s<seed>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPES = ("transformer", "mamba2", "loglinear-mamba2", "dla-mamba2", "gdn", "loglinear-gdn", "dla-gdn")
LABELS = {"transformer": "Transformer", "mamba2": "Mamba-2", "loglinear-mamba2": "Log-Linear Mamba-2",
          "dla-mamba2": "DLA-Mamba-2", "gdn": "Gated DeltaNet", "loglinear-gdn": "Log-Linear GDN",
          "dla-gdn": "DLA-GDN"}


def environment() -> dict:
    """GPU, versions and commit: what every record names."""
    import torch

    import dla

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = os.environ.get("DLA_COMMIT", "unknown")
    return {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "python": platform.python_version(), "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            **{"torch": torch.__version__}, **dla.package_versions(("triton", "transformers"))}


def recipe_path(name: str) -> Path:
    """A recipe name of configs/lm/, a run config's YAML, or ``SWEEP.yaml:CELL_ID``: that study cell's config,
    written to a temporary YAML (``configs/study/capacity.yaml:T256-kv64__transformer__d64__lr1e-3__s0``)."""
    sweep_file, _, cell_id = name.partition(":")
    if cell_id and Path(sweep_file).suffix in (".yaml", ".yml"):
        import tempfile

        from dla.study import load_sweep
        from dla.train.config import dump_config

        cells = {c.id: c for c in load_sweep(sweep_file).cells}
        if cell_id not in cells:
            raise ValueError(f"recipe: {sweep_file} has no cell {cell_id!r} (dla study run {sweep_file} --list)")
        out = Path(tempfile.mkdtemp(prefix="dla_cell_"))
        dump_config(cells[cell_id].config(out / "run"), out / f"{cell_id}.yaml")
        return out / f"{cell_id}.yaml"
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path
    if name not in RECIPES:
        raise ValueError(f"recipe: expected a configs/lm/*.yaml path or one of {', '.join(RECIPES)}, got {name!r}")
    return REPO / "configs" / "lm" / f"{name}.yaml"


def _overrides(args, extra=()) -> list:
    out = [f"data.tokens={args.corpus}", "log.progress=false", "log.plot=true", *extra]
    if args.device == "cpu":  # the CPU smoke test: tiny everything
        out += ["train.device=cpu", "data.seq_len=64", "train.global_batch_size=2", "train.micro_batch_size=2",
                "train.warmup_steps=1", "train.eval_batches=1", "model.num_hidden_layers=1", "model.hidden_size=64",
                "model.num_attention_heads=2", "model.intermediate_size=128", "model.head_k_dim=16",
                "model.head_v_dim=32" if "mamba2" in args.recipe_name else "model.expand_v=2.0",
                "model.capacity=4", "model.max_position_embeddings=512"]
        out = [o for o in out if not (o.startswith("model.head_v_dim") and "gdn" in args.recipe_name)]
    return out


def steptime(args) -> int:
    """Train each recipe for ``--steps`` steps in the trainer's loop; record tokens/s of the last intervals."""
    from dla.train import load_config, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.recipes:
        args.recipe_name = name
        run_dir = Path(args.work) / f"steptime-{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        config = load_config(recipe_path(name), _overrides(args, [
            "train.max_tokens=null", f"train.max_steps={args.steps}", f"train.warmup_steps={min(5, args.steps)}",
            f"log.every={args.every}", "train.eval_batches=1", "checkpoint.every=0", f"out_dir={run_dir}",
            "log.plot=false"]))
        t0 = time.perf_counter()
        result = train(config)
        wall = time.perf_counter() - t0
        timed = [r for r in result.history if r.get("kind") == "train"][1:]  # the first interval warms up
        tps = sum(r["tokens_per_s"] for r in timed) / len(timed) if timed else result.tokens_per_s
        step_s = config.train.global_batch_size * config.data.seq_len / tps
        row = {"recipe": name, "params": result.num_params, "tokens_per_step":
               config.train.global_batch_size * config.data.seq_len, "step_s": step_s, "tokens_per_s": tps,
               "peak_mem_gib": max((r.get("peak_mem_gib", 0.0) for r in result.history), default=0.0),
               "wall_s": wall, "steps": result.steps}
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    record = {"environment": environment(), "command": " ".join(sys.argv), "rows": rows}
    (out / "steptime.json").write_text(json.dumps(record, indent=1) + "\n")
    print("| model | params | s/step | tokens/s | peak GiB |\n| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {LABELS.get(r['recipe'], r['recipe'])} | {r['params'] / 1e6:.2f}M | {r['step_s']:.3f} | "
              f"{r['tokens_per_s']:,.0f} | {r['peak_mem_gib']:.1f} |")
    return 0


def profile(args) -> int:
    """Time one forward + backward of the first training batch of each recipe (a name, or any run config's YAML, an
    MQAR one too), bf16 autocast on a GPU, in the trainer's form and others: packed (``cu_seqlens``; language data
    only), as ``[B, T]`` rows (no document masking), and as rows with logits at every position (DLA models compute
    them only where a label is scored); with ``--compile`` (or the config's ``train.compile``) the blocks compiled
    as the trainer compiles them. Writes torch.profiler's operators of the trainer's form, by device time, to
    ``<out>/<recipe>.txt``, and the times (the first step of each form apart), peak memory to ``profile.json``."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from dla.train import load_config
    from dla.train.data import build_task_data
    from dla.train.distributed import DistEnv
    from dla.train.loop import _Step
    from dla.train.model import build_model, build_model_config, compile_blocks

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for name in args.recipes:
        args.recipe_name = name
        path = recipe_path(name)  # once: a study cell's config is written to a new temporary file each call
        lm = load_config(path).data.task == "lm"
        config = load_config(path, (_overrides(args) if lm else [f"train.device={args.device}"])
                             + ([f"train.micro_batch_size={args.batch}", f"train.global_batch_size={args.batch}"]
                                if args.batch else []) + (["train.compile=true"] if args.compile else []))
        data = build_task_data(config.data, config.train.micro_batch_size, 0, DistEnv(device=device))
        batch = next(iter(data.train))
        model = build_model(build_model_config(config.model, data.vocab_size, data.eos_token_id)).to(device)
        if config.train.compile:
            compile_blocks(model)
        # (name, packed, logits only where scored): the trainer's form first
        forms = [("packed", True, True)] if "cu_seqlens" in batch else []  # MQAR batches: rows only
        forms += [("rows", False, True), ("rows_all_logits", False, False)]
        row = {"recipe": name, "compiled": config.train.compile, "tokens": batch["input_ids"].numel(),
               "scored": int((batch["labels"] != -100).sum()),
               "documents": int(batch["cu_seqlens"].numel() - 1) if "cu_seqlens" in batch else len(batch["input_ids"])}

        def step(packed: bool, scored: bool):
            fn = _Step(model, model, device, autocast, document_masking=packed)
            fn.scored_logits = fn.scored_logits and scored
            nll, _, labels = fn(batch)
            (nll / labels.numel()).backward()

        for form, packed, scored in forms:
            t0 = time.perf_counter()
            step(packed, scored)  # the first step of a form: compilation, autotuning
            sync()
            row[f"{form}_first_s"] = time.perf_counter() - t0
            step(packed, scored)
            sync()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for _ in range(args.reps):
                step(packed, scored)
            sync()
            row[f"{form}_s"] = (time.perf_counter() - t0) / args.reps
            if device.type == "cuda":
                row[f"{form}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch_profile(activities=activities) as prof:
            step(*forms[0][1:])
            sync()
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=args.top)
        (out / f"{path.stem}.txt").write_text(table + "\n")  # a cell's file is named by its id
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model
    record = {"environment": environment(), "command": " ".join(sys.argv), "rows": rows}
    (out / "profile.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


def _total(curves):
    total = curves[0]
    for curve in curves[1:]:
        total = total + curve
    return total


def segmentation_record(model, corpus, seq_len: int, args, out: Path, name: str) -> dict:
    """DLA's segmentation on held-out text (dla.eval.text_segstats, ``--seg-tokens`` tokens) and a picture of one
    held-out book paragraph (``--seg-paragraph`` tokens after an EOS, from an empty state) in ``out/segview``: HTML
    of every layer and head, a PNG of the last layer."""
    import torch

    from dla.eval.segview import token_strings, write_segment_view
    from dla.eval.text_segstats import heldout_paragraph, text_segmentation_stats
    from dla.layers import RecurrentMixer

    autocast = torch.bfloat16 if args.device != "cpu" else None
    t0 = time.perf_counter()
    stats = text_segmentation_stats(model, corpus, max_tokens=args.seg_tokens, seq_len=seq_len,
                                    batch_size=args.eval_batch, autocast=autocast)
    domain = "books" if "books" in corpus.domains else corpus.domains[0]
    record, offset, ids = heldout_paragraph(corpus, domain=domain, length=args.seg_paragraph)
    ids = [corpus.eos_id] + ids.tolist()
    device = next(model.parameters()).device
    last = max(i for i, block in enumerate(model.model.layers) if isinstance(block.mixer, RecurrentMixer))
    title = f"{name}: {record['source']} {record['name']}, tokens {offset}-{offset + len(ids) - 2} after an EOS"
    with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        paths = write_segment_view(model, ids, token_strings(corpus.tokenizer, ids), out / "segview",
                                   png_layers=[last], name="paragraph", title=title)
    stats["picture"] = {"domain": domain, "source": record["source"], "document": record["name"], "offset": offset,
                        "tokens": len(ids), "files": {k: str(v.relative_to(out)) for k, v in paths.items()}}
    stats["eval_s"] = time.perf_counter() - t0
    return stats


def evaluate_run(model, corpus, seq_len: int, args, name: str, out: Path) -> dict:
    """Loss by position on every held-out document of at least ``--length`` tokens (all, and per domain), the
    per-domain held-out perplexity at the training length and, for DLA models (policy dla / dla_unbounded), the
    segmentation statistics and picture (:func:`segmentation_record`, under ``segmentation``)."""
    import torch

    from dla.eval.position import domain_perplexity, loss_by_position
    from dla.eval.text_segstats import is_dla

    model.eval()
    autocast = torch.bfloat16 if args.device != "cpu" else None
    long_docs = corpus.documents("val", min_tokens=args.length)
    if args.max_docs:
        long_docs = long_docs[:args.max_docs]
    curves = {}
    for domain in sorted({r["domain"] for r, _ in long_docs}):
        tokens = [t for r, t in long_docs if r["domain"] == domain]
        curves[domain] = loss_by_position(model, tokens, length=args.length, bos_id=corpus.eos_id,
                                          train_length=seq_len, batch_size=args.eval_batch, chunk_size=seq_len,
                                          autocast=autocast, name=name)
    curves = {"all": _total(list(curves.values())), **curves}
    curves = {domain: curve.to_dict() for domain, curve in curves.items()}
    ppl = domain_perplexity(model, corpus, seq_len=seq_len, max_tokens=args.ppl_tokens, batch_size=args.eval_batch,
                            autocast=autocast)
    record = {"position": curves, "domain_ppl": ppl,
              "position_documents": [{k: r[k] for k in ("domain", "source", "name", "tokens")} for r, _ in long_docs]}
    if is_dla(model):
        record["segmentation"] = segmentation_record(model, corpus, seq_len, args, out, name)
    return record


def trained_seconds(run_dir: Path) -> float:
    """Training time a run directory already holds (its last logged ``time_s``; 0 for a new run)."""
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return 0.0
    times = [json.loads(line).get("time_s", 0.0) for line in log.read_text().splitlines() if line.strip()]
    return max(times, default=0.0)


def train_run(args) -> int:
    """Train one recipe and seed for at most ``--minutes`` (resuming its checkpoint), then evaluate it."""
    from dla.data.corpus import TokenCorpus
    from dla.train import load_config, train

    path = recipe_path(args.recipe)
    args.recipe_name = path.stem
    run = f"{path.stem}-s{args.seed}"
    run_dir = Path(args.work) / run
    out = Path(args.out) / run
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.FileHandler(out / "train.log"), logging.StreamHandler()])
    done_s = trained_seconds(run_dir)  # max_time_s counts the resumed parts too: this call adds --minutes
    extra = [f"train.seed={args.seed}", f"out_dir={run_dir}", f"train.max_tokens={int(float(args.tokens))}",
             f"train.max_time_s={done_s + args.minutes * 60}"]
    config = load_config(path, _overrides(args, extra + list(args.overrides)))
    t0 = time.perf_counter()
    result = train(config, resume="auto")
    record = {"recipe": path.stem, "label": LABELS.get(path.stem, path.stem), "seed": args.seed,
              "environment": environment(), "command": " ".join(sys.argv), "config": config.to_dict(),
              "params": result.num_params, "steps": result.steps, "tokens": result.tokens,
              "train_time_s": result.train_time_s, "tokens_per_s": result.tokens_per_s,
              "final_loss": result.final_loss, "val": result.metrics, "finished": not result.stopped_early,
              "wall_s_this_call": time.perf_counter() - t0}
    if not result.stopped_early:
        corpus = TokenCorpus(config.data.tokens)
        t1 = time.perf_counter()
        record.update(evaluate_run(result.model, corpus, config.data.seq_len, args, record["label"], out))
        record["eval_s"] = time.perf_counter() - t1
        ppl = record["domain_ppl"]
        logging.info("held-out ppl: %s", {k: round(v["ppl"], 2) for k, v in ppl.items()})
    (out / "result.json").write_text(json.dumps(record) + "\n")
    for name in ("log.jsonl", "summary.json", "loss.png", "config.yaml"):
        if (run_dir / name).is_file():
            shutil.copy(run_dir / name, out / name)
    logging.info("%s: %s after %d steps, %d tokens, %.0f tokens/s", run,
                 "finished" if record["finished"] else "stopped (run the same command to resume)", result.steps,
                 result.tokens, result.tokens_per_s)
    return 0


def _mean(values) -> float:
    values = [v for v in values if v is not None and v == v]
    return sum(values) / len(values) if values else float("nan")


def _num(value: float, digits: int = 3) -> str:
    return "–" if value != value else f"{value:.{digits}f}"


def segmentation_sections(found, out: Path) -> list:
    """Markdown sections of the DLA runs' segmentation statistics (mean over seeds) with their pictures: each
    model's lowest seed's ``segview`` files are copied to ``out/segview/<run>/``."""
    from dla.eval.text_segstats import SUMMARY_CLASSES, summary

    groups: dict = {}
    for run_dir, r in found:
        if "segmentation" in r:
            groups.setdefault(r["label"], []).append((run_dir, r))
    if not groups:
        return []
    names = {"paragraph_start": "paragraph", "line_start": "line", "sentence_start": "sentence",
             "word_initial": "word-initial", "word_internal": "word-internal", "digit": "digit",
             "punctuation": "punct.", "whitespace": "blank"}
    head = ("| model | seeds | boundaries / token | merges / token | slots live (mean / max) | tokens per slot at "
            "the end | boundaries / token at positions < 64 / later | " +
            " | ".join(f"lift: {names[c]}" for c in SUMMARY_CLASSES) + " |")
    lines = [head, "| --- | ---: |" + " ---: |" * (5 + len(SUMMARY_CLASSES))]
    layer_lines, domain_lines, pictures = [], [], []
    domains = list(dict.fromkeys(d for runs in groups.values() for _, r in runs
                                 for d in r["segmentation"]["layers"][0]["domains"]))
    for label, runs in groups.items():
        rows = [summary(r["segmentation"]) for _, r in runs]

        def m(key):
            return _mean([row[key] for row in rows])

        lines.append(f"| {label} | {len(rows)} | {_num(m('boundary_rate'))} | {_num(m('merge_rate'))} | "
                     f"{_num(m('slots_mean'), 1)} / {max(row['slots_max'] for row in rows)} | "
                     f"{_num(m('slot_length_end'), 1)} | {_num(m('early_rate'))} / {_num(m('late_rate'))} | " +
                     " | ".join(_num(m(f"lift_{c}"), 2) for c in SUMMARY_CLASSES) + " |")
        per_layer = [[layer["boundary_rate"] for layer in r["segmentation"]["layers"]] for _, r in runs]
        layer_lines.append(f"| {label} | " + " | ".join(_num(_mean(col)) for col in zip(*per_layer)) + " |")

        def domain_rate(r, d):
            return _mean([layer["domains"].get(d, {}).get("boundary_rate") for layer in r["segmentation"]["layers"]])

        domain_lines.append(f"| {label} | " + " | ".join(_num(_mean([domain_rate(r, d) for _, r in runs]))
                                                         for d in domains) + " |")
        run_dir, r = runs[0]
        picture = r["segmentation"].get("picture")
        if picture:
            dest = out / "segview" / f"{r['recipe']}-s{r['seed']}"
            dest.mkdir(parents=True, exist_ok=True)
            files = {}
            for key, rel in picture["files"].items():
                if (run_dir / rel).is_file():
                    shutil.copy(run_dir / rel, dest / Path(rel).name)
                    files[key] = (dest / Path(rel).name).relative_to(out).as_posix()
            pngs = [files[k] for k in sorted(files, key=lambda k: int(k[len("png_layer"):])
                                               if k.startswith("png_layer") else -1) if k.startswith("png_layer")]
            text = (f"**{label}** (seed {r['seed']}), {picture['source']} / {picture['document']}, "
                    f"{picture['tokens']} tokens from token {picture['offset']}: [every layer and head (HTML)]"
                    f"({files.get('html', '')})")
            if pngs:
                text += f"; last layer:\n\n![{label} segmentation]({pngs[-1]})"
            pictures.append(text)
    depth = max(len(r["segmentation"]["layers"]) for runs in groups.values() for _, r in runs)
    tokens = next(iter(groups.values()))[0][1]["segmentation"]["tokens"]
    return ["## DLA's segmentation on held-out text",
            f"Over {tokens:,} held-out tokens (windows of the training length spread over the domains), mean over "
            "layers and heads, then over seeds. A lift is a token class's boundary rate over the rate of all tokens "
            "(a segment's first token, always a boundary, excluded): above 1, slots open there more often than "
            "anywhere (docs/results.md says what each class is).", "\n".join(lines),
            "Boundaries per token by layer:",
            "| model | " + " | ".join(f"layer {i}" for i in range(depth)) + " |\n|" + " --- |" * (depth + 1) + "\n" +
            "\n".join(layer_lines),
            "Boundaries per token by domain:",
            "| model | " + " | ".join(domains) + " |\n|" + " --- |" * (len(domains) + 1) + "\n" + "\n".join(domain_lines),
            "Where boundaries fall on one held-out paragraph (colour: the slot holding a token after the last "
            "one; solid bar: a boundary still a slot start at the end; dashed: merged away later):",
            *pictures]


def report(args) -> int:
    """Tables and plots over the ``result.json`` files under the given directories."""
    from dla.eval.position import PositionCurve, plot_position_loss, position_table

    found = [(p.parent, json.loads(p.read_text())) for d in args.dirs for p in sorted(Path(d).rglob("result.json"))]
    found = [(d, r) for d, r in found if r.get("finished")]
    if not found:
        raise ValueError(f"dirs: no finished run (result.json with finished: true) under {args.dirs}")
    order = {name: i for i, name in enumerate(RECIPES)}
    found.sort(key=lambda dr: (order.get(dr[1]["recipe"], len(order)), dr[1]["seed"]))
    results = [r for _, r in found]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| model | seed | params | tokens | tokens/s | GPU | " +
             " | ".join(f"ppl {d}" for d in results[0]["domain_ppl"]) + " |",
             "|" + " --- |" * (6 + len(results[0]["domain_ppl"]))]
    for r in results:
        lines.append(f"| {r['label']} | {r['seed']} | {r['params'] / 1e6:.2f}M | {r['tokens'] / 1e6:.1f}M | "
                     f"{r['tokens_per_s']:,.0f} | {r['environment']['gpu']} | " +
                     " | ".join(f"{v['ppl']:.2f}" for v in r["domain_ppl"].values()) + " |")
    sections = ["## Held-out perplexity per domain (2K windows)", "\n".join(lines)]
    for domain in results[0]["position"]:
        groups: dict = {}
        for r in results:
            if domain in r["position"]:
                groups.setdefault(r["label"], []).append(PositionCurve.from_dict(r["position"][domain]))
        png = out / f"loss_by_position_{domain}.png"
        plot_position_loss(groups, png, title=f"Loss by position, held-out {domain} documents")
        sections += [f"## Loss by position: {domain} ({next(iter(groups.values()))[0].num_documents} documents)",
                     position_table(groups), f"![loss by position]({png.name})"]
    sections += segmentation_sections(found, out)
    (out / "lm_report.md").write_text("\n\n".join(sections) + "\n")
    print("\n\n".join(sections))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("steptime", "train", "profile"):
        p = sub.add_parser(mode)
        p.add_argument("--out", default=os.environ.get("OUT", "runs/lm_out"), help="results directory ($OUT)")
        p.add_argument("--corpus", default="runs/books/tokens", help="the token corpus (dla data tokenize)")
        p.add_argument("--work", default="runs/lm", help="where runs train (checkpoints stay here)")
        p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                       help="cpu: a tiny smoke test of the whole path (1 layer, 64-token windows)")
    p = sub.choices["steptime"]
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), help="recipe names (default: all seven)")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per model")
    p.add_argument("--every", type=int, default=5, help="steps per timed interval")
    p.set_defaults(fn=steptime)
    p = sub.choices["profile"]
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), help="recipe names (default: all seven)")
    p.add_argument("--reps", type=int, default=5, help="timed steps per form")
    p.add_argument("--top", type=int, default=25, help="operators listed per recipe")
    p.add_argument("--batch", type=int, default=0, help="sequences per step (default: the recipe's micro batch)")
    p.add_argument("--compile", action="store_true", help="torch.compile the blocks, as train.compile does")
    p.set_defaults(fn=profile)
    p = sub.choices["train"]
    p.add_argument("recipe", help="configs/lm/<name>.yaml or a name: " + ", ".join(RECIPES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokens", default="50e6", help="training tokens (the same for every model)")
    p.add_argument("--minutes", type=float, default=8.0, help="stop training (with a checkpoint) after this long")
    p.add_argument("--length", type=int, default=8192, help="positions scored per long held-out document")
    p.add_argument("--max-docs", type=int, default=0, help="at most this many long documents (0: all)")
    p.add_argument("--eval-batch", type=int, default=8, help="documents / windows per forward in evaluation")
    p.add_argument("--ppl-tokens", type=int, default=2_000_000, help="held-out tokens scored per domain")
    p.add_argument("--seg-tokens", type=int, default=65536,
                   help="held-out tokens of the segmentation statistics (DLA models), spread over the domains")
    p.add_argument("--seg-paragraph", type=int, default=200, help="tokens of the pictured held-out paragraph")
    p.add_argument("overrides", nargs="*", help="recipe overrides, section.field=value")
    p.set_defaults(fn=train_run)
    p = sub.add_parser("report")
    p.add_argument("dirs", nargs="+", help="directories holding <run>/result.json")
    p.add_argument("--out", default="docs/results/lm")
    p.set_defaults(fn=report)
    args = parser.parse_args(argv)
    if args.mode != "report" and args.device == "cpu":
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
