import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes: thread start-up dominates and two busy cores make it worse; run single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(case: str, **overrides):
    """A 2-layer, width-32 config: ``case`` is ``<mixer>-<policy>``, ``attention``, or ``hybrid`` (a GDN layer with
    the DLA policy followed by an attention layer)."""
    from dla.models import DLAConfig

    mixer, _, policy = case.partition("-")
    kwargs = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_heads=2, head_k_dim=8,
                  policy=policy or "dla", capacity=4, tau=0.3, num_attention_heads=4, max_position_embeddings=128,
                  pad_token_id=0)
    if mixer == "hybrid":
        kwargs.update(mixer="gdn", attention_layers=[1])
    else:
        kwargs.update(mixer=mixer)
    kwargs.update(overrides)
    return DLAConfig(**kwargs)


def tiny_model(case: str, dtype=torch.float64, seed: int = 0, **overrides):
    from dla.models import DLAForCausalLM

    torch.manual_seed(seed)
    return DLAForCausalLM(tiny_config(case, **overrides)).to(dtype).eval()


@pytest.fixture
def make_model():
    return tiny_model


@pytest.fixture
def make_config():
    return tiny_config
