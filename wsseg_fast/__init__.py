"""wsseg_fast: weakly-supervised segmentation with SAM, with fast reusable ops."""

from wsseg_fast import _native  # noqa: F401  (loads the compiled ops first)
from wsseg_fast import ops

__version__ = "0.1.0"

__all__ = ["ops", "__version__"]
