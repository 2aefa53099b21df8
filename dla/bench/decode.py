"""``dla bench decode``: one decode token of the ops, DLA next to its peers, against context length and batch.

For each context ``T`` and batch ``B`` (shape ``h16``: 16 heads, K = V = 128), one token is decoded from a cache
holding ``T`` tokens:

- ``dla_mamba2`` / ``dla_gdn``: :func:`~dla.ops.dla_step` with a full cache of ``C`` slots;
- ``fenwick``: the same step with Log-Linear's levels (``num_levels(T)`` slots: grows as ``log T``);
- ``single``: the backbone's recurrent step (one slot);
- ``fla_fused_recurrent_gdn`` / ``fla_fused_recurrent_simple_gla``: fla's one-token Gated DeltaNet and simple GLA
  (Mamba-2's form) steps, where fla is installed;
- ``sdpa_kv_cache``: softmax attention of one query over a bf16 KV cache of ``T`` tokens (written in place).

The caches are synthetic (random slot states; counts that add up to ``T`` as the policy would leave them: ``C``
equal slots, Fenwick's binary decomposition, one slot), because a step's cost does not depend on the values,
and prefilling 128K tokens x 64 sequences for every row would take longer than the whole bench. Each row records
ms per token eager and, on CUDA, replayed from a CUDA graph (a serving loop's cost; the eager step of a small batch
is bound by kernel launches), and the cache's bytes. Results: JSON, a markdown table and a PNG.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from dla import package_versions
from dla.bench.timing import median_ms

OPS = ("dla_mamba2", "dla_gdn", "fenwick", "single", "fla_fused_recurrent_gdn", "fla_fused_recurrent_simple_gla",
       "sdpa_kv_cache")
CONTEXTS = (1024, 4096, 16384, 65536, 131072)
BATCHES = (1, 8, 64)


class _Skip(Exception):
    """An op that does not run in this configuration (the row says why)."""


@dataclass
class Row:
    op: str
    context: int
    batch: int
    eager_ms: Optional[float] = None
    graph_ms: Optional[float] = None
    cache_mib: Optional[float] = None
    note: str = ""


def _counts(policy: str, T: int, width: int):
    """Slot counts adding up to ``T`` as ``policy`` leaves them (oldest first), and the live slots."""
    if policy == "single":
        return [T], 1
    if policy == "fenwick":
        levels = [1 << b for b in reversed(range(T.bit_length())) if T >> b & 1]
        return levels, len(levels)
    if T < width:
        return [1] * T, T
    base = [T // width] * width
    base[-1] += T - sum(base)
    return base, width


def _step_case(op: str, T: int, B: int, H: int, K: int, V: int, C: int, device, dtype):
    """``(step function, cache bytes)`` of a recurrent op: a full synthetic cache, one token's inputs."""
    import torch

    from dla.ops import DLAState, dla_step, num_levels

    policy = {"fenwick": "fenwick", "single": "single"}.get(op, "dla")
    width = {"fenwick": num_levels(T), "single": 1}.get(op, C)
    counts, m = _counts(policy, T, width)
    gen = torch.Generator(device=device).manual_seed(0)
    slots = torch.randn(B, H, width, K, V, device=device, generator=gen) * 0.01
    cnt = torch.zeros(B, H, width, dtype=torch.int64, device=device)
    cnt[..., :m] = torch.tensor(counts, device=device)
    info = torch.rand(B, H, width, device=device, generator=gen) * (cnt > 0)
    state = DLAState(slots, cnt, info, torch.full((B, H), m, dtype=torch.int64, device=device),
                     slots.square().sum((-1, -2))[..., m - 1])
    q = torch.randn(B, H, K, device=device, generator=gen).to(dtype)
    k = torch.nn.functional.normalize(torch.randn(B, H, K, device=device, generator=gen), dim=-1).to(dtype)
    v = torch.randn(B, H, V, device=device, generator=gen).to(dtype)
    g = -torch.rand(B, H, device=device, generator=gen) * 0.05
    lam = torch.rand(B, H, width, device=device, generator=gen).to(dtype) + 0.5
    beta = torch.rand(B, H, device=device, generator=gen).to(dtype) if op == "dla_gdn" else None
    kw = dict(tau=0.6, capacity=width, policy=policy)
    nbytes = sum(t.numel() * t.element_size() for t in (slots, cnt, info, state.num_slots, state.open_norm))
    return (lambda: dla_step(q, k, v, g, lam, beta, state=state, **kw)[0]), nbytes


