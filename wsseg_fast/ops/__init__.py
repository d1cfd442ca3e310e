"""Public ops. Each takes ``backend="auto" | "triton" | "cuda" | "cpu" | "torch"``.

See :mod:`wsseg_fast.ops._backend` for how the backend is chosen, and
:func:`available_backends` for what can run here and why not.

The op modules load on first use (PEP 562): an op module imports its Triton kernels,
and with them ``torch._inductor`` (~1 s), so a job that never calls an op, or calls
only a few, does not pay for the others. This is the one place where wsseg_fast
defers imports of its own code.
"""

from __future__ import annotations

import importlib

import torch

from wsseg_fast.ops._backend import BACKENDS, BackendUnavailableError, availability

# public name -> the module under wsseg_fast.ops that defines it (no module may share a
# public name: importing a submodule binds its name on the package)
_EXPORTS = {
    "assignment_to_indices": "linear_assignment",
    "batch_linear_assignment": "linear_assignment",
    "dilated_offsets": "neighbors",
    "neighbor_offsets": "neighbors",
    "slic": "slic_superpixels",
    "activation_modulation": "superpixel",
    "ssc_alignment_loss": "superpixel",
    "superpixel_pool": "superpixel",
    "local_affinity": "affinity",
    "mask_affinity": "affinity",
    "random_walk": "walk",
    "box_constraint_loss": "box_constraint",
    "pairwise_constraint_loss": "pairwise_constraint",
}
# op name (as `wsseg-fast info` lists it) -> the module holding its OpSpec
_SPEC_MODULES = {
    "batch_linear_assignment": "linear_assignment",
    "slic": "slic_superpixels",
    "superpixel_pool": "superpixel",
    "local_affinity": "affinity",
    "random_walk": "walk",
    "box_constraint_loss": "box_constraint",
    "pairwise_constraint_loss": "pairwise_constraint",
}

__all__ = ["BACKENDS", "BackendUnavailableError", "OP_SPECS", "available_backends", *_EXPORTS]


def _spec(op: str):
    return importlib.import_module(f"wsseg_fast.ops.{_SPEC_MODULES[op]}").SPEC


def available_backends(op: str, device: torch.device | str = "cpu") -> dict[str, str]:
    """For each backend of ``op``: ``"available"`` or the reason it cannot run on ``device``."""
    if op not in _SPEC_MODULES:
        raise ValueError(f"available_backends: unknown op {op!r}; ops are {', '.join(sorted(_SPEC_MODULES))}")
    return availability(_spec(op), device)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"wsseg_fast.ops.{_EXPORTS[name]}"), name)
    elif name == "OP_SPECS":
        value = {op: _spec(op) for op in _SPEC_MODULES}
    else:
        raise AttributeError(f"module 'wsseg_fast.ops' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__ (and torch.compile sees a plain global)
    return value


def __dir__():
    return sorted(__all__)
