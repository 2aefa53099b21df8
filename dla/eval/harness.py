"""lm-eval's own command line with model type ``dla`` registered and the project's task files indexed.

``python -m dla.eval.harness run --model dla --model_args pretrained=DIR --tasks piqa`` accepts everything
``lm_eval`` does. lm-eval 0.4.13 (the version the ``eval`` extra pins) finds no third-party model by itself, so its
plain ``lm_eval`` script does not know ``dla``; this module imports the adapter first, as fla's
``evals/harness.py`` does. Later lm-eval releases load the ``lm_eval.models`` entry point this package declares,
and their own ``lm_eval --model dla`` works as well. Without
``--include_path``, the project's task directory (:data:`dla.eval.jrt.TASK_DIR`: ``jrt_nq_2048``,
``jrt_triviaqa``, ``jrt_drop`` ...) is passed as one; lm-eval's command line takes a single include path, so a run
that passes its own must put the project's task files in it (or use ``dla eval``, which indexes both).
"""

from __future__ import annotations

import sys
from typing import List, Optional

import dla.eval.lm_eval_model  # noqa: F401  (registers model type "dla")


def with_task_dir(argv: List[str]) -> List[str]:
    """``argv`` plus ``--include_path TASK_DIR`` for the ``run``/``ls``/``validate`` commands (and lm-eval's legacy
    form without a command, ``--model ... --tasks ...``) that give none."""
    from dla.eval.jrt import TASK_DIR

    commands = {"run", "ls", "validate"}
    if not argv or not (argv[0] in commands or argv[0].startswith("-")) or \
            any(a == "--include_path" or a.startswith("--include_path=") for a in argv):
        return list(argv)
    return list(argv) + ["--include_path", str(TASK_DIR)]


def main(argv: Optional[List[str]] = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    sys.argv[1:] = with_task_dir(sys.argv[1:] if argv is None else argv)
    cli_evaluate()


if __name__ == "__main__":
    main()
