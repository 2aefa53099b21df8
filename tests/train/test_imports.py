"""The trainer stands on the library alone: no evaluation code, and no import cycle (the model side does not
import the recipe side; the recipe side imports the model side)."""

from .conftest import run_python


def test_train_imports_no_eval_and_no_cycle():
    code = ("import sys, dla.train.model\n"
            "assert 'dla.train.config' not in sys.modules\n"
            "import dla.train.loop\n"
            "bad = sorted(m for m in sys.modules if m.startswith('dla.eval'))\n"
            "assert not bad, bad\n"
            "from dla.eval.synthetic import MQARConfig, generate_mqar, mqar_splits\n"
            "import dla.data.mqar as m\n"
            "assert (MQARConfig, generate_mqar, mqar_splits) == (m.MQARConfig, m.generate_mqar, m.mqar_splits)\n")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
