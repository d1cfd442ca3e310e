"""Test-wide set-up.

Triton kernels run on CPU tensors under the interpreter: TRITON_INTERPRET must
be set before anything imports triton, so it is set here, first, unless a GPU
is present (then Triton tests run compiled on it).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)
        # Cases that take seconds in Python under Triton's interpreter (milliseconds on a GPU) join
        # the slow step there; a lighter case of the same kernel stays in `make test`.
        backend = getattr(item, "callspec", None) and item.callspec.params.get("backend")
        if "interpreter_heavy" in item.keywords and INTERPRETED and backend == "triton":
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    """Tests choose backends explicitly; a developer's WSSEG_FAST_BACKEND must not leak in."""
    monkeypatch.delenv("WSSEG_FAST_BACKEND", raising=False)


@pytest.fixture(autouse=True)
def _own_default_cache(monkeypatch, tmp_path_factory):
    """The default embedding cache of commands run without --cache: the test session's, never the
    developer's ~/.cache."""
    monkeypatch.setenv("WSSEG_FAST_CACHE", str(tmp_path_factory.getbasetemp() / "default-cache"))
