"""wsseg_fast: weakly-supervised segmentation with SAM, with fast reusable ops."""

from wsseg_fast import _native  # noqa: F401  (loads the compiled ops first)

__version__ = "0.1.0"

__all__ = ["ops", "__version__"]


def __getattr__(name):
    # ``wsseg_fast.ops`` imports the Triton kernels (and with them torch._inductor, ~2 s):
    # loaded on first use so that jobs which never call an op (a warm-cache
    # pseudo-labelling run) start fast.
    if name == "ops":
        import importlib

        return importlib.import_module("wsseg_fast.ops")
    raise AttributeError(f"module 'wsseg_fast' has no attribute {name!r}")
