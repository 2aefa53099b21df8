import numpy as np
import pytest
import torch

from dla.data.loader import LoaderConfig, PackedLoader, batch_cu_seqlens
from dla.data.packing import PackedSequences, sequence_cu_seqlens

T = 4


def arange_sequences(n: int) -> PackedSequences:
    """``n`` sequences whose first input token is ``T * index`` (token values are stream positions)."""
    return PackedSequences(np.arange(n * T + 1), seq_len=T, eos_id=-1)


def ids(batch) -> list[int]:
    return (batch["input_ids"][:, 0] // T).tolist()


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_batch_contents(documents, tokenizer):
    stream = np.array([t for d in documents for t in [tokenizer.eos_id] + tokenizer.encode(d)], dtype=np.uint16)
    seqs = PackedSequences(stream, seq_len=64, eos_id=tokenizer.eos_id)
    loader = PackedLoader(seqs, LoaderConfig(batch_size=3, seed=1))
    batch = next(iter(loader))
    assert batch["input_ids"].shape == batch["labels"].shape == (3, 64)
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.int64
    assert batch["cu_seqlens"].dtype == torch.int32
    for row, i in enumerate(loader.batch_indices(0, 0)):
        np.testing.assert_array_equal(batch["input_ids"][row].numpy(), stream[i * 64:(i + 1) * 64])
        np.testing.assert_array_equal(batch["labels"][row].numpy(), stream[i * 64 + 1:(i + 1) * 64 + 1])
    per_row = [sequence_cu_seqlens(r.numpy(), tokenizer.eos_id) for r in batch["input_ids"]]
    flat = np.concatenate([cu[:-1] + b * 64 for b, cu in enumerate(per_row)] + [[3 * 64]])
    np.testing.assert_array_equal(batch["cu_seqlens"].numpy(), flat)


def test_batch_cu_seqlens_example():
    cu = batch_cu_seqlens(torch.tensor([[0, 5, 0, 7], [6, 6, 0, 1]]), eos_id=0)
    assert cu.tolist() == [0, 2, 4, 6, 8] and cu.dtype == torch.int32
    assert batch_cu_seqlens(torch.tensor([3, 0, 3]), eos_id=0).tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match="input_ids"):
        batch_cu_seqlens(torch.zeros(1, 2, 3, dtype=torch.long), eos_id=0)


def test_deterministic_shuffle_per_seed_and_epoch():
    seqs = arange_sequences(40)
    a = [ids(b) for b in take(PackedLoader(seqs, LoaderConfig(batch_size=4, seed=7)), 20)]
    b = [ids(b) for b in take(PackedLoader(seqs, LoaderConfig(batch_size=4, seed=7)), 20)]
    c = [ids(b) for b in take(PackedLoader(seqs, LoaderConfig(batch_size=4, seed=8)), 20)]
    assert a == b and a != c
    epoch0, epoch1 = sum(a[:10], []), sum(a[10:], [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(40)) and epoch0 != epoch1
    plain = [ids(b) for b in PackedLoader(seqs, LoaderConfig(batch_size=4, shuffle=False, epochs=1))]
    assert sum(plain, []) == list(range(40))


def test_epochs_limit_and_len():
    loader = PackedLoader(arange_sequences(10), LoaderConfig(batch_size=3, epochs=2))
    assert len(loader) == 3
    batches = list(loader)
    assert len(batches) == 6
    assert loader.state_dict()["epoch"] == 2


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_see_disjoint_batches(world_size):
    seqs = arange_sequences(50)
    seen = []
    for rank in range(world_size):
        loader = PackedLoader(seqs, LoaderConfig(batch_size=4, seed=2, rank=rank, world_size=world_size, epochs=1))
        assert len(loader) == 50 // (4 * world_size)
        seen.append(sum((ids(b) for b in loader), []))
    flat = sum(seen, [])
    assert len(flat) == len(set(flat)) == world_size * 4 * (50 // (4 * world_size))
    assert len({len(s) for s in seen}) == 1
    for rank in range(world_size):
        loader = PackedLoader(seqs, LoaderConfig(batch_size=4, seed=2, rank=rank, world_size=world_size))
        assert loader.batch_indices(0, 1).tolist() == seen[rank][4:8]


@pytest.mark.parametrize("k", [0, 1, 4, 5, 7, 13])
@pytest.mark.parametrize("rank", [0, 1])
def test_resume_yields_exact_continuation(k, rank):
    seqs = arange_sequences(23)  # 5 batches of 2 per rank per epoch: k crosses epoch borders
    config = LoaderConfig(batch_size=2, seed=11, rank=rank, world_size=2)
    reference = [b["input_ids"] for b in take(PackedLoader(seqs, config), k + 6)]
    interrupted = PackedLoader(seqs, config)
    it = iter(interrupted)
    for _ in range(k):
        next(it)
    state = dict(interrupted.state_dict())
    resumed = PackedLoader(seqs, config)
    resumed.load_state_dict(state)
    got = [b["input_ids"] for b in take(resumed, 6)]
    assert all(torch.equal(g, r) for g, r in zip(got, reference[k:]))
    assert torch.equal(next(it)["input_ids"], reference[k])  # the interrupted one continues too


def test_too_small_for_one_batch_raises():
    with pytest.raises(ValueError, match=r"batch_size: train split has 5 sequences.*batch_size \* world_size = 6"):
        PackedLoader(arange_sequences(5), LoaderConfig(batch_size=3, world_size=2))


def test_load_state_dict_rejects_other_settings():
    loader = PackedLoader(arange_sequences(20), LoaderConfig(batch_size=2, seed=0))
    state = loader.state_dict()
    with pytest.raises(ValueError, match="state: seed=1"):
        loader.load_state_dict({**state, "seed": 1})
    with pytest.raises(ValueError, match="state: num_sequences=21"):
        loader.load_state_dict({**state, "num_sequences": 21})
    with pytest.raises(ValueError, match="out of range"):
        loader.load_state_dict({**state, "batch": 11})


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size"),
    ({"world_size": 0}, "world_size"),
    ({"rank": 2, "world_size": 2}, r"rank: expected a value in \[0, 2\)"),
    ({"rank": -1}, "rank"),
    ({"epochs": 0}, "epochs"),
])
def test_loader_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoaderConfig(**kwargs)
