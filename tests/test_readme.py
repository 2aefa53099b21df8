"""The README's examples run as written, and its command list names every ``dla`` subcommand."""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end >= 0 else len(README)]


PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_examples_run_as_written(index, capsys):
    torch.manual_seed(0)
    exec(compile(PYTHON_BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    for expected in re.findall(r"#\s*(torch\.Size\(\[[\d, ]+\]\))", PYTHON_BLOCKS[index]):
        assert expected in printed  # the shapes the comments promise


def test_command_line_section_lists_every_subcommand():
    from dla.cli import build_parser

    listed = section("Command line")
    commands = next(a for a in build_parser()._subparsers._group_actions).choices
    for name in commands:
        assert re.search(rf"^dla {re.escape(name)}\b", listed, re.M), f"README's command list has no `dla {name}`"
