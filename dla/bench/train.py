"""``dla bench train``: training tokens/s and peak memory of whole models, the number a user of the library meets.

Seven language models with the same blocks (pre-norm mixer + SwiGLU MLP, tied embeddings), width and depth, built
from :class:`~dla.models.DLAConfig`; only the mixer differs:

- ``transformer``: softmax attention (torch SDPA, RoPE);
- ``mamba2``, ``loglinear_mamba2``, ``dla_mamba2``: Mamba-2 (Log-Linear Attention's head layout: head dim 64, state
  128, one ``B``/``C`` group) read through the ``single``, ``fenwick`` and ``dla`` policies;
- ``gdn``, ``loglinear_gdn``, ``dla_gdn``: Gated DeltaNet (4 heads, key 128, value 256) through the same policies.

The MLP width of each mixer family (attention, Mamba-2, Gated DeltaNet) is chosen so that its one-state model has
the size's parameter target (:data:`SIZES`); ``fenwick`` and ``dla`` add only their ``lam`` projections. Where fla
is installed and CUDA is there, fla's own ``GatedDeltaNetForCausalLM`` and ``Mamba2ForCausalLM`` (its kernels) run
beside them at the same sizes (``fla_gdn``, ``fla_mamba2``; fla's Mamba-2 has no MLP, so it gets the layers that
reach the target instead).

Every row runs the same number of tokens per optimizer step (``batch = tokens_per_step / T``) through the steps of
``dla train`` on one device: forward under bfloat16 autocast on CUDA (float32 weights; float32 on CPU), float32
cross-entropy of the logits, backward, gradient clipping at 1.0, AdamW (``dla.train.optim.build_optimizer``, fused
on CUDA, weight decay as the trainer groups it) and ``zero_grad``. It is a timed loop of its own rather than
:func:`dla.train.train` because a benchmark needs no data pipeline, checkpoints or logs: random tokens, ``warmup``
untimed steps, then the median of ``steps`` timed steps (CUDA events). Each row records tokens/s, ms per step and
the peak memory of the step (weights, gradients and optimizer state included); out of memory is a row, not a
crash. The JSON also records the GPU, the versions, the date, the commit and the command line.

Only the standard library is imported at module level: the ``dla`` command builds its parser from
:func:`add_train_bench_parser` without loading torch.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import platform
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

MODELS = {
    # name: (mixer, policy)
    "transformer": ("attention", None),
    "mamba2": ("mamba2", "single"),
    "loglinear_mamba2": ("mamba2", "fenwick"),
    "dla_mamba2": ("mamba2", "dla"),
    "gdn": ("gdn", "single"),
    "loglinear_gdn": ("gdn", "fenwick"),
    "dla_gdn": ("gdn", "dla"),
}
"""Our seven models, in table order."""

FLA_MODELS = ("fla_gdn", "fla_mamba2")
"""fla's own models (its kernels), run as peers where fla is installed and CUDA is there."""

SIZES = {
    # name: shared sizes, the parameter target, and each mixer family's head layout
    "125m": dict(vocab_size=32000, hidden_size=768, num_hidden_layers=12, target=125e6,
                 attention=dict(num_attention_heads=12), mamba2=dict(num_heads=24, head_k_dim=128, expand=2),
                 gdn=dict(num_heads=4, head_k_dim=128, expand_v=2.0)),
    "340m": dict(vocab_size=32000, hidden_size=1024, num_hidden_layers=24, target=340e6,
                 attention=dict(num_attention_heads=16), mamba2=dict(num_heads=32, head_k_dim=128, expand=2),
                 gdn=dict(num_heads=4, head_k_dim=128, expand_v=2.0)),
    "tiny": dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, target=None,
                 attention=dict(num_attention_heads=4), mamba2=dict(num_heads=2, head_k_dim=8, expand=2),
                 gdn=dict(num_heads=2, head_k_dim=8, expand_v=2.0)),
}
"""``125m`` / ``340m``: GPT-2-small / -medium width and depth, 32K tied embeddings; the Gated DeltaNet layout is
``configs/dla-gdn-125m.yaml``'s and ``-340m.yaml``'s, Mamba-2's head dim 64 and state 128 are Log-Linear
Attention's. ``tiny``: CPU tests (no parameter target: every family keeps the default MLP width)."""

LENGTHS = (2048, 8192, 16384)
TOKENS_PER_STEP = 65536


@dataclass
class Row:
    model: str
    size: str
    T: int
    batch: int
    params: int
    tokens_per_step: int
    step_ms: Optional[float] = None
    tokens_per_s: Optional[float] = None
    peak_gib: Optional[float] = None
    implementation: str = "dla"  # whose kernels: "dla" (this library, SDPA for attention) or "fla"
    note: str = ""


