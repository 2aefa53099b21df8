"""``dla bench generate``: prefill and greedy decoding of whole models, DLA next to its peers at one size.

Four language models of about 125M parameters (random weights) built from :class:`~dla.models.DLAConfig`:

- ``dla``: the backbone (Gated DeltaNet by default) read through the DLA policy (``capacity`` slots);
- ``single``: the same backbone alone (one state);
- ``fenwick``: the same backbone with Log-Linear's Fenwick levels;
- ``transformer``: softmax attention with a KV cache, its MLP widened so that it has the backbone's parameters.

For every prompt length, after an untimed warm-up run at that length (kernels compile and tune per shape): one
prefill of the prompt (the chunked op; SDPA for attention), then greedy decoding by a manual loop over the model's
cache (recurrent layers step with :func:`~dla.ops.dla_step`). Each row records prefill and decode tokens/s, ms per
decoded token, the peak memory (CUDA) and the size of the cache at the end. On CUDA the recurrent models of fixed
cache width are also decoded with their step captured in a CUDA graph (the eager step of a 125M model is bound by
kernel launches), and the row says whether that gave the eager tokens.
The JSON also records the GPU, the library versions, the model shapes and parameter counts, and the date.

Only the standard library is imported at module level: the ``dla`` command builds its parser from
:func:`add_generate_bench_parser` without loading torch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

if TYPE_CHECKING:
    from dla.models import DLAConfig

MODELS = ("dla", "single", "fenwick", "transformer")
"""The compared models, in table order."""

LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
"""Default prompt lengths (tokens)."""

SIZES = {
    # name: shared sizes of every model, and the recurrent backbones' head layout
    "125m": dict(vocab_size=32000, hidden_size=768, num_hidden_layers=12, intermediate_size=1536,
                 num_attention_heads=12, gdn=dict(num_heads=6, head_k_dim=128, expand_v=2.0),
                 mamba2=dict(num_heads=24, head_k_dim=128, expand=2)),
    "tiny": dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
                 gdn=dict(num_heads=2, head_k_dim=8, expand_v=2.0), mamba2=dict(num_heads=2, head_k_dim=8, expand=2)),
}
"""``125m``: GPT-2-small width and depth, tied 32K embeddings (~124M parameters); ``tiny``: CPU tests."""


@dataclass
class Row:
    model: str
    prompt_tokens: int
    new_tokens: int
    batch: int
    prefill_s: Optional[float] = None
    decode_s: Optional[float] = None
    prefill_tokens_per_s: Optional[float] = None
    decode_tokens_per_s: Optional[float] = None
    generate_tokens_per_s: Optional[float] = None
    decode_ms_per_token: Optional[float] = None
    graph_decode_tokens_per_s: Optional[float] = None
    graph_decode_ms_per_token: Optional[float] = None
    graph_matches_eager: Optional[bool] = None
    peak_mib: Optional[float] = None
    cache_mib: Optional[float] = None
    note: str = ""


def model_configs(size: str = "125m", backbone: str = "gdn", max_positions: int = 65536 + 256, capacity: int = 30,
                  tau: float = 0.6, models: Sequence[str] = MODELS) -> Dict[str, DLAConfig]:
    """The benchmark's configs, by model name.

    Args:
        size: ``125m`` or ``tiny`` (see :data:`SIZES`).
        backbone: ``gdn`` or ``mamba2``, the recurrent mixer of ``dla``, ``single`` and ``fenwick``.
        max_positions: the longest prompt plus the generated tokens (attention's limit, Fenwick's levels).
        capacity, tau: the DLA policy's slots and boundary threshold.
        models: which of :data:`MODELS` to build, in this order.

    The transformer's SwiGLU width is chosen so that its parameter count matches the ``single`` model's (to the
    nearest multiple of 32 channels); ``dla`` and ``fenwick`` add only their ``lam`` projections (``125m``, C = 30:
    +1.3% / +0.8% on Gated DeltaNet's 6 heads, +5.9% / +3.6% on Mamba-2's 24).
    """
    import torch

    from dla.models import DLAConfig, DLAForCausalLM

    if size not in SIZES:
        raise ValueError(f"size: unknown {size!r}; allowed: {', '.join(SIZES)}")
    if backbone not in ("gdn", "mamba2"):
        raise ValueError(f"backbone: expected 'gdn' or 'mamba2', got {backbone!r}")
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        raise ValueError(f"models: expected some of {', '.join(MODELS)}, got {list(models)}")
    sizes = dict(SIZES[size])
    heads = sizes.pop(backbone)
    sizes.pop("gdn" if backbone == "mamba2" else "mamba2")
    attention_heads = sizes.pop("num_attention_heads")
    shared = dict(sizes, tie_word_embeddings=True, max_position_embeddings=max_positions, use_cache=True)

    def recurrent(policy: str) -> DLAConfig:
        return DLAConfig(**shared, **heads, mixer=backbone, policy=policy, capacity=capacity, tau=tau)

    def params(config: DLAConfig) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in DLAForCausalLM(config).parameters())

    configs = {name: recurrent(name) for name in ("dla", "single", "fenwick") if name in models}
    if "transformer" in models:
        narrow = DLAConfig(**{**shared, "intermediate_size": 32}, mixer="attention",
                           num_attention_heads=attention_heads)
        target = params(configs["single"] if "single" in configs else recurrent("single"))
        per_channel = 3 * sizes["hidden_size"] * sizes["num_hidden_layers"]
        width = max(32, 32 + 32 * round((target - params(narrow)) / per_channel / 32))
        configs["transformer"] = DLAConfig(**{**shared, "intermediate_size": width}, mixer="attention",
                                           num_attention_heads=attention_heads)
    return {name: configs[name] for name in dict.fromkeys(models)}


def run_generate_bench(lengths: Sequence[int] = LENGTHS, new_tokens: int = 256, models: Sequence[str] = MODELS,
                       backbone: str = "gdn", device: str = "cuda", dtype: Optional[str] = None,
                       batch_size: int = 1, tiny: bool = False, capacity: int = 30, tau: float = 0.6,
                       max_call_s: float = 120.0, cuda_graph: bool = True, seed: int = 0,
                       out: Optional[Path] = None, progress: bool = True) -> dict:
    """Prefill ``lengths`` prompts and greedily generate ``new_tokens`` with every model; return the results.

    Args:
        lengths: prompt lengths in tokens.
        new_tokens: tokens generated after each prompt (``>= 2``: the prefill yields the first, each decode step
            one more).
        models: a subset of :data:`MODELS`.
        backbone: ``gdn`` or ``mamba2``.
        device: ``cuda`` (what the benchmark is for) or ``cpu`` (tests, with ``tiny``).
        dtype: ``bfloat16`` | ``float16`` | ``float32``; default ``bfloat16`` on CUDA, ``float32`` on CPU.
        batch_size: prompts decoded together.
        tiny: the ``tiny`` sizes instead of ``125m``.
        capacity, tau: the DLA policy's.
        max_call_s: once a model takes longer than this for one length, its longer lengths are skipped.
        cuda_graph: on CUDA, also time decoding with the step captured in a CUDA graph (recurrent models of fixed
            cache width): the eager step is bound by kernel launches at this size.
        seed: seeds the weights and the prompts.
        out: write the JSON here too (rewritten after every row).
        progress: a progress bar (tqdm) on stderr.

    Returns:
        ``{"meta": {...}, "models": {name: {"params", "config"}}, "rows": [Row as dict, ...]}``.

    Example:
        >>> result = run_generate_bench(device="cpu", tiny=True, lengths=[32], new_tokens=4, progress=False)
        >>> sorted({r["model"] for r in result["rows"]})
        ['dla', 'fenwick', 'single', 'transformer']
    """
    import torch

    from dla.models import DLAForCausalLM

    lengths = [int(n) for n in lengths]
    if not lengths or min(lengths) < 1:
        raise ValueError(f"lengths: expected positive prompt lengths, got {lengths}")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 2:
        raise ValueError(f"new_tokens: expected an int >= 2, got {new_tokens!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' asked for but no CUDA GPU is visible (use device='cpu' with tiny=True)")
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    dtype = dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    if dtype not in dtypes:
        raise ValueError(f"dtype: unknown {dtype!r}; allowed: {', '.join(dtypes)}")
    configs = model_configs("tiny" if tiny else "125m", backbone, max(lengths) + new_tokens, capacity, tau, models)
    meta = _meta(dev, dtype, batch_size, new_tokens, backbone, capacity, tau, tiny)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
    cases = [(name, T) for name in configs for T in sorted(lengths)]
    bar = _progress(len(cases), progress)
    rows: List[Row] = []
    info: Dict[str, dict] = {}
    result = {"meta": meta, "models": info, "rows": []}
    for name, config in configs.items():
        torch.manual_seed(seed)
        with dev:
            model = DLAForCausalLM(config).to(dtypes[dtype]).eval()
        info[name] = {"params": sum(p.numel() for p in model.parameters()), "config": config.to_diff_dict()}
        gen = torch.Generator(device=dev).manual_seed(seed)
        skip = ""
        for T in sorted(lengths):
            row = Row(model=name, prompt_tokens=T, new_tokens=new_tokens, batch=batch_size, note=skip)
            if not skip:
                prompt = torch.randint(0, config.vocab_size, (batch_size, T), device=dev, generator=gen)
                try:
                    _measure(row, model, prompt, new_tokens, cuda_graph)
                except torch.cuda.OutOfMemoryError:
                    row.note = skip = "out of memory"
                if row.prefill_s is not None and row.prefill_s + row.decode_s > max_call_s:
                    skip = f"skipped: {T} tokens took {row.prefill_s + row.decode_s:.0f} s > max_call_s"
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            bar(f"{name} T={T}")
            result = {"meta": meta, "models": info, "rows": [asdict(r) for r in rows]}
            if out is not None:  # after every row: a run cut short keeps what it measured
                out.write_text(json.dumps(result, indent=1))
        del model
    return result


def _generate(model, prompt, new_tokens: int):
    """Greedy decoding over the model's cache: returns ``(generated [B, new_tokens], cache, t_prefill, t_end)``.

    No host synchronisation inside the loop (``argmax`` stays on the device), so the GPU runs ahead of Python."""
    import torch

    sync = torch.cuda.synchronize if prompt.is_cuda else (lambda: None)
    with torch.inference_mode():
        sync()
        start = time.perf_counter()
        out = model(prompt, use_cache=True, logits_to_keep=1)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        sync()
        prefilled = time.perf_counter()
        tokens = [token]
        for _ in range(new_tokens - 1):
            token = model(token, past_key_values=cache, logits_to_keep=1).logits.argmax(-1)
            tokens.append(token)
        sync()
        end = time.perf_counter()
    return torch.cat(tokens, 1), cache, prefilled - start, end - prefilled


def _measure(row: Row, model, prompt, new_tokens: int, cuda_graph: bool) -> None:
    """Warm up at this length (kernel compilation and autotuning specialise on shapes), then time one run; then,
    where possible, the CUDA-graph decode."""
    import torch

    cuda = prompt.is_cuda
    _generate(model, prompt, 3)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    generated, cache, row.prefill_s, row.decode_s = _generate(model, prompt, new_tokens)
    B, T = prompt.shape
    row.prefill_tokens_per_s = B * T / row.prefill_s
    row.decode_tokens_per_s = B * (new_tokens - 1) / row.decode_s
    row.generate_tokens_per_s = B * new_tokens / (row.prefill_s + row.decode_s)
    row.decode_ms_per_token = 1e3 * row.decode_s / (new_tokens - 1)
    row.cache_mib = cache.nbytes() / 2 ** 20
    if cuda:
        row.peak_mib = torch.cuda.max_memory_allocated() / 2 ** 20
    del cache
    if cuda_graph and cuda and new_tokens >= 4:
        try:
            graphed = _graph_decode(model, prompt, new_tokens)
        except Exception as e:  # noqa: BLE001 - a step that cannot be captured is reported, not fatal
            row.note = f"cuda graph: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            graphed = None
        if graphed is not None:
            tokens, seconds = graphed
            row.graph_decode_tokens_per_s = B * (new_tokens - 3) / seconds
            row.graph_decode_ms_per_token = 1e3 * seconds / (new_tokens - 3)
            row.graph_matches_eager = bool(torch.equal(tokens, generated))


def _graph_decode(model, prompt, new_tokens: int):
    """Greedy decoding with one decode step captured in a CUDA graph and replayed: ``(tokens [B, new_tokens],
    seconds of the replays)``, or ``None`` where the cache is not of fixed shapes (attention, ``dla_unbounded``)."""
    import torch

    if model.config.policy == "dla_unbounded" or "attention" in model.config.layer_mixers:
        return None
    with torch.inference_mode():
        step, token = _static_step(model, prompt)
        tokens = [token.clone()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # capture needs warmed-up kernels, run off the default stream
            for _ in range(2):
                step()
                tokens.append(token.clone())
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(new_tokens - 3):
            graph.replay()
            tokens.append(token.clone())
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        del graph
    return torch.cat(tokens, 1), seconds


def _static_step(model, prompt):
    """Prefill ``prompt``; return ``(step, token)``: ``step()`` feeds ``token [B, 1]`` and overwrites it with the
    next greedy token, reading and writing the recurrent caches in the same buffers every time (what a captured
    graph replays). The recurrent step has fixed shapes and no host synchronisation, so it can be captured whole."""
    out = model(prompt, use_cache=True, logits_to_keep=1)
    cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    static = [(layer.conv, layer.state) for layer in cache.layers]
    fields = ("slots", "counts", "info", "num_slots", "open_norm")

    def step() -> None:
        logits = model(token, past_key_values=cache, logits_to_keep=1).logits
        for layer, (conv, state) in zip(cache.layers, static):
            conv.copy_(layer.conv)
            for name in fields:
                getattr(state, name).copy_(getattr(layer.state, name))
            layer.conv, layer.state = conv, state
        token.copy_(logits.argmax(-1))

    return step, token


def _meta(dev, dtype: str, batch_size: int, new_tokens: int, backbone: str, capacity: int, tau: float,
          tiny: bool) -> dict:
    import torch
    import transformers

    import dla

    meta = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__, "dla": dla.__version__,
            "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "dtype": dtype, "batch": batch_size, "new_tokens": new_tokens, "backbone": backbone,
            "capacity": capacity, "tau": tau, "size": "tiny" if tiny else "125m",
            "decoding": "greedy, manual loop over the model's cache (logits_to_keep=1)",
            "peak_mib": "torch.cuda.max_memory_allocated over prefill + decode, weights included",
            **dla.package_versions(("triton",))}
    return meta


def _progress(total: int, enabled: bool):
    if not enabled:
        return lambda label: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc="bench generate")

    def step(label: str) -> None:
        bar.update()
        bar.set_postfix_str(label)
        if bar.n == total:
            bar.close()
    return step


def generate_markdown(result: dict) -> str:
    """Tables of decode tokens/s, prefill tokens/s and peak MiB: rows = models, columns = prompt lengths."""
    meta, rows = result["meta"], result["rows"]
    params = {name: _count(m["params"]) for name, m in result["models"].items()}
    lengths = sorted({r["prompt_tokens"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = [f"{meta['device']} · torch {meta['torch']} · transformers {meta['transformers']} · {meta['dtype']} · "
             f"batch {meta['batch']} · {meta['new_tokens']} new tokens · backbone {meta['backbone']} · "
             f"{meta['date']}", ""]
    for key, title, digits in (("decode_tokens_per_s", "decode tokens/s (eager)", 0),
                               ("graph_decode_tokens_per_s", "decode tokens/s (CUDA graph)", 0),
                               ("prefill_tokens_per_s", "prefill tokens/s", 0),
                               ("peak_mib", "peak MiB (weights included)", 0), ("cache_mib", "cache MiB", 1)):
        if all(r[key] is None for r in rows):
            continue
        lines += [f"**{title}**", "", "| model | params | " + " | ".join(_length(T) for T in lengths) + " |",
                  "|---|---|" + "---|" * len(lengths)]
        for name in models:
            cells = []
            for T in lengths:
                r = next((x for x in rows if x["model"] == name and x["prompt_tokens"] == T), None)
                value = None if r is None else r[key]
                cells.append(f"{value:,.{digits}f}" if value is not None else ("oom" if r and "memory" in r["note"]
                                                                               else "—"))
            lines.append(f"| {name} | {params.get(name, '?')} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def generate_plot(result: dict, path: Path) -> Path:
    """Three panels against prompt length, one colour per model: decode tokens/s (eager solid, CUDA graph dashed
    where measured), prefill tokens/s, and the cache's MiB at the end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dla.bench.report import save_figure, style_loglog

    rows = result["rows"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = ((axes[0], "decode_tokens_per_s", "-", "{} (eager)"), (axes[0], "graph_decode_tokens_per_s", "--",
                                                                       "{} (CUDA graph)"),
              (axes[1], "prefill_tokens_per_s", "-", "{}"), (axes[2], "cache_mib", "-", "{}"))
    colours = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(r["model"] for r in rows))}
    for ax, key, style, label in panels:
        for name, colour in colours.items():
            pts = sorted((r["prompt_tokens"], r[key]) for r in rows if r["model"] == name and r[key] is not None)
            if pts:
                ax.plot(*zip(*pts), style, marker="o", color=colour, label=label.format(name))
    for ax, ylabel in zip(axes, ("decode tokens/s", "prefill tokens/s", "cache MiB")):
        style_loglog(ax, "prompt tokens", ylabel)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    meta = result["meta"]
    fig.suptitle(f"{meta['device']}, {meta['size']} models, backbone {meta['backbone']}, batch {meta['batch']}, "
                 f"{meta['new_tokens']} new tokens", fontsize=10)
    return save_figure(fig, path)


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def _length(T: int) -> str:
    return f"{T // 1024}K" if T % 1024 == 0 else str(T)


