"""Fixtures of the trainer tests: a small text corpus on disk and tiny run configs (CPU, float32)."""

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dla.train import config_from_dict

WORDS = ["def", "return", "class", "import", "for", "in", "range", "(", ")", ":", "=", "+", "x", "y", "self",
         "None", "True", "alpha", "beta", "gamma", "\n", "    "]

REPO = Path(__file__).resolve().parents[2]


def kill_when_ready(args, ready: str) -> subprocess.Popen:
    """Start ``python args...`` in the repo, wait for its first output line to be ``ready`` (else fail with its
    stderr), SIGKILL it there and return the finished process."""
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == ready, proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc


def make_documents(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct pseudo-code documents of 20-120 words."""
    rng = random.Random(seed)
    return [f"doc{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120))) for i in range(n)]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A directory of 240 small ``.txt`` documents."""
    root = tmp_path_factory.mktemp("corpus")
    for i, doc in enumerate(make_documents(240)):
        (root / f"{i:04d}.txt").write_text(doc)
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """Tokenizer and token-stream cache shared by the tests."""
    return tmp_path_factory.mktemp("cache")


def tiny_dict(out_dir, corpus, cache, **sections) -> dict:
    """A tiny DLA-Mamba-2 LM recipe as plain data; ``sections`` are merged into its sections."""
    data = {
        "name": "test",
        "out_dir": str(out_dir),
        "model": {"type": "dla", "mixer": "mamba2", "policy": "dla", "hidden_size": 32, "num_hidden_layers": 2,
                  "num_heads": 2, "head_k_dim": 8, "capacity": 4, "tau": 0.3, "chunk_size": 16,
                  "max_position_embeddings": 64},
        "data": {"task": "lm", "seq_len": 32, "sources": [{"kind": "files", "path": str(corpus)}],
                 "tokenizer": {"vocab_size": 300}, "val_fraction": 0.1, "cache_dir": str(cache),
                 "document_masking": False},
        "train": {"seed": 0, "max_steps": 8, "global_batch_size": 4, "micro_batch_size": 4, "lr": 3e-3,
                  "warmup_steps": 2, "eval_every": 0, "eval_batches": 2},
        "checkpoint": {"every": 0, "keep_last": 3},
        "log": {"every": 1, "progress": False, "tensorboard": False, "plot": False},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            data[section] = {**data.get(section, {}), **values}
        else:
            data[section] = values
    return data


@pytest.fixture
def tiny(tmp_path, corpus_dir, cache_dir):
    """``tiny(**sections)`` -> a validated ``RunConfig`` writing under ``tmp_path/run``."""
    def make(out="run", **sections):
        return config_from_dict(tiny_dict(tmp_path / out, corpus_dir, cache_dir, **sections))
    return make


def run_python(code_or_args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -c code`` (a str) or ``python *args`` (a list) from the repository root."""
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else list(code_or_args)
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, **kwargs)
