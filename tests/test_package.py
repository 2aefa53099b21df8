"""What ``import dla`` does: needs only torch, registers model type ``dla`` with transformers' Auto classes without
importing transformers itself. (The declared floors are checked by .ci/run, in an environment of its own.)"""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_import_dla_needs_only_torch():
    # transformers made uninstallable: importing it raises as a missing package does
    res = run_python("""
        import sys
        class NotInstalled:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in ("transformers", "safetensors", "tokenizers"):
                    raise ModuleNotFoundError(f"No module named {name!r}")
        sys.meta_path.insert(0, NotInstalled())
        import dla, dla.ops, dla.layers
        assert "transformers" not in sys.modules and "dla.models" not in sys.modules
        print("ok")
    """)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_import_dla_registers_the_auto_classes_when_transformers_is_imported_later():
    res = run_python("""
        import sys
        import dla
        assert "transformers" not in sys.modules and "dla.models" not in sys.modules  # nothing paid up front
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
        config = AutoConfig.for_model("dla", vocab_size=64, hidden_size=32, num_hidden_layers=1, num_heads=2,
                                      head_k_dim=8)
        print(type(config).__name__, type(AutoModelForCausalLM.from_config(config)).__name__,
              type(AutoModel.from_config(config)).__name__)
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["DLAConfig", "DLAForCausalLM", "DLAModel"]


def test_import_dla_registers_the_auto_classes_when_transformers_came_first(tmp_path):
    res = run_python(f"""
        import transformers
        import dla
        from dla.models import DLAConfig, DLAForCausalLM
        DLAForCausalLM(DLAConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_heads=2,
                                 head_k_dim=8)).save_pretrained({str(tmp_path)!r})
        print(type(transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})).__name__)
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-1] == "DLAForCausalLM"

