import pytest
import torch

from dla.data import (DataConfig, LoaderConfig, PackingConfig, SourceConfig, TokenizerConfig, build_data,
                      build_loaders, iter_corpus)


def test_build_data_from_files_with_cache(corpus_dir, documents, tmp_path):
    sources = (SourceConfig("files", path=str(corpus_dir)),)
    assert list(iter_corpus(sources)) == documents
    config = DataConfig(sources=sources, tokenizer=TokenizerConfig(vocab_size=320),
                        packing=PackingConfig(seq_len=32, val_fraction=0.2, cache_dir=str(tmp_path / "cache")),
                        loader=LoaderConfig(batch_size=2))
    data = build_data(config)
    train, val = build_loaders(data, config.loader)
    assert data.tokenizer.vocab_size == 320
    assert len(list(val)) == len(val) > 0 and not val.config.shuffle
    batch = next(iter(train))
    assert batch["input_ids"].shape == (2, 32) and int(batch["cu_seqlens"][-1]) == 64
    text = data.tokenizer.decode(batch["input_ids"][0].tolist())
    assert any(chunk in text for chunk in ("doc", "alpha", "beta", "def"))
    again = build_data(config)
    assert again.tokenizer.fingerprint() == data.tokenizer.fingerprint()
    assert again.splits.cache_path == data.splits.cache_path
    assert torch.equal(next(iter(build_loaders(again, config.loader)[0]))["input_ids"], batch["input_ids"])


def test_build_data_stdlib_default_source():
    config = DataConfig(sources=(SourceConfig("stdlib", max_documents=30),),
                        tokenizer=TokenizerConfig(vocab_size=512, train_chars=200_000),
                        packing=PackingConfig(seq_len=128, val_fraction=0.0), loader=LoaderConfig(batch_size=4))
    data = build_data(config)
    train, val = build_loaders(data, config.loader)
    assert val is None and len(train) > 10
    assert DataConfig().sources == (SourceConfig("stdlib"),)


@pytest.mark.parametrize("kwargs, match", [
    ({"sources": ()}, "sources: expected at least one"),
    ({"sources": ("stdlib",)}, r"sources\[0\]: expected a SourceConfig"),
    ({"packing": {"seq_len": 8}}, "packing: expected a PackingConfig"),
])
def test_data_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**kwargs)