def add_generate_bench_parser(bench_subparsers) -> argparse.ArgumentParser:
    """Add ``generate`` to the ``dla bench`` subcommands; returns its parser."""
    p = bench_subparsers.add_parser("generate", help="prefill + greedy decoding tokens/s and peak memory of ~125M "
                                    "models: DLA, its backbone, Log-Linear (fenwick), Transformer (needs CUDA)")
    p.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="prompt lengths (tokens)")
    p.add_argument("--new-tokens", type=int, default=256, help="tokens generated after each prompt (default 256)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--backbone", choices=["gdn", "mamba2"], default="gdn")
    p.add_argument("--capacity", type=int, default=30, help="DLA slots C (default 30)")
    p.add_argument("--tau", type=float, default=0.6, help="DLA boundary threshold (default 0.6)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                   help="default bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="toy sizes (CPU smoke run)")
    p.add_argument("--max-call-s", type=float, default=120.0,
                   help="skip a model's longer prompts once one prompt takes this long")
    p.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                   help="skip the CUDA-graph decode of the recurrent models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/bench/generate.json", help="JSON results; a .md table is written beside")
    p.set_defaults(fn=_cli)
    return p


def _cli(args: argparse.Namespace) -> int:
    out = Path(args.out)
    result = run_generate_bench(args.lengths, new_tokens=args.new_tokens, models=args.models,
                                backbone=args.backbone, device=args.device, dtype=args.dtype,
                                batch_size=args.batch_size, tiny=args.tiny, capacity=args.capacity, tau=args.tau,
                                max_call_s=args.max_call_s, cuda_graph=args.cuda_graph, seed=args.seed, out=out)
    table = generate_markdown(result)
    out.with_suffix(".md").write_text(table + "\n")
    generate_plot(result, out.with_suffix(".png"))
    print(table)
    return 0


__all__ = ["MODELS", "LENGTHS", "SIZES", "Row", "model_configs", "run_generate_bench", "generate_markdown",
           "generate_plot", "add_generate_bench_parser"]
