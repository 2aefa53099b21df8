"""The ``dla`` command."""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from typing import List, Optional


def _info(_: argparse.Namespace) -> int:
    import torch

    import dla

    rows = {"dla": dla.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available",
            # an optional dependency that fails to import in any way is reported, not raised
            **dla.package_versions(("triton", "transformers", "fla"), unknown="installed", catch=(Exception,))}
    width = max(map(len, rows))
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")
    return 0


def _check(args: argparse.Namespace) -> int:
    """Compare the chunked form with the slot form on random inputs and print the errors."""
    import torch

    from dla.ops import chunk_dla, naive_dla

    if args.length < 1:
        raise ValueError(f"--length: expected an int >= 1, got {args.length}")
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    gen = torch.Generator().manual_seed(args.seed)
    B, T, H, K, V, C = 1, args.length, 2, 16, 16, max(args.capacity, 1)  # lam's width; the op judges --capacity
    q, k = torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, H, K, generator=gen)
    k = torch.nn.functional.normalize(k, dim=-1)
    v, g = torch.randn(B, T, H, V, generator=gen), -torch.rand(B, T, H, generator=gen) * 0.1
    lam, beta = torch.rand(B, T, H, C, generator=gen) + 0.5, torch.rand(B, T, H, generator=gen)
    report = []
    for backbone, b in (("mamba2", None), ("gdn", beta)):
        ins = [x.to(device, dtype) if x is not None else None for x in (q, k, v, g, lam, b)]
        kw = dict(tau=args.tau, capacity=args.capacity, return_segmentation=True)
        o_ref, _, seg_ref = naive_dla(*ins, **kw)
        o, _, seg = chunk_dla(*ins, **kw)
        err = float((o - o_ref).norm() / o_ref.norm())
        same = bool((seg.boundary == seg_ref.boundary).all())
        report.append({"backbone": backbone, "rel_err": err, "same_boundaries": same,
                       "slots_opened": int(seg.boundary.sum()), "merges": int((seg.merged >= 0).sum())})
    print(json.dumps(report, indent=2))
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    ok = all(r["rel_err"] < tol and r["same_boundaries"] for r in report)
    print("ok" if ok else "MISMATCH")
    return 0 if ok else 1


