import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Toy models: thread start-up dominates and two busy cores make it worse; run single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