def model_configs(size: str, models: Sequence[str] = tuple(MODELS), capacity: int = 30, tau: float = 0.6,
                  max_positions: int = 16384) -> Dict[str, object]:
    """The :class:`~dla.models.DLAConfig` of each of ``models`` (names of :data:`MODELS`) at ``size``.

    Each mixer family's SwiGLU width is the multiple of 32 that brings its one-state model (``transformer``,
    ``mamba2``, ``gdn``) closest to the size's parameter target; ``max_positions`` is the longest sequence (RoPE,
    Fenwick's levels).
    """
    from dla.models import DLAConfig

    _check_size(size)
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"models: unknown {unknown[0]!r}; allowed: {', '.join([*MODELS, *FLA_MODELS])}")
    spec = SIZES[size]
    shared = dict(vocab_size=spec["vocab_size"], hidden_size=spec["hidden_size"],
                  num_hidden_layers=spec["num_hidden_layers"], tie_word_embeddings=True,
                  max_position_embeddings=max_positions, use_cache=False)

    def build(mixer: str, policy: Optional[str], width: Optional[int]) -> DLAConfig:
        extra = dict(spec[mixer])
        if policy is not None:
            extra.update(policy=policy, capacity=capacity, tau=tau)
        return DLAConfig(**shared, **extra, mixer=mixer, intermediate_size=width)

    widths = {}
    for mixer, policy in {MODELS[m] for m in models}:
        if mixer not in widths:
            single = "single" if mixer != "attention" else None
            widths[mixer] = _matched_width(lambda w: _params(build(mixer, single, w)), spec["target"],
                                           spec["hidden_size"], spec["num_hidden_layers"])
    return {name: build(*MODELS[name], widths[MODELS[name][0]]) for name in models}


def _matched_width(params_at, target: Optional[float], hidden: int, layers: int) -> Optional[int]:
    """The SwiGLU width (multiple of 32) whose model is closest to ``target`` parameters (``None``: the default)."""
    if target is None:
        return None
    base = params_at(32)
    per_channel = 3 * hidden * layers
    return max(32, 32 + 32 * round((target - base) / per_channel / 32))


def _params(config) -> int:
    import torch

    from dla.models import DLAForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in DLAForCausalLM(config).parameters())


def fla_configs(size: str, models: Sequence[str] = FLA_MODELS, max_positions: int = 16384) -> Dict[str, object]:
    """fla's model configs of ``models`` (names of :data:`FLA_MODELS`) at ``size``: the Gated DeltaNet layout and
    MLP width of our ``gdn``; Mamba-2 (no MLP in fla's blocks) with our head layout and the number of layers that
    brings it closest to the size's target. Needs fla."""
    import torch
    from fla.models import GatedDeltaNetConfig, Mamba2Config
    from transformers import AutoModelForCausalLM

    _check_size(size)
    spec = SIZES[size]
    shared = dict(vocab_size=spec["vocab_size"], hidden_size=spec["hidden_size"], tie_word_embeddings=True,
                  max_position_embeddings=max_positions, use_cache=False, fuse_cross_entropy=False)
    out = {}
    if "fla_gdn" in models:
        ours = model_configs(size, ["gdn"], max_positions=max_positions)["gdn"]
        gdn = spec["gdn"]
        out["fla_gdn"] = GatedDeltaNetConfig(**shared, num_hidden_layers=spec["num_hidden_layers"],
                                             num_heads=gdn["num_heads"], head_dim=gdn["head_k_dim"],
                                             expand_v=gdn["expand_v"], intermediate_size=ours.intermediate_size)
    if "fla_mamba2" in models:
        m2 = spec["mamba2"]
        inner = m2["expand"] * spec["hidden_size"]

        def mamba(layers: int):
            return Mamba2Config(**{k: v for k, v in shared.items() if k != "max_position_embeddings"},
                                num_hidden_layers=layers, num_heads=m2["num_heads"],
                                head_dim=inner // m2["num_heads"], state_size=m2["head_k_dim"], n_groups=1,
                                expand=m2["expand"])

        layers = spec["num_hidden_layers"]
        if spec["target"] is not None:
            with torch.device("meta"), _quiet():
                one, two = (sum(p.numel() for p in AutoModelForCausalLM.from_config(mamba(n)).parameters())
                            for n in (1, 2))
            layers = max(1, round((spec["target"] - one) / (two - one)) + 1)
        out["fla_mamba2"] = mamba(layers)
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """fla's Mamba-2 logs a fallback warning per layer it builds (no mamba_ssm kernels): silenced while the
    parameter counts are taken."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"sizes: unknown {size!r}; allowed: {', '.join(SIZES)}")


def _check_args(models: Sequence[str], sizes: Sequence[str], lengths: Sequence[int], tokens_per_step: int,
                steps: int, warmup: int) -> None:
    allowed = [*MODELS, *FLA_MODELS]
    if not models:
        raise ValueError(f"models: expected at least one of {', '.join(allowed)}")
    for name in models:
        if name not in allowed:
            raise ValueError(f"models: unknown {name!r}; allowed: {', '.join(allowed)}")
    if not sizes:
        raise ValueError(f"sizes: expected at least one of {', '.join(SIZES)}")
    for size in sizes:
        _check_size(size)
    if not lengths:
        raise ValueError("lengths: expected at least one sequence length")
    for T in lengths:
        if isinstance(T, bool) or not isinstance(T, int) or T < 2:
            raise ValueError(f"lengths: expected ints >= 2, got {T!r}")
    if isinstance(tokens_per_step, bool) or not isinstance(tokens_per_step, int) or tokens_per_step < max(lengths):
        raise ValueError(f"tokens_per_step: expected an int >= the longest length ({max(lengths)}), got "
                         f"{tokens_per_step!r}")
    for name, value, low in (("steps", steps, 1), ("warmup", warmup, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")


def default_models(device: str) -> List[str]:
    """Our seven models, and fla's two where fla imports and ``device`` is CUDA."""
    import torch

    names = list(MODELS)
    if torch.device(device).type == "cuda" and _fla_version() != "not installed":
        names += list(FLA_MODELS)
    return names


