"""``dla bench ops`` on a CPU machine: the op table, the ``--ops`` filter and its errors (timing needs CUDA)."""

import pytest
import torch

from dla.bench.ops import op_table, run_ops_bench, select_ops
from dla.cli import main


def test_op_table_names_every_configuration():
    ops = op_table([8, 30], [0.6, 0.0])
    for backbone in ("mamba2", "gdn"):
        for C in (8, 30):
            assert ops[f"dla_{backbone}_C{C}_tau0.6"] == ("dla", backbone == "gdn", C, 0.6)
            assert f"dla_{backbone}_C{C}_tau0" in ops
        assert f"fenwick_{backbone} (ours)" in ops and f"single_{backbone} (ours)" in ops
    assert "sdpa_flash" in ops


def test_select_ops_by_pattern():
    ops = op_table([8, 30], [0.6, 0.0])
    got = select_ops(ops, ["dla_mamba2_C30*", "sdpa_flash"])
    assert sorted(got) == ["dla_mamba2_C30_tau0", "dla_mamba2_C30_tau0.6", "sdpa_flash"]
    assert select_ops(ops, None) is ops


def test_unmatched_pattern_is_named():
    with pytest.raises(ValueError, match="dla_rwkv"):
        select_ops(op_table([30], [0.6]), ["dla_rwkv*"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cli_checks_patterns_before_needing_a_gpu(tmp_path):
    with pytest.raises(ValueError, match="nope"):
        main(["bench", "ops", "--ops", "nope", "--out", str(tmp_path / "o.json")])
    with pytest.raises(RuntimeError, match="CUDA"):
        run_ops_bench([64], shapes=["h16"], capacities=[4], taus=[0.6], only=["sdpa_flash"])
