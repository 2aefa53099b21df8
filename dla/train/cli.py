"""The ``dla train`` and ``dla quickstart`` subcommands (added to the ``dla`` command by ``dla.cli``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from dla.train.recipes import list_recipes


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(levelname)s %(message)s",
                        stream=sys.stderr)


def _train(args: argparse.Namespace) -> int:
    from dla.train.config import load_config
    from dla.train.loop import train

    overrides = list(args.overrides)
    if args.out_dir is not None:
        overrides.append(f"out_dir={args.out_dir}")
    try:
        config = load_config(args.config, overrides)
        if args.print_config:
            import yaml
            print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
            return 0
        _setup_logging()
        result = train(config, resume=args.resume)
    except (ValueError, FileNotFoundError) as e:  # bad config, data or checkpoint: the message says what to fix
        print(f"dla train: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        summary = {"out_dir": str(result.out_dir), "steps": result.steps, "tokens": result.tokens,
                   "train_time_s": round(result.train_time_s, 2), "tokens_per_s": round(result.tokens_per_s, 1),
                   "num_params": result.num_params, "final_loss": result.final_loss, **result.metrics}
        print(json.dumps(summary, indent=2))
    return 0


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``train CONFIG [section.field=value ...] [--resume [PATH]] [--out-dir DIR] [--print-config]``."""
    names = ", ".join(list_recipes()) or "none found"
    p = subparsers.add_parser(
        "train", help="train a model from a recipe (configs/*.yaml); under torchrun for DDP/FSDP",
        description=f"Train a model from a recipe file or name (recipes: {names}). Overrides set any field, "
                    f"e.g. train.lr=1e-3 model.capacity=8 data.seq_len=512. Under `torchrun --nproc_per_node N` "
                    f"every process runs this command (train.parallelism=ddp|fsdp).")
    p.add_argument("config", help="recipe file (.yaml/.json/.toml) or recipe name")
    p.add_argument("overrides", nargs="*", metavar="section.field=value", help="override fields of the recipe")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint of the run directory (or from CHECKPOINT); "
                        "'auto': the latest if any, else start fresh")
    p.add_argument("--out-dir", default=None, help="run directory (default runs/<name>; same as out_dir=...)")
    p.add_argument("--print-config", action="store_true", help="print the validated config and exit")
    p.set_defaults(fn=_train)
    return p


def _quickstart(args: argparse.Namespace) -> int:
    from dla.train.quickstart import run_quickstart

    _setup_logging()
    logging.getLogger("dla").setLevel(logging.WARNING)
    run_quickstart(args.out, backbones=tuple(args.backbones), tasks=tuple(args.tasks), scale=args.scale,
                   cache_dir=args.cache_dir, progress=not args.no_progress and sys.stderr.isatty())
    return 0


def add_quickstart_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``quickstart [--out DIR] [--backbones ...] [--tasks ...] [--scale X]``."""
    from dla.train.quickstart import BACKBONES, TASK_RECIPES

    p = subparsers.add_parser(
        "quickstart", help="train tiny DLA models and their baselines on CPU, compare them (table + plots)",
        description="Train tiny DLA, plain and Log-Linear models on the stdlib corpus (validation perplexity) and "
                    "on MQAR (recall accuracy), then print a comparison table and write plots and JSON. "
                    "A few minutes on 2 CPU cores with the defaults.")
    p.add_argument("--out", default="runs/quickstart", help="output directory (default runs/quickstart)")
    p.add_argument("--backbones", nargs="+", default=["mamba2"], choices=list(BACKBONES),
                   help="backbones to compare DLA on (default mamba2; gdn roughly doubles the time)")
    p.add_argument("--tasks", nargs="+", default=list(TASK_RECIPES), choices=list(TASK_RECIPES))
    p.add_argument("--scale", type=float, default=1.0, help="multiply every run's training steps (default 1)")
    p.add_argument("--cache-dir", default="runs/cache", help="tokenizer and token cache (default runs/cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none either when stderr is not a "
                   "terminal)")
    p.set_defaults(fn=_quickstart)
    return p


__all__ = ["add_train_parser", "add_quickstart_parser"]
