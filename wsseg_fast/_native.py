"""Loads the compiled extension ``wsseg_fast._C`` once and says what it holds.

Importing ``_C`` registers the ``torch.ops.wsseg_fast.*`` kernels. When it
cannot be loaded (not built, built against another torch) a warning says why
and the pure-PyTorch ``torch`` backend still works.
"""

from __future__ import annotations

import warnings

import torch

try:
    from wsseg_fast import _C  # noqa: F401  (registers the ops)

    LOAD_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - depends on the build
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"
    warnings.warn(
        f"wsseg_fast._C failed to load ({LOAD_ERROR}); the 'cpu' and 'cuda' backends are "
        "unavailable and 'auto' falls back to the 'torch' reference. Rebuild with "
        "`pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when ``wsseg_fast::<op>`` has a compiled kernel for ``dispatch_key``."""
    if LOAD_ERROR is not None:
        return False
    name = f"wsseg_fast::{op}"
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(name, dispatch_key)
    except RuntimeError:  # the schema itself is missing: an older build
        return False