def _fla_version() -> str:
    from dla import package_versions

    return package_versions(("fla",), catch=(Exception,))["fla"]


def run_train_bench(models: Optional[Sequence[str]] = None, sizes: Sequence[str] = ("125m", "340m"),
                    lengths: Sequence[int] = LENGTHS, tokens_per_step: int = TOKENS_PER_STEP, steps: int = 10,
                    warmup: int = 3, device: str = "cuda", capacity: int = 30, tau: float = 0.6, lr: float = 3e-4,
                    seed: int = 0, out: Optional[Path] = None, progress: bool = True, command: str = "") -> dict:
    """Time training steps of every model at every size and length; return ``{"meta", "models", "rows"}``.

    Args:
        models: names of :data:`MODELS` and :data:`FLA_MODELS` (default :func:`default_models`).
        sizes: names of :data:`SIZES`.
        lengths: sequence lengths ``T``; each row's batch is ``tokens_per_step // T``.
        tokens_per_step: tokens per optimizer step (at least the longest length).
        steps, warmup: timed steps (the median is reported) after ``warmup`` untimed ones.
        device: ``cuda`` (what the benchmark is for) or ``cpu`` (tests, with the ``tiny`` size).
        capacity, tau: the DLA policy's slots and boundary threshold.
        lr: AdamW's learning rate (constant; it does not change the time).
        out: JSON path, rewritten after every row (a run cut short keeps what it measured).
        command: the command line, recorded in ``meta``.

    Raises:
        ValueError: an unknown model or size, lengths below 2, fewer tokens per step than the longest length,
            ``steps < 1``, ``warmup < 1``, or a CUDA device without a visible GPU.
    """
    import gc

    import torch
    from tqdm import tqdm

    from dla import package_versions
    from dla.study.runner import git_commit

    models = list(models) if models is not None else default_models(device)
    _check_args(models, list(sizes), list(lengths), tokens_per_step, steps, warmup)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' asked for but no CUDA GPU is visible (use device='cpu' with the tiny size)")
    max_positions = max(16384, max(lengths))
    meta = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, **package_versions(("triton", "fla", "transformers"), catch=(Exception,)),
            "python": platform.python_version(), "date": datetime.date.today().isoformat(), "commit": git_commit(),
            "dtype": "bfloat16 autocast, float32 weights" if dev.type == "cuda" else "float32",
            "optimizer": f"AdamW ({'fused' if dev.type == 'cuda' else 'foreach'}), lr {lr}, grad clip 1.0",
            "tokens_per_step": tokens_per_step, "warmup_steps": warmup, "timed_steps": steps, "capacity": capacity,
            "tau": tau, "command": command}
    result: dict = {"meta": meta, "models": {}, "rows": []}
    cases = [(size, name, T) for size in sizes for name in models for T in lengths]
    configs: Dict[Tuple[str, str], object] = {}
    for size, name, T in tqdm(cases, disable=not progress, desc="bench train"):
        row = Row(model=name, size=size, T=T, batch=tokens_per_step // T, params=0, tokens_per_step=tokens_per_step,
                  implementation="fla" if name in FLA_MODELS else "dla")
        try:
            if (size, name) not in configs:
                configs[size, name] = _config(name, size, capacity, tau, max_positions)
            _measure(row, configs[size, name], dev, steps, warmup, lr, seed)
        except _Skip as e:
            row.note = str(e)
        except torch.cuda.OutOfMemoryError:
            row.note = "OOM"
        except RuntimeError as e:  # a model that fails at this shape is reported, not fatal
            row.note = f"error: {str(e).splitlines()[0][:160] if str(e) else type(e).__name__}"
        gc.collect()  # the model and optimizer of a row that raised live on in its traceback until here
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        if row.params:
            result["models"].setdefault(f"{name}@{size}", {"params": row.params, "implementation": row.implementation})
        result["rows"].append(asdict(row))
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1))
    return result


