"""The ``dla train`` and ``dla quickstart`` subcommands (added to the ``dla`` command by ``dla.cli``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys

from dla.train.recipes import list_recipes


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(levelname)s %(message)s",
                        stream=sys.stderr)


def _split_resume(args: argparse.Namespace) -> None:
    """``--resume`` takes an optional CHECKPOINT; an override written right after it (``--resume train.lr=1e-4``)
    is an override, not a path."""
    if isinstance(args.resume, str) and "=" in args.resume and not os.path.exists(args.resume):
        args.overrides.append(args.resume)
        args.resume = True


def take_overrides(args: argparse.Namespace, extra: list, parser: argparse.ArgumentParser) -> None:
    """Overrides given after an option (``dla train tiny --out-dir x train.lr=1e-3``) join ``args.overrides``;
    anything else left over is an error of this subcommand's parser."""
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides.extend(extra)


def _resume_hint(args: argparse.Namespace, out_dir) -> str:
    from dla.train.checkpoint import latest_checkpoint

    latest = latest_checkpoint(out_dir / "checkpoints")
    if latest is None:
        return "no checkpoint was written yet, so there is nothing to resume"
    out = ["--out-dir", args.out_dir] if args.out_dir is not None else []
    command = shlex.join(["dla", "train", args.config, *args.overrides, *out, "--resume"])
    return f"the latest checkpoint is {latest}; continue with: {command}"


def _train(args: argparse.Namespace) -> int:
    from dla.train.config import load_config
    from dla.train.loop import train

    _split_resume(args)
    overrides = list(args.overrides)
    if args.out_dir is not None:
        overrides.append(f"out_dir={args.out_dir}")
    main = int(os.environ.get("RANK", "0")) == 0
    config = None
    try:
        config = load_config(args.config, overrides)
        if args.print_config:
            import yaml
            print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
            return 0
        _setup_logging()
        result = train(config, resume=args.resume, allow_changes=args.allow_changes)
    except (ValueError, FileNotFoundError) as e:  # bad config, data or checkpoint: the message says what to fix
        print(f"dla train: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # the run diverged: the message names the last good checkpoint
        print(f"dla train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if main:
            where = _resume_hint(args, config.output_dir) if config is not None else "nothing was started"
            print(f"\ndla train: interrupted; {where}", file=sys.stderr)
        return 130
    if main:
        summary = {"out_dir": str(result.out_dir), "steps": result.steps, "tokens": result.tokens,
                   "train_time_s": round(result.train_time_s, 2), "tokens_per_s": round(result.tokens_per_s, 1),
                   "num_params": result.num_params, "final_loss": result.final_loss, **result.metrics}
        print(json.dumps(summary, indent=2))
    return 0


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``train CONFIG [section.field=value ...] [--resume [PATH]] [--allow-changes] [--out-dir DIR]
    [--print-config]``; overrides may also follow the options (the caller passes what ``parse_known_args`` left
    to ``args.take_extra``)."""
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
    p.add_argument("--allow-changes", action="store_true",
                   help="resume although train.* settings differ from the checkpoint's (max_time_s, eval_every, "
                        "eval_batches, compile and activation_checkpointing may change without it); the run's "
                        "config.yaml is kept, the new settings go to config.resume-<step>.yaml and log.jsonl")
    p.add_argument("--out-dir", default=None, help="run directory (default runs/<name>; same as out_dir=...)")
    p.add_argument("--print-config", action="store_true", help="print the validated config and exit")
    p.set_defaults(fn=_train, take_extra=lambda args, extra: take_overrides(args, extra, p))
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


__all__ = ["add_train_parser", "add_quickstart_parser", "take_overrides"]
