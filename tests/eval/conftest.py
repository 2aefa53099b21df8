"""Tiny DLA checkpoints (a GDN model with the DLA policy, and a hybrid with an attention layer) with a byte-level
BPE saved beside them, and one lm-eval TaskManager indexing the generated fixture tasks; all offline."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DOCS = [
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. " * 3,
    "One of the special magic numbers for quick-fox is: 1234567. What is the special magic number? ",
    "Question: How do you open a jar?\nAnswer: twist the lid. Paris is the capital of France. ",
    "name: red river. color: green. place: stone garden. The quiet morning market by the bridge. ",
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes: thread start-up dominates on two busy cores; run single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _save(path, hybrid: bool):
    from dla.data import train_tokenizer
    from dla.models import DLAConfig, DLAForCausalLM

    tok = train_tokenizer(DOCS * 20, vocab_size=400, train_chars=100_000)
    tok.save(path)
    torch.manual_seed(0)
    config = DLAConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, mixer="gdn", num_heads=2,
                       head_k_dim=8, capacity=4, tau=0.3, num_attention_heads=4,
                       attention_layers=[1] if hybrid else None, max_position_embeddings=512 if hybrid else 256,
                       eos_token_id=tok.eos_id, bos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    DLAForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    """A 2-layer GDN checkpoint (DLA policy, no length limit, max_position_embeddings=256)."""
    return _save(tmp_path_factory.mktemp("ckpt_gdn"), hybrid=False)


@pytest.fixture(scope="session")
def hybrid_ckpt(tmp_path_factory):
    """GDN + attention layer: limited to max_position_embeddings=512."""
    return _save(tmp_path_factory.mktemp("ckpt_hybrid"), hybrid=True)


@pytest.fixture(scope="session")
def fixture_tasks(tmp_path_factory, ckpt):
    """The generated fixture tasks (directory) sized with the checkpoint's tokenizer."""
    from dla.eval.checkpoint import load_tokenizer
    from dla.eval.local_tasks import write_fixture_tasks

    tok = load_tokenizer(ckpt)
    out = tmp_path_factory.mktemp("tasks")
    write_fixture_tasks(out, num_docs=4, niah_lengths=(220, 240), niah_depths=(20.0, 80.0),
                        tokenize=lambda s: tok.encode(s, add_special_tokens=False))
    return out


@pytest.fixture(scope="session")
def manager(fixture_tasks):
    """One lm-eval TaskManager (indexing the installed tasks and the fixtures) shared by the tests."""
    from dla.eval.suite import task_manager

    return task_manager([str(fixture_tasks)])