class _Skip(Exception):
    """A model that does not run here (the row says why)."""


def _config(name: str, size: str, capacity: int, tau: float, max_positions: int):
    if name in FLA_MODELS:
        import torch

        if _fla_version() == "not installed":
            raise _Skip("fla not installed")
        if not torch.cuda.is_available():
            raise _Skip("needs CUDA")
        return fla_configs(size, [name], max_positions)[name]
    return model_configs(size, [name], capacity, tau, max_positions)[name]


def _measure(row: Row, config, dev, steps: int, warmup: int, lr: float, seed: int) -> None:
    """Build the model and time its training steps into ``row`` (parameters first: an OOM row has them too)."""
    import torch
    import torch.nn.functional as F

    from dla.bench.timing import median_ms
    from dla.train.config import TrainSection
    from dla.train.model import build_model, no_weight_decay_names, num_parameters
    from dla.train.optim import build_optimizer

    cuda = dev.type == "cuda"
    torch.manual_seed(seed)
    with dev:
        model = build_model(config)
    model.train()
    row.params = num_parameters(model)
    optimizer = build_optimizer(model.named_parameters(), no_weight_decay_names(model),
                                TrainSection(max_steps=1, lr=lr), dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (row.batch, row.T + 1), device=dev, generator=gen)
    inputs, labels = ids[:, :-1], ids[:, 1:].reshape(-1)

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(input_ids=inputs, use_cache=False).logits
        loss = F.cross_entropy(logits.reshape(labels.numel(), -1).float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup - 1):  # median_ms makes one more untimed call
        step()
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    row.step_ms = median_ms(step, dev, reps=steps)
    row.tokens_per_s = row.tokens_per_step / (row.step_ms / 1e3)
    if cuda:
        row.peak_gib = torch.cuda.max_memory_allocated(dev) / 2 ** 30


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def train_markdown(result: dict) -> str:
    """One table per size: rows = models (with parameters), columns = lengths, cells = tokens/s (peak GiB);
    ``OOM`` where the step ran out of memory. Then each model's tokens/s over its backbone's at each length."""
    from dla.bench.report import length_label

    meta, rows = result["meta"], result["rows"]
    lines = [f"{meta['device']} · torch {meta['torch']} · Triton {meta['triton']} · fla {meta['fla']} · "
             f"{meta['dtype']} · {meta['optimizer']} · {meta['tokens_per_step']:,} tokens per step · median of "
             f"{meta['timed_steps']} steps after {meta['warmup_steps']} · C = {meta['capacity']}, tau = "
             f"{meta['tau']:g} · commit {meta['commit']} · {meta['date']}", ""]
    for size in dict.fromkeys(r["size"] for r in rows):
        sub = [r for r in rows if r["size"] == size]
        lengths = sorted({r["T"] for r in sub})
        names = list(dict.fromkeys(r["model"] for r in sub))
        at = {(r["model"], r["T"]): r for r in sub}
        lines += [f"**{size}** — training tokens/s (peak GiB); batch = tokens per step / T", "",
                  "| model | params | " + " | ".join(length_label(T) for T in lengths) + " |",
                  "|---|---|" + "---|" * len(lengths)]
        for name in names:
            cells = []
            for T in lengths:
                r = at.get((name, T))
                if r is None:
                    cells.append("—")
                elif r["tokens_per_s"] is None:
                    cells.append("OOM" if r["note"] == "OOM" else (r["note"] or "—"))
                else:
                    peak = f" ({r['peak_gib']:.1f})" if r["peak_gib"] is not None else ""
                    cells.append(f"{r['tokens_per_s']:,.0f}{peak}")
            params = next((r["params"] for r in sub if r["model"] == name and r["params"]), 0)
            label = f"{name} (fla)" if name in FLA_MODELS else name
            lines.append(f"| {label} | {_count(params) if params else '?'} | " + " | ".join(cells) + " |")
        ratios = []
        for name in names:
            base = {"dla_mamba2": "mamba2", "loglinear_mamba2": "mamba2", "dla_gdn": "gdn",
                    "loglinear_gdn": "gdn"}.get(name)
            if base is None or base not in names:
                continue
            cells = []
            for T in lengths:
                a, b = at.get((name, T)), at.get((base, T))
                ok = a and b and a["tokens_per_s"] and b["tokens_per_s"]
                cells.append(f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}" if ok else "—")
            ratios.append(f"| {name} / {base} | " + " | ".join(cells) + " |")
        if ratios:
            lines += ["", f"tokens/s over the backbone's ({size})", "",
                      "| model | " + " | ".join(length_label(T) for T in lengths) + " |",
                      "|---|" + "---|" * len(lengths),
                      *ratios]
        lines.append("")
    return "\n".join(lines)


