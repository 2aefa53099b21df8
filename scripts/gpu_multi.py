"""Multi-GPU check of ``dla train``: the same recipe on 1 GPU, then under ``torchrun`` with DDP and FSDP2 over NCCL.

Every run trains the same global batch (``train.global_batch_size``) for the same steps; a rank takes
``micro_batch_size`` sequences per micro step, so one GPU accumulates what several GPUs take at once and the loss
curves should agree (bf16 autocast: to about 1e-2). Reported per run: tokens/s (all GPUs, median over the logged
intervals after the first, which holds the Triton compiles), tokens/s per GPU, scaling versus the 1-GPU run, and the
largest loss difference to the 1-GPU run at the logged steps, and rank 0's peak GPU memory.

Usage (repo root, a machine with N >= 2 GPUs):
    python3 scripts/gpu_multi.py OUT [--runs 1gpu ddp2 fsdp2] [--config configs/gpu-smoke.yaml] [--steps 12]
Runs can be split over several calls with the same OUT: the table is rebuilt from every run found under OUT.
Writes OUT/<run>/log.jsonl (the trainer's log), OUT/multi_gpu.json and OUT/multi_gpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = {  # name: (processes, parallelism)
    "1gpu": (1, "ddp"),
    "ddp2": (2, "ddp"),
    "fsdp2": (2, "fsdp"),
    "ddp4": (4, "ddp"),
    "fsdp4": (4, "fsdp"),
    "ddp8": (8, "ddp"),
    "fsdp8": (8, "fsdp"),
}


def _command(nproc: int, config: str, overrides: list[str]) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "dla.train", config, *overrides]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "dla.train", config, *overrides]


def run_one(name: str, args: argparse.Namespace) -> None:
    nproc, parallelism = RUNS[name]
    run_dir = Path(args.work) / name  # checkpoints and weights stay off OUT
    out = Path(args.out) / name
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"out_dir={run_dir}", f"train.max_steps={args.steps}", f"train.parallelism={parallelism}",
                 f"log.every={args.log_every}", "checkpoint.every=0", "train.eval_every=0",
                 f"train.max_time_s={args.max_time}", "log.tensorboard=false", *args.overrides]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in range(nproc)))
    cmd = _command(nproc, args.config, overrides)
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(out / "stdout.txt", "w") as f:
        try:
            rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    wall = time.perf_counter() - t0
    log = run_dir / "log.jsonl"
    if log.exists():
        (out / "log.jsonl").write_text(log.read_text())
    (out / "meta.json").write_text(json.dumps({"name": name, "nproc": nproc, "parallelism": parallelism, "rc": rc,
                                               "wall_s": round(wall, 1), "config": args.config,
                                               "overrides": overrides}))
    print(f"   rc {rc}, {wall:.0f} s; last lines:", flush=True)
    print("".join((out / "stdout.txt").read_text().splitlines(keepends=True)[-6:]), flush=True)


def summarize(out: Path) -> list[dict]:
    rows = []
    for meta_path in sorted(out.glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        log = meta_path.parent / "log.jsonl"
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        train = [r for r in records if r.get("kind") == "train"]
        tps = [r["tokens_per_s"] for r in train[1:]] or [r["tokens_per_s"] for r in train]
        rows.append({**meta, "steps": train[-1]["step"] if train else 0,
                     "tokens_per_s": statistics.median(tps) if tps else None,
                     "peak_mem_gib": max((r.get("peak_mem_gib", 0.0) for r in train), default=None) or None,
                     "losses": {r["step"]: r["loss"] for r in train}})
    base = next((r for r in rows if r["nproc"] == 1 and r["tokens_per_s"]), None)
    for r in rows:
        r["tokens_per_s_per_gpu"] = r["tokens_per_s"] / r["nproc"] if r["tokens_per_s"] else None
        if base is not None and r["tokens_per_s"]:
            r["speedup_vs_1gpu"] = r["tokens_per_s"] / base["tokens_per_s"]
            r["per_gpu_vs_1gpu"] = r["tokens_per_s_per_gpu"] / base["tokens_per_s"]
            common = set(r["losses"]) & set(base["losses"])
            r["max_loss_diff_vs_1gpu"] = max((abs(r["losses"][s] - base["losses"][s]) for s in common), default=None)
    return rows


def write_table(out: Path, rows: list[dict], env: dict) -> None:
    (out / "multi_gpu.json").write_text(json.dumps({"env": env, "runs": rows}, indent=1, default=str))

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = ["| run | GPUs | parallelism | rc | steps | tokens/s | tokens/s per GPU | speedup vs 1 GPU | "
             "per GPU vs 1 GPU | peak GiB (rank 0) | final loss | max loss diff vs 1 GPU |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        final = r["losses"][max(r["losses"])] if r["losses"] else None
        lines.append(f"| {r['name']} | {r['nproc']} | {r['parallelism']} | {r['rc']} | {r['steps']} | "
                     f"{f(r['tokens_per_s'], ',.0f')} | {f(r['tokens_per_s_per_gpu'], ',.0f')} | "
                     f"{f(r.get('speedup_vs_1gpu'), '.2f')} | {f(r.get('per_gpu_vs_1gpu'), '.2f')} | "
                     f"{f(r['peak_mem_gib'], '.1f')} | "
                     f"{f(final, '.4f')} | {f(r.get('max_loss_diff_vs_1gpu'), '.4f')} |")
    text = "\n".join(lines) + "\n"
    (out / "multi_gpu.md").write_text(text)
    print(text)


def environment() -> dict:
    import torch

    env = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "torch": torch.__version__,
           "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
           "nccl": ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        pass
    return env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--runs", nargs="+", default=["1gpu", "ddp2", "fsdp2"], choices=list(RUNS))
    p.add_argument("--config", default="configs/gpu-smoke.yaml")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--log-every", type=int, default=2)
    p.add_argument("--max-time", type=float, default=150.0, help="train.max_time_s of each run")
    p.add_argument("--timeout", type=float, default=240.0, help="wall-clock limit of each run (s)")
    p.add_argument("--work", default="/tmp/dla_multi", help="run directories (checkpoints, weights)")
    p.add_argument("overrides", nargs="*", default=[], help="more section.field=value overrides for every run")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.runs:
        run_one(name, args)
    write_table(out, summarize(out), environment())


if __name__ == "__main__":
    main()
