"""DLA's segmentation on held-out text (dla.eval.text_segstats) and its place in scripts/gpu_lm.py: token classes and
statistics on hand-made segmentations, the statistics of a tiny model against the segmentation its layers
computed, and the script's train (CPU smoke) and report with the statistics and the pictures."""

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from dla.data import SourceConfig
from dla.data.corpus import CorpusSource, TokenCorpus, write_corpus
from dla.data.tokenizer import TokenizerConfig
from dla.eval.segview import segment_view, token_strings, write_segment_view
from dla.eval.text_segstats import (CLASSES, heldout_paragraph, heldout_windows, is_dla, layer_stats, summary,
                                    text_segmentation_stats, token_classes)
from dla.layers import capture_segmentations

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two domains: prose paragraphs (blank lines, sentences, digits) and code lines; 30% held out."""
    rng = random.Random(0)
    words = "the a cat dog sat ran on under house river old young Mr. Bennet said quickly 1811 42".split()

    def paragraph():
        return " ".join(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize() + rng.choice(".!?")
                        for _ in range(rng.randint(2, 5)))

    root = tmp_path_factory.mktemp("segtext")
    for domain in ("books", "code"):
        (root / domain).mkdir()
        for i in range(12):
            text = ("\n\n".join(paragraph() for _ in range(rng.randint(10, 30))) if domain == "books" else
                    "\n".join(f"def f{j}(x):\n    return x + {j}" for j in range(rng.randint(20, 60))))
            (root / domain / f"{i:03d}.txt").write_text(text)
    sources = [CorpusSource(d, d, SourceConfig("files", path=str(root / d))) for d in ("books", "code")]
    write_corpus(sources, root / "tokens", tokenizer=TokenizerConfig(vocab_size=300, train_chars=100_000),
                 heldout=0.3)
    return TokenCorpus(root / "tokens")


def _model(corpus, policy="dla"):
    from dla.models import DLAConfig, DLAForCausalLM

    torch.manual_seed(0)
    config = DLAConfig(vocab_size=corpus.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, mixer="gdn",
                       num_heads=2, head_k_dim=8, policy=policy, capacity=4, tau=0.3, chunk_size=16,
                       max_position_embeddings=512)
    return DLAForCausalLM(config).eval()


def test_token_classes_hand_made():
    strings = ["<eos>", "The", " cat", "s", " sat", ".", "\n\n", '"', "Hi", '!"', " he", " said", " 42", "\n", "  ",
               "x", " =", " 3", "\n", " (", "a", ")", "<eos>", "Next"]
    restart = [s == "<eos>" for s in strings]
    got = token_classes(strings, restart)
    assert set(got) == set(CLASSES[1:])
    labels = [sorted(name for name, mask in got.items() if mask[t]) for t in range(len(strings))]
    assert labels[0] == labels[22] == []  # an EOS belongs to no class
    assert labels[1] == labels[23] == ["paragraph_start", "word_initial"]  # a document starts a paragraph
    assert labels[2] == ["word_initial"] and labels[3] == ["word_internal"]
    assert labels[5] == ["punctuation"] and labels[6] == ["whitespace"]
    assert labels[7] == ["paragraph_start", "punctuation", "sentence_start"]  # after ".\n\n"
    assert labels[10] == ["sentence_start", "word_initial"]  # after '!"': a closing quote between
    assert labels[11] == ["word_initial"] and labels[12] == ["digit", "word_initial"]
    assert labels[15] == ["line_start", "word_initial"]  # one newline, then indentation
    assert labels[19] == ["line_start", "punctuation"]
    with pytest.raises(ValueError, match="restart"):
        token_classes(strings, restart[:-1])


def test_layer_stats_hand_made():
    # 8 tokens, 2 heads, two segments (0-4, 5-7); per head: boundaries, merges and live slots.
    boundary = np.array([[1, 1], [0, 1], [1, 0], [0, 0], [1, 1], [1, 1], [0, 1], [1, 0]], dtype=bool)
    merged = np.array([[0, 0], [0, 0], [0, 0], [0, 0], [1, 1], [0, 0], [0, 0], [0, 0]], dtype=bool)
    slots = np.array([[1, 1], [1, 2], [2, 2], [2, 2], [2, 2], [1, 1], [1, 2], [2, 2]])
    start = np.array([1, 0, 0, 0, 0, 1, 0, 0], dtype=bool)
    cls = {"x": np.array([1, 1, 1, 0, 0, 1, 0, 1], dtype=bool), "none": np.zeros(8, dtype=bool)}
    domains = np.array(["a"] * 5 + ["b"] * 3)
    s = layer_stats(boundary, merged, slots, start, classes=cls, domains=domains, edges=(0, 2, 100))
    assert (s["tokens"], s["heads"]) == (8, 2)
    assert s["boundary_rate"] == pytest.approx(10 / 16)
    assert s["boundary_rate_heads"] == pytest.approx([5 / 8, 5 / 8])
    assert s["merge_rate"] == pytest.approx(2 / 16)
    assert s["slots_mean"] == pytest.approx(slots.mean()) and s["slots_max"] == 2
    assert s["slots_end"] == pytest.approx(2.0)  # after tokens 4 and 7
    assert s["segment_length"] == pytest.approx(4.0)
    assert s["slot_length_end"] == pytest.approx((5 + 3) * 2 / 8)
    assert boundary.sum() == 16 * s["merge_rate"] + 2 * 2 * s["slots_end"]  # every boundary: live or merged
    # the base leaves out the segments' first tokens (0 and 5): tokens 1-4, 6, 7
    assert s["classes"]["any"] == {"tokens": 6, "rate": pytest.approx(6 / 12), "lift": 1.0}
    # class x without segment starts: tokens 1, 2, 7 -> boundaries 1 + 1 + 1 of 6
    assert s["classes"]["x"]["tokens"] == 3
    assert s["classes"]["x"]["rate"] == pytest.approx(3 / 6)
    assert s["classes"]["x"]["lift"] == pytest.approx((3 / 6) / (6 / 12))
    assert s["classes"]["none"]["tokens"] == 0 and np.isnan(s["classes"]["none"]["rate"])
    # context positions: 0 1 2 3 4 0 1 2; buckets [0, 2) and [2, 5) (the edge 100 is past the longest segment)
    assert s["positions"] == [{"lo": 0, "hi": 2, "tokens": 4, "rate": pytest.approx(6 / 8)},
                              {"lo": 2, "hi": 5, "tokens": 4, "rate": pytest.approx(4 / 8)}]
    assert s["domains"]["a"] == {"tokens": 5, "boundary_rate": pytest.approx(6 / 10),
                                 "merge_rate": pytest.approx(2 / 10)}
    assert s["domains"]["b"]["boundary_rate"] == pytest.approx(4 / 6)
    row = summary({"layers": [s, {**s, "boundary_rate": 0.0}]})
    assert row["boundary_rate"] == pytest.approx(5 / 16) and row["slots_max"] == 2
    assert row["early_rate"] == pytest.approx(6 / 8) and row["late_rate"] == pytest.approx(4 / 8)
    with pytest.raises(ValueError, match="segment_start"):
        layer_stats(boundary, merged, slots, ~start)
    with pytest.raises(ValueError, match="num_slots"):
        layer_stats(boundary, merged, slots[:, :1], start)
    with pytest.raises(ValueError, match="edges"):
        layer_stats(boundary, merged, slots, start, edges=(2, 0))


def test_stats_match_the_layers_segmentation(corpus):
    model = _model(corpus)
    stats = text_segmentation_stats(model, corpus, max_tokens=512, seq_len=64, batch_size=3, edges=(0, 16))
    windows = heldout_windows(corpus, seq_len=64, max_tokens=512)
    assert stats["windows"] == len(windows) == 8 and stats["domains"] == {"books": 4, "code": 4}
    assert stats["tokens"] == 8 * 64
    ids = torch.as_tensor(np.stack([w for _, w, _ in windows]))
    # the trainer's view: a segment starts at every EOS and at every window start
    starts = (ids == corpus.eos_id).reshape(-1).numpy()
    starts[::64] = True
    from dla.data.loader import batch_cu_seqlens

    with torch.no_grad(), capture_segmentations(model) as records:
        model(input_ids=ids.reshape(1, -1), use_cache=False, cu_seqlens=batch_cu_seqlens(ids, corpus.eos_id))
    assert [s["layer"] for s in stats["layers"]] == list(records)
    for s, segs in zip(stats["layers"], records.values()):
        seg = segs[0]
        boundary, num = seg.boundary[0].numpy(), seg.num_slots[0].numpy()
        merges = (seg.merged[0] >= 0).numpy()
        assert s["policy"] == "dla" and s["capacity"] == 4 and s["heads"] == 2
        assert s["boundary_rate"] == pytest.approx(boundary.mean())
        assert s["slots_max"] == num.max() <= 4
        assert boundary[starts].all()  # the state is empty at a segment start
        # every boundary is a slot live at its segment's end or one merged away
        ends = np.append(np.nonzero(starts)[0][1:], len(starts)) - 1
        assert boundary.sum() == num[ends].sum() + merges.sum()
        assert s["slots_end"] * len(ends) * 2 == pytest.approx(num[ends].sum())
        # the classes partition the non-start tokens by their first character (no partial UTF-8 here)
        c = s["classes"]
        assert c["any"]["tokens"] == len(starts) - starts.sum()
        assert sum(c[k]["tokens"] for k in ("word_initial", "word_internal", "punctuation", "whitespace")) == \
            c["any"]["tokens"]
        assert c["paragraph_start"]["tokens"] > 0 and c["line_start"]["tokens"] > 0 and c["digit"]["tokens"] > 0
        assert c["any"]["rate"] == pytest.approx(boundary[~starts].mean())
        # buckets and domains add up to the whole
        pos = s["positions"]
        assert [(b["lo"], b["hi"]) for b in pos] == [(0, 16), (16, 64)]
        assert sum(b["tokens"] for b in pos) == 512
        assert sum(b["rate"] * b["tokens"] for b in pos) / 512 == pytest.approx(s["boundary_rate"])
        assert sum(d["boundary_rate"] * d["tokens"] for d in s["domains"].values()) / 512 == \
            pytest.approx(s["boundary_rate"])
    assert is_dla(model) and not is_dla(_model(corpus, policy="single"))
    with pytest.raises(ValueError, match="max_tokens"):
        text_segmentation_stats(model, corpus, max_tokens=0, seq_len=64)
    with pytest.raises(ValueError, match="domains"):
        text_segmentation_stats(model, corpus, domains=["poetry"], seq_len=64)


def test_heldout_paragraph_starts_a_paragraph(corpus, tmp_path):
    record, offset, ids = heldout_paragraph(corpus, length=40, skip=100)
    assert record["domain"] == "books" and offset >= 100 and len(ids) == 40
    tokens = corpus.tokens(record)
    assert corpus.tokenizer.decode(tokens[:offset].tolist()).endswith("\n\n")
    assert (ids == tokens[offset:offset + 40]).all()
    assert heldout_paragraph(corpus, length=40, skip=100)[1] == offset  # a fixed choice
    # segview reads a text with the corpus's own tokenizer too
    text = "The old house.\n\nA river ran on."
    paths = segment_view(_model(corpus), corpus.tokenizer, text, tmp_path)
    assert paths["html"].read_text().count("<span class=") == len(corpus.tokenizer.encode(text)) * 2 * 2
    assert paths["png_layer1"].read_bytes()[:8] == PNG
    ids = corpus.tokenizer.encode(text)
    paths = write_segment_view(_model(corpus), ids, token_strings(corpus.tokenizer, ids), tmp_path / "one",
                               png_layers=[1])
    assert sorted(paths) == ["html", "png_layer1"]
    with pytest.raises(ValueError, match="png_layers"):
        write_segment_view(_model(corpus), ids, token_strings(corpus.tokenizer, ids), tmp_path, png_layers=[3])


def _gpu_lm():
    spec = importlib.util.spec_from_file_location("gpu_lm", ROOT / "scripts" / "gpu_lm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_lm_train_and_report_cpu(corpus, tmp_path):
    gpu_lm = _gpu_lm()
    out, work = tmp_path / "out", tmp_path / "work"
    for recipe in ("dla-gdn", "gdn"):
        assert gpu_lm.main(["train", recipe, "--device", "cpu", "--corpus", str(corpus.path), "--tokens", "640",
                            "--length", "96", "--out", str(out), "--work", str(work), "--ppl-tokens", "256",
                            "--seg-tokens", "256", "--seg-paragraph", "30"]) == 0
    dla = json.loads((out / "dla-gdn-s0" / "result.json").read_text())
    assert dla["finished"] and "segmentation" not in json.loads((out / "gdn-s0" / "result.json").read_text())
    seg = dla["segmentation"]
    assert seg["tokens"] == 256 and len(seg["layers"]) == 1 and seg["layers"][0]["policy"] == "dla"
    picture = seg["picture"]
    assert picture["domain"] == "books" and picture["tokens"] == 31  # the EOS and 30 tokens
    assert set(picture["files"]) == {"html", "png_layer0"}
    assert (out / "dla-gdn-s0" / picture["files"]["png_layer0"]).read_bytes()[:8] == PNG
    html = (out / "dla-gdn-s0" / picture["files"]["html"]).read_text()
    assert html.count("<span class=") == 31 * 4  # one layer, four heads
    report = tmp_path / "report"
    assert gpu_lm.main(["report", str(out), "--out", str(report)]) == 0
    md = (report / "lm_report.md").read_text()
    assert "## DLA's segmentation on held-out text" in md
    section = md.split("## DLA's segmentation")[1]
    table = [line for line in section.splitlines() if line.startswith("| DLA-GDN | 1 | ")]
    assert len(table) == 1 and f"| {summary(seg)['boundary_rate']:.3f} |" in table[0]
    assert "Gated DeltaNet" not in section  # no statistics without DLA
    assert "(segview/dla-gdn-s0/paragraph.html)" in md and "(segview/dla-gdn-s0/paragraph_layer0.png)" in md
    assert (report / "segview" / "dla-gdn-s0" / "paragraph_layer0.png").read_bytes()[:8] == PNG


def test_gpu_lm_profile_takes_a_study_cell(tmp_path):
    """`gpu_lm.py profile` times any run config: a study cell named SWEEP.yaml:CELL_ID (an MQAR batch: rows only,
    with logits at the scored positions and everywhere), and refuses a cell the sweep does not have."""
    gpu_lm = _gpu_lm()
    sweep = ROOT / "configs" / "study" / "calibration.yaml"
    cell = "T64-kv8__dla-mamba2__d64__lr3e-3__s0"
    out = tmp_path / "prof"
    assert gpu_lm.main(["profile", "--device", "cpu", "--recipes", f"{sweep}:{cell}", "--reps", "1", "--batch", "2",
                        "--top", "5", "--out", str(out)]) == 0
    row, = json.loads((out / "profile.json").read_text())["rows"]
    assert row["tokens"] == 2 * 64 and 0 < row["scored"] < row["tokens"] and "packed_s" not in row
    assert row["rows_s"] > 0 and row["rows_all_logits_s"] > 0
    assert "Name" in (out / f"{cell}.txt").read_text()  # torch.profiler's operator table
    with pytest.raises(ValueError, match="has no cell 'T64-kv8__nope'"):
        gpu_lm.recipe_path(f"{sweep}:T64-kv8__nope")