def _fla_case(T: int, B: int, H: int, K: int, V: int, device, dtype, gdn: bool = True):
    """fla's one-token recurrent step from a float32 state: Gated DeltaNet (``gdn``) or simple GLA."""
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    S = torch.randn(B, H, K, V, device=device, generator=gen) * 0.01
    q, k = (torch.randn(B, 1, H, K, device=device, generator=gen).to(dtype) for _ in range(2))
    v = torch.randn(B, 1, H, V, device=device, generator=gen).to(dtype)
    g = -torch.rand(B, 1, H, device=device, generator=gen) * 0.05
    nbytes = S.numel() * S.element_size()
    if not gdn:
        from fla.ops.simple_gla import fused_recurrent_simple_gla

        return (lambda: fused_recurrent_simple_gla(q, k, v, g, initial_state=S, output_final_state=True)[0]), nbytes
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule

    beta = torch.rand(B, 1, H, device=device, generator=gen).to(dtype)
    return (lambda: fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=S,
                                                     output_final_state=True)[0]), nbytes


def _sdpa_case(T: int, B: int, H: int, D: int, device, dtype):
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    cache_k = torch.randn(B, H, T + 1, D, device=device, generator=gen).to(dtype)
    cache_v = torch.randn(B, H, T + 1, D, device=device, generator=gen).to(dtype)
    q, k, v = (torch.randn(B, H, 1, D, device=device, generator=gen).to(dtype) for _ in range(3))

    def step():
        cache_k[:, :, T:] = k  # the new token's key and value go into the cache, then one query reads it all
        cache_v[:, :, T:] = v
        return torch.nn.functional.scaled_dot_product_attention(q, cache_k, cache_v)
    return step, 2 * cache_k.numel() * cache_k.element_size()


def _graph_time(fn: Callable[[], object], reps: int = 20) -> float:
    """Median ms of one replay of ``fn`` captured in a CUDA graph."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # warm-up on a side stream (kernels compile, allocator settles) before capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return median_ms(graph.replay, "cuda", reps=reps)


def run_decode_bench(contexts: Sequence[int] = CONTEXTS, batches: Sequence[int] = BATCHES,
                     ops: Sequence[str] = OPS, capacity: int = 30, device: str = "cuda", tiny: bool = False,
                     cuda_graph: bool = True, out: Optional[Path] = None, progress: bool = True,
                     command: str = "") -> dict:
    """Time one decode token of every op at every (context, batch); rows that run out of memory say so.
    ``command``: the command line that ran it, recorded in the JSON's ``meta``."""
    import torch
    from tqdm import tqdm

    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"ops: unknown {unknown}; allowed: {', '.join(OPS)}")
    if capacity < 1:
        raise ValueError(f"capacity: expected >= 1, got {capacity}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("dla bench decode: CUDA is not available (use --device cpu --tiny for a smoke run)")
    H, K, V = (2, 8, 8) if tiny else (16, 128, 128)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    meta = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, **package_versions(("triton", "fla")), "python": platform.python_version(),
            "date": datetime.date.today().isoformat(), "heads": H, "K": K, "V": V, "capacity": capacity,
            "dtype": str(dtype).replace("torch.", "") + " inputs, float32 caches (SDPA: bf16 KV cache)"}
    if command:
        meta["command"] = command
    rows: List[Row] = []
    cases = [(op, T, B) for op in ops for B in batches for T in contexts]
    for op, T, B in tqdm(cases, desc="bench decode", disable=not progress):
        row = Row(op=op, context=T, batch=B)
        try:
            if op == "sdpa_kv_cache":
                fn, nbytes = _sdpa_case(T, B, H, V, dev, dtype)
            elif op.startswith("fla_"):
                if dev.type != "cuda":
                    raise _Skip("needs CUDA")
                fn, nbytes = _fla_case(T, B, H, K, V, dev, dtype, gdn=op == "fla_fused_recurrent_gdn")
            else:
                fn, nbytes = _step_case(op, T, B, H, K, V, capacity, dev, dtype)
            row.cache_mib = nbytes / 2 ** 20
            row.eager_ms = median_ms(fn, dev, reps=20)
            if cuda_graph and dev.type == "cuda":
                row.graph_ms = _graph_time(fn)
        except _Skip as e:
            row.note = str(e)
        except ImportError:
            row.note = "fla not installed"
        except torch.cuda.OutOfMemoryError:
            row.note = "out of memory"
        except RuntimeError as e:
            row.note = f"error: {str(e).splitlines()[0][:120]}"
        rows.append(row)
        fn = None
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        result = {"meta": meta, "rows": [asdict(r) for r in rows]}
        if out is not None:  # after every row: a run cut short keeps what it measured
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1))
    return {"meta": meta, "rows": [asdict(r) for r in rows]}


