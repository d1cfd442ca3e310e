import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These tests run prompt-sized tensors that gain nothing from threads; on a shared
    2-core machine OpenMP's spinning threads made them up to 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
