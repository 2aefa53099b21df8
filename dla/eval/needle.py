"""Needle retrieval over a depth x length grid, generated locally (:mod:`dla.eval.synthetic`), scored by RULER's
string match; the records feed :func:`dla.eval.plots.needle_heatmap`.

Prompts are sized with the model's tokenizer so that prompt plus answer fit ``length`` tokens; each is prefilled
once and decoded greedily through the cache until a newline, EOS or ``max_new_tokens``.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from dla.eval.checkpoint import context_limit
from dla.eval.metrics import string_match
from dla.eval.scoring import decode
from dla.eval.synthetic import niah_grid


def needle_sweep(model, tokenizer, *, lengths: Sequence[int], depths: Sequence[float],
                 task: str = "niah_single_1", num_examples: int = 1, max_new_tokens: int = 16,
                 batch_size: int = 1, chunk_size: int = 2048, seed: int = 0) -> List[Dict]:
    """Generate the NIAH grid, answer every prompt, score it.

    Args:
        lengths: context lengths in tokens (prompt + ``max_new_tokens``).
        depths: needle depths in percent.
        task: a name of :data:`dla.eval.synthetic.NIAH_TASKS`.
        num_examples: examples per cell.
        max_new_tokens: generation budget (7-digit numbers need a few tokens).

    Returns:
        One record per example: ``length``, ``depth``, ``score`` (string match in [0, 1]), ``prediction``,
        ``target``.

    Raises:
        ValueError: a length past what the checkpoint supports, or one too short for the prompt.
    """
    limit = context_limit(model.config)
    if limit is not None and max(lengths) > limit:
        raise ValueError(f"lengths: {max(lengths)} is longer than this checkpoint supports ({limit} tokens)")
    if min(lengths) <= max_new_tokens:
        raise ValueError(f"lengths: every length must exceed max_new_tokens={max_new_tokens}, got {min(lengths)}")
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    examples = []
    for length in lengths:
        examples += niah_grid(task, [length - max_new_tokens], depths, num_examples=num_examples, tokenize=encode,
                              seed=seed)
        for ex in examples[-len(depths) * num_examples:]:
            ex["length"] = int(length)
    eos = tokenizer.eos_token_id

    def stop(_: int, ids: List[int]) -> bool:
        return ids[-1] == eos or "\n" in tokenizer.decode(ids[-4:])

    records = []
    for s in range(0, len(examples), batch_size):
        part = examples[s:s + batch_size]
        outs = decode(model, [encode(ex["input"]) for ex in part], max_new_tokens=max_new_tokens,
                      pad_id=eos if eos is not None else 0, stop=stop, chunk_size=chunk_size)
        for ex, ids in zip(part, outs):
            pred = tokenizer.decode([i for i in ids if i != eos]).split("\n")[0]
            records.append({"length": ex["length"], "depth": ex["depth"], "score": string_match(pred, ex["target"]),
                            "prediction": pred, "target": ex["target"]})
    return records


def sweep_summary(records: Sequence[Dict], train_length: Optional[int] = None) -> Dict[str, float]:
    """Mean score overall, and within / past ``train_length`` when given."""
    if not records:
        raise ValueError("records: expected at least one needle record")
    out = {"score": sum(r["score"] for r in records) / len(records)}
    if train_length is not None:
        for key, sel in (("score_within", [r for r in records if r["length"] <= train_length]),
                         ("score_past", [r for r in records if r["length"] > train_length])):
            if sel:
                out[key] = sum(r["score"] for r in sel) / len(sel)
    return out


__all__ = ["needle_sweep", "sweep_summary"]
