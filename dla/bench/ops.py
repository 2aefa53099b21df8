"""``dla bench ops``: DLA and its peers timed side by side in one run (forward and forward+backward).

Every row records the GPU, the library versions, the shape and the date; DLA rows also record how the
segmentation came out (slots opened, merges, distinct key chunks touched per query chunk), because DLA's
cost depends on it. Results go to JSON; :mod:`dla.bench.report` turns them into a table and a plot.

Two sources of inputs: random tensors of the named shapes (:func:`run_ops_bench`), or one layer's op inputs
captured from a trained model (:func:`run_captured_ops_bench`, files of :mod:`dla.bench.capture`), whose rows
carry the shape ``captured:<file stem>``.
"""

from __future__ import annotations

import datetime
import fnmatch
import importlib
import json
import math
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from dla import package_versions
from dla.bench.timing import median_ms

SHAPES = {
    # name: (heads H, q/k groups G, key dim K, value dim V)
    "h16": (16, 16, 128, 128),
    "ll_mamba2": (48, 1, 128, 64),  # Log-Linear Attention's Mamba-2 shape: 48 heads, state 128, head dim 64
}


@dataclass
class Row:
    op: str
    shape: str
    T: int
    B: int
    fwd_ms: Optional[float] = None
    fwdbwd_ms: Optional[float] = None
    peak_mib: Optional[float] = None
    note: str = ""
    stats: Dict[str, float] = field(default_factory=dict)


def _time(fn: Callable[[], None], budget_s: float, reps: int = 10) -> float:
    """Median milliseconds of ``fn`` on the GPU, fewer repetitions for slow ops (:func:`dla.bench.timing.median_ms`
    with a time budget)."""
    return median_ms(fn, "cuda", reps=reps, budget_s=budget_s)


def op_inputs(shape: str, B: int, T: int, R: int, gdn: bool, seed: int = 0, device: str = "cuda",
              dtype: torch.dtype = torch.bfloat16):
    """The benchmark's random DLA inputs of ``shape``: ``dtype`` (bfloat16) on ``device`` (CUDA), ``g`` float32."""
    H, G, K, V = SHAPES[shape]
    gen = torch.Generator(device=device).manual_seed(seed)
    dev, dt = device, dtype
    q = torch.randn(B, T, G, K, device=dev, generator=gen).to(dt)
    k = torch.nn.functional.normalize(torch.randn(B, T, G, K, device=dev, generator=gen), dim=-1).to(dt)
    v = torch.randn(B, T, H, V, device=dev, generator=gen).to(dt)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device=dev, generator=gen) + 4).float()
    lam = (torch.rand(B, T, H, R, device=dev, generator=gen) + 0.5).to(dt)
    beta = torch.rand(B, T, H, device=dev, generator=gen).to(dt) if gdn else None
    return dict(q=q, k=k, v=v, g=g, lam=lam, beta=beta)


def _measure(row: Row, make: Callable[[], Dict[str, torch.Tensor]], run: Callable[..., torch.Tensor],
             budget_s: float, backward: bool = True) -> Row:
    inputs = make()
    leaves = [t for t in inputs.values() if t is not None and t.is_floating_point()]
    with torch.no_grad():
        row.fwd_ms = _time(lambda: run(**inputs), budget_s)
    if backward:
        for t in leaves:
            t.requires_grad_(True)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()

        def step():
            out = run(**inputs)
            out.backward(torch.ones_like(out))

        row.fwdbwd_ms = _time(step, budget_s)
        row.peak_mib = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    return row


