"""lm-eval's own command line with model type ``dla`` registered.

``python -m dla.eval.harness run --model dla --model_args pretrained=DIR --tasks piqa`` accepts everything
``lm_eval`` does (lm-eval 0.4.13 finds no third-party model by itself, so the plain ``lm_eval`` script does not
know ``dla``; this module imports the adapter first, as fla's ``evals/harness.py`` does).
"""

from __future__ import annotations

import dla.eval.lm_eval_model  # noqa: F401  (registers model type "dla")


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