def _bench_ops(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dla.bench.ops import run_captured_ops_bench, run_ops_bench
    from dla.bench.report import write_report

    out = Path(args.out or ("docs/bench/ops_captured.json" if args.inputs else "docs/bench/ops.json"))
    if args.inputs:
        run_captured_ops_bench(args.inputs, tokens_per_call=args.tokens if args.tile else None, budget_s=args.budget,
                               out=out, only=args.ops, precision=None if args.precision == "auto" else args.precision,
                               command=shlex.join(["dla", *getattr(args, "argv", [])]))
        write_report(out, out.with_suffix(".md"), out.with_suffix(".png"))
        print(out.with_suffix(".md").read_text())
        return 0
    if args.tile:
        raise ValueError("--tile: tiles the batch of captured inputs; give them with --inputs")
    run_ops_bench(args.lengths, tokens_per_call=args.tokens, shapes=args.shapes, capacities=args.capacities,
                  taus=args.taus, budget_s=args.budget, max_call_s=args.max_call_s, out=out, only=args.ops,
                  precision=None if args.precision == "auto" else args.precision,
                  command=shlex.join(["dla", *getattr(args, "argv", [])]))
    write_report(out, out.with_suffix(".md"), out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())
    return 0


def _bench_capture(args: argparse.Namespace) -> int:
    from dla.bench.capture import capture, capture_summary

    meta = capture(args.checkpoint, args.out, layer=args.layer, length=args.length, batch=args.batch,
                   data=args.data, device=args.device, precision=args.precision)
    print(f"{args.out}: {capture_summary(meta)}")
    return 0


def _bench_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dla.bench.report import merge_results, write_report

    srcs = [Path(x) for x in args.json]
    if len(srcs) > 1 or args.out:
        if not args.out:
            raise ValueError("--out: needed to merge several JSONs (the merged JSON is written there)")
        out = Path(args.out)
        merged = merge_results([json.loads(src.read_text()) for src in srcs], [src.as_posix() for src in srcs])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(merged, indent=1))
    else:
        out = srcs[0]
    write_report(out, out.with_suffix(".md"), out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from dla.eval.cli import add_eval_parser, one_line_errors

    parser = argparse.ArgumentParser(prog="dla", description="Dynamic Linear Attention: ops, models, training, "
                                     "evaluation and benchmarks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="versions of dla and its dependencies, and the accelerator")
    p.set_defaults(fn=_info)
    p = sub.add_parser("check", help="check the chunked op against the slot-form reference on random inputs")
    p.add_argument("--length", type=int, default=200, help="tokens per sequence (default 200)")
    p.add_argument("--capacity", type=int, default=8, help="slot capacity C (default 8)")
    p.add_argument("--tau", type=float, default=0.3, help="boundary threshold (default 0.3)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=one_line_errors(_check))

    bench = sub.add_parser("bench", help="GPU benchmarks: DLA and its peers side by side").add_subparsers(
        dest="bench", metavar="BENCH", required=True)
    p = bench.add_parser("ops", help="fwd and fwd+bwd ms and peak memory of the ops (needs CUDA)")
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384, 32768, 65536])
    p.add_argument("--tokens", type=int, default=65536, help="tokens per call (batch = tokens // T)")
    p.add_argument("--shapes", nargs="+", default=["h16", "ll_mamba2"], choices=["h16", "ll_mamba2"])
    p.add_argument("--capacities", type=int, nargs="+", default=[8, 16, 30])
    p.add_argument("--taus", type=float, nargs="+", default=[0.6, 0.0])
    p.add_argument("--budget", type=float, default=3.0, help="seconds of repetitions per measurement")
    p.add_argument("--max-call-s", type=float, default=20.0, help="skip longer T once one call takes this long")
    p.add_argument("--ops", nargs="+", default=None, metavar="PATTERN",
                   help="time only the ops whose name matches one of these shell patterns (e.g. 'dla_mamba2_C30*' "
                        "'fla_*' sdpa_flash); default: all")
    p.add_argument("--precision", default="auto", choices=["auto", "ieee", "tf32", "tf32x3", "bf16", "fp16"],
                   help="chunk_dla's precision= for the DLA rows (products of the backbone and readout kernels)")
    p.add_argument("--inputs", nargs="+", default=None, metavar="FILE",
                   help="time on op inputs captured from a trained model (`dla bench capture`) instead of random "
                        "ones; rows get the shape captured:<file stem> (--lengths, --shapes, --capacities, --taus "
                        "do not apply)")
    p.add_argument("--tile", action="store_true", help="with --inputs: repeat the captured batch up to --tokens "
                   "tokens per call")
    p.add_argument("--out", default=None, help="JSON, .md and .png beside it (default docs/bench/ops.json; "
                   "docs/bench/ops_captured.json with --inputs)")
    p.set_defaults(fn=_bench_ops)
    p = bench.add_parser("capture", help="record one layer's DLA op inputs from a trained checkpoint on held-out "
                         "data (for `dla bench ops --inputs`)")
    p.add_argument("checkpoint", help="a `dla train` run directory (final/ is read) or a save_pretrained directory")
    p.add_argument("--out", required=True, help="the safetensors file to write")
    p.add_argument("--layer", type=int, default=None, help="a recurrent layer's index (default: the middle one)")
    p.add_argument("--length", type=int, default=None, help="tokens per sequence (default: the training length)")
    p.add_argument("--batch", type=int, default=1, help="sequences (default 1)")
    p.add_argument("--data", default=None, help="a language model's held-out data: a token corpus directory "
                   "(`dla data tokenize`) or a UTF-8 text file (default: the recipe's validation split; MQAR "
                   "checkpoints generate their task's validation sequences)")
    p.add_argument("--device", default=None, help="default: cuda if available")
    p.add_argument("--precision", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="auto: bfloat16 autocast on CUDA (as dla train runs), float32 on CPU")
    p.set_defaults(fn=one_line_errors(_bench_capture))
    p = bench.add_parser("report", help="markdown tables and PNG plots from `dla bench ops` JSONs (several: merged)")
    p.add_argument("json", nargs="+", help="one JSON, or several pieces of a sweep (a later file's rows replace an "
                   "earlier file's rows of the same shape, length and op)")
    p.add_argument("--out", default=None, help="the merged JSON (needed for several); .md and .png beside it")
    p.set_defaults(fn=_bench_report)
    from dla.bench.decode import add_decode_bench_parser
    from dla.bench.generate import add_generate_bench_parser
    from dla.bench.train import add_train_bench_parser

    add_generate_bench_parser(bench)
    add_decode_bench_parser(bench)
    add_train_bench_parser(bench)

    from dla.data.cli import add_data_parser
    from dla.study.cli import add_study_parser
    from dla.train.cli import add_quickstart_parser, add_train_parser

    add_quickstart_parser(sub)
    add_train_parser(sub)
    add_eval_parser(sub)
    add_data_parser(sub)
    add_study_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # a subcommand that takes trailing items (dla train's overrides after an option), or an error
        if getattr(args, "take_extra", None) is None:
            parser.parse_args(argv)  # reports the unrecognized arguments with the usage
        args.take_extra(args, extra)
    args.argv = list(argv if argv is not None else sys.argv[1:])  # recorded by the benchmarks
    if not getattr(args, "fn", None):
        parser.print_help()
        return 0
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
