"""``dla bench decode`` on CPU at toy sizes: every op runs, caches have the sizes the policies imply, the table
and plot are written, bad arguments are named."""

import json

import pytest

from dla.bench.decode import _counts, decode_markdown, run_decode_bench
from dla.cli import main


@pytest.mark.parametrize("policy,T,width,expect", [
    ("dla", 100, 30, (30, 100)), ("dla", 10, 30, (10, 10)), ("fenwick", 100, 8, (3, 100)),
    ("single", 100, 1, (1, 100))])
def test_counts_add_up_to_the_context(policy, T, width, expect):
    counts, m = _counts(policy, T, width)
    assert (m, sum(counts)) == expect and len(counts) == m and min(counts) >= 1
    if policy == "fenwick":
        assert counts == sorted(counts, reverse=True) and all(c & (c - 1) == 0 for c in counts)


def test_runs_on_cpu_and_writes_table(tmp_path):
    out = tmp_path / "decode.json"
    assert main(["bench", "decode", "--device", "cpu", "--tiny", "--contexts", "64", "4096", "--batches", "1", "3",
                 "--capacity", "8", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["meta"]["command"].startswith("dla bench decode --device cpu --tiny --contexts 64 4096")
    assert {"triton", "fla"} <= set(result["meta"])
    rows = result["rows"]
    by = {(r["op"], r["context"], r["batch"]): r for r in rows}
    for op in ("dla_mamba2", "dla_gdn", "fenwick", "single", "sdpa_kv_cache"):
        for T in (64, 4096):
            for B in (1, 3):
                assert by[op, T, B]["eager_ms"] > 0, (op, T, B)
    assert by["fla_fused_recurrent_gdn", 64, 1]["note"] == "needs CUDA"
    assert by["fla_fused_recurrent_simple_gla", 4096, 3]["note"] == "needs CUDA"
    # cache sizes: DLA constant in the context, Fenwick grows as log T, the KV cache linearly
    mib = lambda op, T: by[op, T, 3]["cache_mib"]  # noqa: E731
    assert mib("dla_gdn", 64) == mib("dla_gdn", 4096)
    assert mib("fenwick", 64) < mib("fenwick", 4096) < 2 * mib("fenwick", 64)
    assert mib("sdpa_kv_cache", 4096) > 50 * mib("sdpa_kv_cache", 64)
    assert mib("single", 64) < mib("dla_gdn", 64)
    md = out.with_suffix(".md").read_text()
    assert "**batch 3**" in md and "| dla_gdn |" in md
    assert out.with_suffix(".png").stat().st_size > 1000
    assert decode_markdown(json.loads(out.read_text())).count("| op |") == 2


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="ops"):
        run_decode_bench([64], [1], ["dla_rwkv"], device="cpu", tiny=True)
    with pytest.raises(ValueError, match="capacity"):
        run_decode_bench([64], [1], ["dla_gdn"], capacity=0, device="cpu", tiny=True)