def _dla_stats(seg, T: int, chunk: int = 64) -> Dict[str, float]:
    """Slots opened and merges per head, and distinct key chunks of live boundaries per query chunk."""
    heads = seg.boundary.shape[0] * seg.boundary.shape[2]
    starts = seg.starts[:, ::chunk].clamp_min(-1)  # live starts at each query chunk's first token
    distinct = []
    for row in starts.flatten(0, 2)[:4096]:
        distinct.append(len({int(s) // chunk for s in row.tolist() if s >= 0}))
    return {"slots_opened_per_head": float(seg.boundary.sum()) / heads,
            "merges_per_head": float((seg.merged >= 0).sum()) / heads,
            "key_chunks_per_query_chunk": sum(distinct) / max(len(distinct), 1)}


def run_ops_bench(lengths: List[int], tokens_per_call: int = 65536, shapes: List[str] = ("h16", "ll_mamba2"),
                  capacities: List[int] = (8, 16, 30), taus: List[float] = (0.6, 0.0), budget_s: float = 3.0,
                  max_call_s: float = 20.0, out: Optional[Path] = None, progress: bool = True,
                  only: Optional[List[str]] = None, precision: Optional[str] = None, command: str = "") -> dict:
    """Time every op at every length; skip an op at longer lengths once one call takes ``max_call_s``.

    ``only``: shell patterns (:mod:`fnmatch`) of op names to time (``None``: all); a pattern matching no op is an
    error naming it. ``precision``: ``chunk_dla``'s ``precision=`` for our rows (``None``: its auto rule).
    ``command``: the command line that ran it, recorded in the JSON's ``meta``.
    """
    ops = select_ops(op_table(capacities, taus), only)
    if not torch.cuda.is_available():
        raise RuntimeError("dla bench ops: needs a CUDA GPU")
    from tqdm import tqdm

    from dla.ops import chunk_dla, num_levels

    rows: List[Row] = []
    too_slow = set()
    meta = _meta(tokens_per_call)
    meta["dla_precision"] = precision if precision not in (None, "auto") else "auto (bf16: bfloat16 inputs)"
    if command:
        meta["command"] = command
    cases = [(s, T, name) for s in shapes for T in lengths for name in ops]
    for shape, T, name in tqdm(cases, disable=not progress, desc="bench ops"):
        if (shape, name) in too_slow:
            continue
        B = max(1, tokens_per_call // T)
        spec = ops[name]
        row = Row(op=name, shape=shape, T=T, B=B)
        try:
            if callable(spec):
                spec(row, shape, B, T, budget_s)
            else:
                policy, gdn, C, tau = spec
                R = num_levels(T) if policy == "fenwick" else C
                kw = dict(policy=policy, capacity=R, tau=tau if tau is not None else 0.6, scale=1.0,
                          precision=precision)
                _measure(row, lambda: op_inputs(shape, B, T, R, gdn), lambda **x: chunk_dla(**x, **kw)[0], budget_s)
                if policy == "dla":
                    with torch.no_grad():
                        seg = chunk_dla(**op_inputs(shape, 1, T, R, gdn), **kw, return_segmentation=True)[2]
                    row.stats = _dla_stats(seg, T)
        except torch.cuda.OutOfMemoryError:
            row.note = "out of memory"
        except RuntimeError as e:  # an op that refuses this configuration is reported, not fatal
            row.note = f"error: {str(e).splitlines()[0][:120]}"
        torch.cuda.empty_cache()
        rows.append(row)
        if row.fwdbwd_ms is not None and row.fwdbwd_ms / 1e3 > max_call_s:
            too_slow.add((shape, name))
        result = {"meta": meta, "rows": [asdict(r) for r in rows]}
        if out is not None:  # after every row: a run cut short keeps what it measured
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1))
    return result


def op_table(capacities: List[int], taus: List[float]) -> Dict[str, object]:
    """Every op of the bench by name (the same for every shape): ours (``(policy, gdn, C, tau)``) first, so that a
    run cut short by a time limit has them, then the peers (callables; fla's first call at each shape autotunes
    for about 40 s)."""
    ops: Dict[str, object] = {}
    for gdn in (False, True):
        backbone = "gdn" if gdn else "mamba2"
        for C in capacities:
            for tau in taus:
                ops[f"dla_{backbone}_C{C}_tau{tau:g}"] = ("dla", gdn, C, tau)
        ops[f"fenwick_{backbone} (ours)"] = ("fenwick", gdn, None, None)
        ops[f"single_{backbone} (ours)"] = ("single", gdn, 1, None)
    ops.update(_peer_ops())
    return ops


def select_ops(ops: Dict[str, object], only: Optional[List[str]]) -> Dict[str, object]:
    """The ops whose name matches one of the shell patterns ``only`` (all for ``None``); an unmatched pattern is an
    error naming it."""
    if only is None:
        return ops
    for pat in only:
        if not any(fnmatch.fnmatchcase(name, pat) for name in ops):
            raise ValueError(f"--ops: pattern {pat!r} matches no op; ops are: {', '.join(ops)}")
    return {name: spec for name, spec in ops.items() if any(fnmatch.fnmatchcase(name, p) for p in only)}


def _meta(tokens_per_call: int) -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA GPU"
    return {"gpu": gpu, "torch": torch.__version__, **package_versions(("triton", "fla")),
            "python": platform.python_version(), "date": datetime.date.today().isoformat(),
            "dtype": "bfloat16 inputs, float32 log-decays", "tokens_per_call": tokens_per_call}


def _lifted(fn: Callable) -> Callable:
    """fla 0.6 refuses gated backward on Hopper with Triton < 3.7.1 (its #640): lifted for timing only."""
    import fla.ops.common.chunk_o as fla_chunk_o

    def wrapped(row, *args):
        old = getattr(fla_chunk_o, "TRITON_ABOVE_3_7_1", True)
        fla_chunk_o.TRITON_ABOVE_3_7_1 = True
        if not old:
            row.note = "; ".join(x for x in (row.note, "fla's Hopper guard lifted for timing (its gated backward is "
                                             "known wrong on this Triton)") if x)
        try:
            fn(row, *args)
        finally:
            fla_chunk_o.TRITON_ABOVE_3_7_1 = old
    return wrapped


def _expand(x: torch.Tensor, H: int) -> torch.Tensor:
    """``[B, T, G, K]`` repeated per head to ``[B, T, H, K]`` (fla's kernels take one key per head)."""
    return x.repeat_interleave(H // x.shape[2], dim=2) if x.shape[2] != H else x


def _fla_kernels() -> Optional[Dict[str, Callable]]:
    """fla's chunk kernels by our row name, or ``None`` where fla is not installed."""
    try:
        importlib.import_module("fla.ops.common.chunk_o")  # the module _lifted patches
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        from fla.ops.log_linear_attn import chunk_log_linear_attn
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError:
        return None
    return {"fla_chunk_log_linear_attn": chunk_log_linear_attn, "fla_chunk_gated_delta_rule": chunk_gated_delta_rule,
            "fla_chunk_simple_gla": chunk_simple_gla}


def _peer_ops() -> Dict[str, Callable]:
    """Peers on random inputs: torch SDPA (flash) and fla's chunk kernels, where installed."""
    ops: Dict[str, Callable] = {}

    def sdpa(row: Row, shape: str, B: int, T: int, budget_s: float) -> None:
        H, _, K, V = SHAPES[shape]
        D = V  # attention with the model's head dim

        def make():
            return {n: torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16) for n in "qkv"}

        _measure(row, make, lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
                 budget_s)

    ops["sdpa_flash"] = sdpa
    fla = _fla_kernels()
    if fla is None:
        return ops

    def fla_ll(row, shape, B, T, budget_s):
        from dla.ops import num_levels
        L = num_levels(T)
        _measure(row, lambda: {k: v for k, v in op_inputs(shape, B, T, L, False).items() if k != "beta"},
                 lambda q, k, v, g, lam: fla["fla_chunk_log_linear_attn"](q, k, v, g, lam)[0], budget_s)

    def fla_gdn(row, shape, B, T, budget_s):
        H = SHAPES[shape][0]
        _measure(row, lambda: op_inputs(shape, B, T, 1, True),
                 lambda q, k, v, g, lam, beta: fla["fla_chunk_gated_delta_rule"](_expand(q, H), _expand(k, H), v, g,
                                                                                  beta)[0], budget_s)

    def fla_gla(row, shape, B, T, budget_s):
        H = SHAPES[shape][0]
        _measure(row, lambda: op_inputs(shape, B, T, 1, False),
                 lambda q, k, v, g, lam, beta: fla["fla_chunk_simple_gla"](_expand(q, H), _expand(k, H), v, g)[0],
                 budget_s)

    ops["fla_chunk_log_linear_attn"] = _lifted(fla_ll)
    ops["fla_chunk_gated_delta_rule"] = _lifted(fla_gdn)
    ops["fla_chunk_simple_gla"] = _lifted(fla_gla)
    return ops


def _captured_peer_ops() -> Dict[str, Callable]:
    """fla's chunk kernels on captured inputs ``(row, tensors, scale, budget_s)``, where fla is installed: the
    captured ``q, k, v, g`` (``lam``: ``num_levels(T)`` columns, as our ``fenwick`` row; ``beta``), the captured
    scale."""
    fla = _fla_kernels()
    if fla is None:
        return {}

    def fla_ll(row, x, scale, budget_s):
        from dla.ops import num_levels

        L = num_levels(x["q"].shape[1])
        lam = x["lam"].repeat(1, 1, 1, -(-L // x["lam"].shape[-1]))[..., :L].contiguous()
        _measure(row, _fresh({**x, "lam": lam}, ("q", "k", "v", "g", "lam")),
                 lambda q, k, v, g, lam: fla["fla_chunk_log_linear_attn"](q, k, v, g, lam, scale=scale)[0],
                 budget_s)

    def fla_gdn(row, x, scale, budget_s):
        H = x["v"].shape[2]
        _measure(row, _fresh(x, ("q", "k", "v", "g", "beta")),
                 lambda q, k, v, g, beta: fla["fla_chunk_gated_delta_rule"](_expand(q, H), _expand(k, H), v, g, beta,
                                                                            scale=scale)[0], budget_s)

    def fla_gla(row, x, scale, budget_s):
        H = x["v"].shape[2]
        _measure(row, _fresh(x, ("q", "k", "v", "g")),
                 lambda q, k, v, g: fla["fla_chunk_simple_gla"](_expand(q, H), _expand(k, H), v, g, scale=scale)[0],
                 budget_s)

    return {"fla_chunk_log_linear_attn": _lifted(fla_ll), "fla_chunk_gated_delta_rule": _lifted(fla_gdn),
            "fla_chunk_simple_gla": _lifted(fla_gla)}


def captured_op_table(meta: dict) -> Dict[str, Tuple[str, Optional[str]]]:
    """The ops a capture runs through, by name: ``(kind, policy)`` with kind ``ours`` (the captured policy first,
    named as the random rows name it, then our ``fenwick`` and ``single``) or ``peer`` (fla's kernels of the
    captured backbone, SDPA)."""
    op, backbone = meta["op"], meta["backbone"]
    ops: Dict[str, Tuple[str, Optional[str]]] = {}
    for policy in dict.fromkeys((op["policy"], "fenwick", "single")):
        name = (f"dla_{backbone}_C{op['capacity']}_tau{op['tau']:g}" if policy == "dla"
                else f"{policy}_{backbone} (ours)")
        ops[name] = ("ours", policy)
    peers = ["fla_chunk_log_linear_attn", "fla_chunk_simple_gla"] if backbone == "mamba2" else \
        ["fla_chunk_gated_delta_rule"]
    for name in [*peers, "sdpa_flash"]:
        ops[name] = ("peer", None)
    return ops


def run_captured_ops_bench(paths: Sequence[Union[str, Path]], tokens_per_call: Optional[int] = None,
                           budget_s: float = 3.0, out: Optional[Path] = None, progress: bool = True,
                           only: Optional[List[str]] = None, precision: Optional[str] = None,
                           command: str = "") -> dict:
    """Time DLA and its peers on captured op inputs (files of :func:`dla.bench.capture.capture`).

    For each file: the captured policy (``dla_<backbone>_C<C>_tau<tau>`` for DLA, with the captured options), our
    ``fenwick`` (the first ``num_levels(T)`` columns of the captured ``lam``, repeated if it has fewer) and
    ``single`` on the same ``q, k, v, g`` (and ``beta``); fla's kernels that take them (Mamba-2:
    ``chunk_log_linear_attn``, ``chunk_simple_gla``; Gated DeltaNet: ``chunk_gated_delta_rule``; ``q``, ``k``
    repeated per head); and SDPA (flash) on random tensors of the captured ``[B, T, H, V]`` (attention's cost does
    not depend on the values). DLA rows record the segmentation statistics of the captured batch. Rows carry the shape ``captured:<file stem>``.

    Args:
        paths: capture files; each is read and checked before anything is timed.
        tokens_per_call: repeat each capture's batch until a call holds at least this many tokens (the note
            says by how much); ``None``: the captured batch as it is.
        budget_s, only, precision, command: as :func:`run_ops_bench`.

    Without a CUDA GPU the files are still read and checked, the segmentation statistics computed, and every row
    says ``needs CUDA``.

    Raises:
        ValueError: a file that is not a capture (named), a pattern of ``only`` that matches no op of any file.
    """
    from dla.bench.capture import load_capture, tiled
    from dla.ops import chunk_dla

    captures = []
    for path in paths:
        tensors, meta = load_capture(path)
        captures.append((Path(path).stem, tensors, meta))
    tables = [captured_op_table(meta) for _, _, meta in captures]
    if only is not None:
        for pat in only:
            if not any(fnmatch.fnmatchcase(name, pat) for table in tables for name in table):
                names = sorted({name for table in tables for name in table})
                raise ValueError(f"--ops: pattern {pat!r} matches no op of the captures; ops are: {', '.join(names)}")
        tables = [{n: spec for n, spec in t.items() if any(fnmatch.fnmatchcase(n, p) for p in only)} for t in tables]
    cuda = torch.cuda.is_available()
    from tqdm import tqdm

    meta = _meta(tokens_per_call or 0)
    meta["dla_precision"] = precision if precision not in (None, "auto") else "auto (bf16: bfloat16 inputs)"
    standard = all(m["dtypes"].get(n, "bfloat16") == "bfloat16" for _, _, m in captures for n in ("q", "k", "v")) \
        and all(m["dtypes"]["g"] == "float32" for _, _, m in captures)
    meta["dtype"] = "bfloat16 inputs, float32 log-decays" if standard else "as captured (meta.inputs)"
    meta["inputs"] = {name: m for name, _, m in captures}
    if command:
        meta["command"] = command
    rows: List[Row] = []
    cases = [(i, name) for i, table in enumerate(tables) for name in table]
    for i, name in tqdm(cases, disable=not progress, desc="bench ops (captured)"):
        stem, tensors, cmeta = captures[i]
        kind, policy = tables[i][name]
        B, T = tensors["q"].shape[:2]
        H, V = tensors["v"].shape[2:]
        reps = 1
        if tokens_per_call:
            _, reps = tiled({"q": tensors["q"]}, tokens_per_call)
        row = Row(op=name, shape=f"captured:{stem}", T=T, B=B * reps)
        row.note = f"batch: the {B} captured sequences x {reps}" if reps > 1 else ""
        if kind == "ours" and policy == "dla":
            with torch.no_grad():
                seg = chunk_dla(**tensors, **cmeta["op"], return_segmentation=True)[2]
            row.stats = _dla_stats(seg, T)
        if not cuda:
            row.note = "; ".join(x for x in (row.note, "needs CUDA") if x)
            rows.append(row)
            continue
        dev = {n: (t.cuda() if t is not None else None) for n, t in tensors.items()}
        if reps > 1:
            dev, _ = tiled(dev, tokens_per_call)
        try:
            if kind == "ours":
                _time_ours(row, dev, cmeta["op"], policy, budget_s, precision)
            else:
                _time_peer(row, name, dev, cmeta["op"]["scale"], budget_s)
        except torch.cuda.OutOfMemoryError:
            row.note = "; ".join(x for x in (row.note, "out of memory") if x)
        except RuntimeError as e:
            row.note = "; ".join(x for x in (row.note, f"error: {str(e).splitlines()[0][:120]}") if x)
        del dev
        torch.cuda.empty_cache()
        rows.append(row)
        result = {"meta": meta, "rows": [asdict(r) for r in rows]}
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1))
    result = {"meta": meta, "rows": [asdict(r) for r in rows]}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    return result


def _fresh(tensors: Dict[str, Optional[torch.Tensor]], names: Sequence[str]) -> Callable[[], Dict[str, torch.Tensor]]:
    """A ``make`` for :func:`_measure`: fresh leaf copies of the named tensors."""
    return lambda: {n: tensors[n].clone() for n in names}


def _time_ours(row: Row, tensors: Dict[str, Optional[torch.Tensor]], op: dict, policy: str, budget_s: float,
               precision: Optional[str]) -> None:
    from dla.ops import chunk_dla, num_levels

    T = tensors["q"].shape[1]
    kw = dict(op, policy=policy, precision=precision)
    data = dict(tensors)
    if policy == "single":
        data["lam"], kw["capacity"] = None, 1
    elif policy == "fenwick":
        L, lam = num_levels(T), tensors["lam"]
        data["lam"] = lam.repeat(1, 1, 1, -(-L // lam.shape[-1]))[..., :L].contiguous()
        kw["capacity"] = L
        row.note = "; ".join(x for x in (row.note, f"lam: the captured weights' first {L} columns") if x)
    names = [n for n in ("q", "k", "v", "g", "lam", "beta") if data[n] is not None]
    _measure(row, _fresh(data, names), lambda **x: chunk_dla(**x, **kw)[0], budget_s)


def _time_peer(row: Row, name: str, tensors: Dict[str, Optional[torch.Tensor]], scale: float,
               budget_s: float) -> None:
    B, T, H, V = tensors["v"].shape
    if name == "sdpa_flash":
        def make():
            return {n: torch.randn(B, H, T, V, device="cuda", dtype=torch.bfloat16) for n in "qkv"}

        _measure(row, make, lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
                 budget_s)
        row.note = "; ".join(x for x in (row.note, "random q, k, v of the captured [B, H, T, V]") if x)
        return
    peers = _captured_peer_ops()
    if name not in peers:
        row.note = "; ".join(x for x in (row.note, "fla not installed") if x)
        return
    peers[name](row, tensors, scale, budget_s)


def speed_ratios(rows: List[dict], T: int, shape: str = "h16") -> Dict[str, float]:
    """fwd+bwd time of each op over fla's chunk_log_linear_attn at length ``T`` (missing: nan)."""
    at = {r["op"]: r["fwdbwd_ms"] for r in rows if r["T"] == T and r["shape"] == shape}
    base = at.get("fla_chunk_log_linear_attn")
    return {op: (ms / base if ms and base else math.nan) for op, ms in at.items()}