def decode_markdown(result: dict) -> str:
    """One table per batch: rows = ops, columns = contexts, cells = ms per token (CUDA graph when measured)."""
    meta, rows = result["meta"], result["rows"]
    lines = [f"{meta['device']} · torch {meta['torch']} · {meta['heads']} heads, K = {meta['K']}, V = {meta['V']}, "
             f"C = {meta['capacity']} · {meta['dtype']} · {meta['date']}", ""]
    contexts = sorted({r["context"] for r in rows})
    for B in sorted({r["batch"] for r in rows}):
        sub = [r for r in rows if r["batch"] == B]
        lines += [f"**batch {B}**: ms per token, CUDA graph (eager); cache MiB at the longest context", "",
                  "| op | " + " | ".join(_ctx(T) for T in contexts) + " | cache MiB |",
                  "|---|" + "---|" * (len(contexts) + 1)]
        for op in dict.fromkeys(r["op"] for r in sub):
            cells, mib = [], None
            for T in contexts:
                r = next((x for x in sub if x["op"] == op and x["context"] == T), None)
                if r is None or r["eager_ms"] is None:
                    cells.append("—" if r is None else (r["note"] or "—"))
                    continue
                mib = r["cache_mib"]
                cells.append(f"{r['graph_ms']:.3f} ({r['eager_ms']:.3f})" if r["graph_ms"] is not None
                             else f"{r['eager_ms']:.3f}")
            lines.append(f"| {op} | " + " | ".join(cells) + f" | {'—' if mib is None else _mib(mib)} |")
        lines.append("")
    return "\n".join(lines)


def decode_plot(result: dict, path: Path, batch: Optional[int] = None) -> Path:
    """ms per token against context, log-log, one line per op (the largest batch by default)."""
    from dla.bench.report import loglog_plot

    rows = [r for r in result["rows"] if r["eager_ms"] is not None]
    B = batch if batch is not None else max(r["batch"] for r in rows)
    series = {op: [(r["context"], r["graph_ms"] if r["graph_ms"] is not None else r["eager_ms"])
                   for r in rows if r["op"] == op and r["batch"] == B] for op in dict.fromkeys(r["op"] for r in rows)}
    return loglog_plot(series, path, "context (tokens in the cache)", "ms per decoded token",
                       f"{result['meta']['device']}, batch {B}")


def _mib(x: float) -> str:
    return f"{x:,.1f}" if x >= 10 else f"{x:.3g}"


def _ctx(T: int) -> str:
    return f"{T // 1024}K" if T >= 1024 and T % 1024 == 0 else str(T)


def add_decode_bench_parser(bench_subparsers) -> argparse.ArgumentParser:
    """Add ``decode`` to the ``dla bench`` subcommands; returns its parser."""
    p = bench_subparsers.add_parser("decode", help="ms per decoded token and cache size of the ops against context "
                                    "and batch: DLA, Log-Linear (fenwick), the backbone step, SDPA with a KV cache")
    p.add_argument("--contexts", type=int, nargs="+", default=list(CONTEXTS))
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    p.add_argument("--capacity", type=int, default=30, help="DLA slots C (default 30)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="toy head sizes (CPU smoke run)")
    p.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false")
    p.add_argument("--out", default="docs/bench/decode.json", help="JSON; .md and .png are written beside")
    p.set_defaults(fn=_cli)
    return p


def _cli(args: argparse.Namespace) -> int:
    out = Path(args.out)
    result = run_decode_bench(args.contexts, args.batches, args.ops, capacity=args.capacity, device=args.device,
                              tiny=args.tiny, cuda_graph=args.cuda_graph, out=out,
                              command=shlex.join(["dla", *getattr(args, "argv", [])]))
    table = decode_markdown(result)
    out.with_suffix(".md").write_text(table + "\n")
    decode_plot(result, out.with_suffix(".png"))
    print(table)
    return 0


__all__ = ["OPS", "CONTEXTS", "BATCHES", "Row", "run_decode_bench", "decode_markdown", "decode_plot",
           "add_decode_bench_parser"]
