"""``python -m dla.train CONFIG [section.field=value ...]``: the ``dla train`` command without the ``dla`` entry
point (e.g. ``torchrun --nproc_per_node 2 -m dla.train configs/tiny.yaml train.parallelism=fsdp``)."""

import argparse
import sys

from dla.train.cli import add_train_parser


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dla.train")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_train_parser(sub)
    args, extra = parser.parse_known_args(["train", *(sys.argv[1:] if argv is None else argv)])
    if extra:
        args.take_extra(args, extra)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
