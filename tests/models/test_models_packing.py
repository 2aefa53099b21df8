"""Padding-free packing: transformers' ``DataCollatorWithFlattening`` output, in each of its conventions
(position_ids restarting, cu_seq_lens_q/k, seq_idx), runs every document as if alone; the loss equals the separate
runs'; HF's Trainer trains on it; conflicting or misused boundaries raise naming the argument."""

import pytest
import torch
import torch.nn.functional as F
from transformers import DataCollatorWithFlattening

from dla.models import DLAForCausalLM
from dla.models.modeling_dla import document_offsets

TOL64 = 1e-12
LENGTHS = (7, 3, 12, 1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def documents(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 64, (n,), generator=gen).tolist() for n in LENGTHS]


CONVENTIONS = {  # the collator's options, and what it then returns besides input_ids and labels
    "position_ids": dict(),
    "cu_seq_lens": dict(return_position_ids=False, return_flash_attn_kwargs=True),
    "seq_idx": dict(return_position_ids=False, return_seq_idx=True),
    "all": dict(return_flash_attn_kwargs=True, return_seq_idx=True),
}


@pytest.mark.parametrize("convention", list(CONVENTIONS))
@pytest.mark.parametrize("case", ["gdn-dla", "mamba2-fenwick", "hybrid"])
def test_flattened_batch_equals_separate_runs(make_model, case, convention):
    model, docs = make_model(case), documents()
    batch = DataCollatorWithFlattening(**CONVENTIONS[convention])([{"input_ids": d} for d in docs])
    assert batch["input_ids"].shape == (1, sum(LENGTHS))
    with torch.no_grad():
        out = model(**batch)
        alone = [model(torch.tensor([d]), use_cache=False).logits[0] for d in docs]
    assert out.past_key_values is None  # a packed call builds no cache, even in eval mode
    assert rel(out.logits[0], torch.cat(alone)) <= TOL64
    # the loss: every document's next-token loss, no prediction across a boundary
    nll = sum(F.cross_entropy(lg[:-1], torch.tensor(d[1:], dtype=torch.long), reduction="sum")
              for lg, d in zip(alone, docs))
    assert float(out.loss) == pytest.approx(float(nll) / sum(n - 1 for n in LENGTHS), rel=1e-12)


def test_gradients_of_a_packed_batch_equal_separate_runs(make_model):
    docs = documents(1)
    grads = []
    for packed in (True, False):
        model = make_model("hybrid").train()
        if packed:
            model(**DataCollatorWithFlattening()([{"input_ids": d} for d in docs])).loss.backward()
        else:
            total = sum(n - 1 for n in LENGTHS)
            for d in docs:
                if len(d) > 1:  # a one-token document predicts nothing
                    ids = torch.tensor([d])
                    (model(ids, labels=ids).loss * (len(d) - 1) / total).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert rel(grads[0], grads[1]) <= 1e-10


def test_rows_of_packed_documents(make_model):
    """B > 1: each row holds its own documents (position_ids restarting), all rows run as one op call."""
    model = make_model("gdn-dla")
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]]
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2], [0, 1, 0, 1, 2, 3]])
    with torch.no_grad():
        packed = model(torch.tensor(rows), position_ids=position_ids).logits
        parts = [(0, 0, 3), (0, 3, 6), (1, 0, 2), (1, 2, 6)]
        for r, s, e in parts:
            alone = model(torch.tensor([rows[r][s:e]]), use_cache=False).logits[0]
            assert rel(packed[r, s:e], alone) <= TOL64


def test_positions_counting_up_are_no_packing_and_generate_is_untouched(make_model):
    model, ids = make_model("hybrid"), torch.randint(1, 64, (2, 9))
    with torch.no_grad():
        plain = model(ids, use_cache=False).logits
        assert torch.equal(model(ids, position_ids=torch.arange(9)[None].expand(2, 9), use_cache=False).logits,
                           plain)
        # left padding: generate's positions ([1, 1, 0, 1, ...]) restart, but the mask says they are padding
        mask = torch.tensor([[0, 0] + [1] * 7, [1] * 9])
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        out = model(ids, attention_mask=mask, position_ids=pos)
        assert out.past_key_values is not None
    assert model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False).shape == (2, 12)


def test_document_offsets_of_each_convention():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0]])
    expected = [0, 3, 5, 6]
    assert document_offsets(1, 6, position_ids=pos).tolist() == expected
    assert document_offsets(1, 6, seq_idx=torch.tensor([[0, 0, 0, 1, 1, 2]])).tolist() == expected
    assert document_offsets(1, 6, cu_seq_lens_q=torch.tensor(expected, dtype=torch.int32)).tolist() == expected
    assert document_offsets(1, 6, position_ids=torch.arange(6)[None]) is None
    assert document_offsets(2, 3, position_ids=torch.tensor([[0, 1, 2], [0, 0, 1]])).tolist() == [0, 3, 4, 6]


@pytest.mark.parametrize("kwargs, message", [
    (dict(cu_seq_lens_q=torch.tensor([0, 3, 6]), cu_seq_lens_k=torch.tensor([0, 2, 6])),
     r"^cu_seq_lens_q, cu_seq_lens_k: a causal LM attends within each document"),
    (dict(cu_seq_lens_q=torch.tensor([0, 3, 6]), seq_idx=torch.tensor([[0, 0, 1, 1, 1, 1]])),
     r"^cu_seq_lens_q, seq_idx: they mark different document starts"),
    (dict(cu_seqlens=torch.tensor([0, 4, 6]), position_ids=torch.tensor([[0, 1, 2, 0, 1, 2]])),
     r"^cu_seqlens, position_ids: they mark different document starts"),
    (dict(cu_seqlens=torch.tensor([0, 4, 5])), r"^cu_seqlens: expected non-decreasing offsets from 0 to 6"),
    (dict(cu_seqlens=torch.tensor([0.0, 6.0])), r"^cu_seqlens: expected a 1-D integer tensor"),
    (dict(seq_idx=torch.tensor([0, 0, 1])), r"^seq_idx: expected \[B, T\]"),
    (dict(cu_seqlens=torch.tensor([0, 3, 6]), use_cache=True), r"^cu_seqlens: packed documents are run without"),
    (dict(seq_idx=torch.tensor([[0, 0, 1, 1, 1, 1]]), attention_mask=torch.ones(1, 6)),
     r"^cu_seqlens: packed documents are run without"),
])
def test_bad_packing_arguments_raise_naming_them(make_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_model("gdn-dla")(torch.randint(1, 64, (1, 6)), **kwargs)


def test_hf_trainer_trains_on_flattened_batches(make_model, tmp_path):
    pytest.importorskip("accelerate")  # the accelerate extra (in the test extra; not in the floor check)
    from transformers import Trainer, TrainingArguments

    model = make_model("hybrid", torch.float32).train()
    data = [{"input_ids": d} for seed in range(4) for d in documents(seed)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], use_cpu=True, logging_steps=1, save_strategy="no",
                             dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      data_collator=DataCollatorWithFlattening(return_flash_attn_kwargs=True))
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters()))
