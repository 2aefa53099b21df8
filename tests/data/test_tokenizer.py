import json

import pytest
from tokenizers import Tokenizer

from dla.data.sources import iter_stdlib_documents
from dla.data.tokenizer import EOS_TOKEN, TokenizerConfig, get_tokenizer, load_tokenizer, train_tokenizer

SAMPLES = ["def f(x):\n    return x + 1\n", "  leading spaces, ünïcödé, emoji 🙂 and \t tabs\r\n", "", "a",
           "literal <|endoftext|> inside text"]


def test_encode_decode_identity(tokenizer):
    for text in SAMPLES:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_eos_is_bos_and_never_produced_by_text(tokenizer):
    assert tokenizer.eos_id == tokenizer.bos_id == tokenizer.backend.token_to_id(EOS_TOKEN)
    assert tokenizer.eos_id not in tokenizer.encode("x <|endoftext|> y")
    assert tokenizer.decode([tokenizer.eos_id]) == EOS_TOKEN


def test_training_is_deterministic_and_sized(documents):
    a = train_tokenizer(documents, vocab_size=350)
    b = train_tokenizer(documents, vocab_size=350)
    assert a.backend.to_str() == b.backend.to_str()
    assert a.fingerprint() == b.fingerprint()
    assert a.vocab_size == 350
    assert train_tokenizer(documents, vocab_size=380).fingerprint() != a.fingerprint()


def test_save_load_round_trip(tokenizer, documents, tmp_path):
    file = tokenizer.save(tmp_path / "tok")
    assert file.name == "tokenizer.json"
    assert json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())["eos_token"] == EOS_TOKEN
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.fingerprint() == tokenizer.fingerprint()
    assert loaded.eos_id == tokenizer.eos_id
    assert loaded.encode_batch(documents[:20]) == tokenizer.encode_batch(documents[:20])
    assert load_tokenizer(file).encode(documents[0]) == tokenizer.encode(documents[0])
    backend = Tokenizer.from_file(str(file))  # what PreTrainedTokenizerFast(tokenizer_file=...) does
    assert backend.encode(documents[1], add_special_tokens=False).ids == tokenizer.encode(documents[1])


def test_transformers_fast_tokenizer_loads_saved_dir(tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizer.save(tmp_path)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), eos_token=EOS_TOKEN)
    assert hf.encode(SAMPLES[0], add_special_tokens=False) == tokenizer.encode(SAMPLES[0])
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert auto.eos_token_id == tokenizer.eos_id
    assert load_tokenizer(tmp_path).fingerprint() == tokenizer.fingerprint()


def test_stdlib_training_is_fast_and_round_trips():
    documents = list(iter_stdlib_documents())[:400]
    tok = train_tokenizer(documents, vocab_size=4096, train_chars=1_000_000)
    assert tok.vocab_size == 4096
    text = documents[-1]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) / 2  # merges learned from the corpus compress Python source


def test_get_tokenizer_caches_trained_tokenizer(documents, tmp_path):
    config = TokenizerConfig(vocab_size=320)
    first = get_tokenizer(config, iter(documents), cache_dir=tmp_path, documents_key="k")
    assert len(list(tmp_path.glob("tokenizer-*/tokenizer.json"))) == 1

    def must_not_train():
        raise AssertionError("the cached tokenizer should have been loaded")
        yield

    again = get_tokenizer(config, must_not_train(), cache_dir=tmp_path, documents_key="k")
    assert again.fingerprint() == first.fingerprint()
    other = get_tokenizer(config, iter(documents[:50]), cache_dir=tmp_path, documents_key="other")
    assert len(list(tmp_path.glob("tokenizer-*"))) == 2 and other.vocab_size <= 320


def test_get_tokenizer_loads_path(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    assert get_tokenizer(TokenizerConfig(path=str(tmp_path))).fingerprint() == tokenizer.fingerprint()
    with pytest.raises(ValueError, match="documents: required"):
        get_tokenizer(TokenizerConfig())


def test_bad_inputs_name_argument(tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"path: tokenizer .*missing"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"path: .*empty"):
        load_tokenizer(tmp_path / "empty")
    tokenizer.save(tmp_path / "tok")
    with pytest.raises(ValueError, match=r"eos_token: '<eos>' is not in the tokenizer vocabulary"):
        load_tokenizer(tmp_path / "tok", eos_token="<eos>")
    with pytest.raises(ValueError, match="documents: expected at least one document"):
        train_tokenizer([], vocab_size=300)


@pytest.mark.parametrize("kwargs, match", [
    ({"vocab_size": 100}, "vocab_size: expected >= 257"),
    ({"eos_token": ""}, "eos_token"),
    ({"min_frequency": 0}, "min_frequency"),
    ({"train_chars": 0}, "train_chars"),
])
def test_tokenizer_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenizerConfig(**kwargs)