def train_plot(result: dict, path: Path) -> Path:
    """Tokens/s and peak GiB against ``T``, one panel pair per size, one line per model (fla's dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dla.bench.report import save_figure, style_loglog

    rows = result["rows"]
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    fig, axes = plt.subplots(len(sizes), 2, figsize=(12, 4 * len(sizes)), squeeze=False)
    names = list(dict.fromkeys(r["model"] for r in rows))
    for (ax_tps, ax_mem), size in zip(axes, sizes):
        for i, name in enumerate(names):
            sub = sorted((r["T"], r["tokens_per_s"], r["peak_gib"]) for r in rows
                         if r["model"] == name and r["size"] == size and r["tokens_per_s"])
            style = "--" if name in FLA_MODELS else "-"
            if sub:
                ax_tps.plot([s[0] for s in sub], [s[1] for s in sub], style, marker="o", color=f"C{i}", label=name)
            mem = [(s[0], s[2]) for s in sub if s[2] is not None]
            if mem:
                ax_mem.plot(*zip(*mem), style, marker="o", color=f"C{i}", label=name)
        style_loglog(ax_tps, "sequence length T (tokens per step fixed)", "training tokens/s")
        style_loglog(ax_mem, "sequence length T (tokens per step fixed)", "peak GiB")
        ax_tps.set_title(f"{size}: tokens/s")
        ax_mem.set_title(f"{size}: peak memory")
        ax_tps.legend(fontsize=7)
    fig.suptitle(f"{result['meta']['device']}, {result['meta']['tokens_per_step']:,} tokens per step", fontsize=10)
    return save_figure(fig, path)


def add_train_bench_parser(bench_subparsers) -> argparse.ArgumentParser:
    """Add ``train`` to the ``dla bench`` subcommands; returns its parser."""
    p = bench_subparsers.add_parser("train", help="training tokens/s and peak memory of whole models (~125M, ~340M): "
                                    "Transformer, Mamba-2, Gated DeltaNet, Log-Linear and DLA variants")
    p.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                   help=f"some of {', '.join([*MODELS, *FLA_MODELS])} (default: ours, and fla's where fla and CUDA "
                        f"are there)")
    p.add_argument("--sizes", nargs="+", default=["125m", "340m"], metavar="SIZE", help=f"of {', '.join(SIZES)}")
    p.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    p.add_argument("--tokens-per-step", type=int, default=TOKENS_PER_STEP, help="batch = tokens per step // T")
    p.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (kernels compile and tune)")
    p.add_argument("--capacity", type=int, default=30, help="DLA slots C")
    p.add_argument("--tau", type=float, default=0.6, help="DLA boundary threshold")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="docs/bench/train.json", help="JSON; .md and .png are written beside")
    p.set_defaults(fn=_cli)
    return p


def _cli(args: argparse.Namespace) -> int:
    out = Path(args.out)
    result = run_train_bench(args.models, args.sizes, args.lengths, args.tokens_per_step, args.steps, args.warmup,
                             device=args.device, capacity=args.capacity, tau=args.tau, out=out,
                             command=shlex.join(["dla", *getattr(args, "argv", [])]))
    table = train_markdown(result)
    out.with_suffix(".md").write_text(table + "\n")
    train_plot(result, out.with_suffix(".png"))
    print(table)
    return 0


__all__ = ["MODELS", "FLA_MODELS", "SIZES", "LENGTHS", "Row", "model_configs", "fla_configs", "default_models",
           "run_train_bench", "train_markdown", "train_plot", "add_train_bench_parser"]
