"""Public ops. Each takes ``backend="auto" | "triton" | "cuda" | "cpu" | "torch"``.

See :mod:`wsseg_fast.ops._backend` for how the backend is chosen, and
:func:`available_backends` for what can run here and why not.

The op modules load on first use (PEP 562): an op module imports its Triton kernels,
and with them ``torch._inductor`` (~1 s), so a job that never calls an op, or calls
only a few, does not pay for the others. This is the one place where wsseg_fast
defers imports of its own code.

An op module is named after its op (``ops/slic.py`` defines ``slic``). Importing a
submodule makes the import system bind it on its package, which would replace the
function of that name; this package's module class ignores that one binding, so
``wsseg_fast.ops.slic`` is always the function, whichever was imported first, while
``from wsseg_fast.ops.slic import SPEC`` still reaches the module (as does
``sys.modules["wsseg_fast.ops.slic"]``; ``import wsseg_fast.ops.slic as m`` gives
the function, as for ``torchvision.ops.roi_align``).
"""

from __future__ import annotations

import importlib
import sys
import types

import torch

from wsseg_fast.ops._backend import BACKENDS, BackendUnavailableError, availability

# public name -> the module under wsseg_fast.ops that defines it
_EXPORTS = {
    "assignment_to_indices": "linear_assignment",
    "batch_linear_assignment": "linear_assignment",
    "dilated_offsets": "neighbors",
    "neighbor_offsets": "neighbors",
    "slic": "slic",
    "activation_modulation": "superpixel_pool",
    "ssc_alignment_loss": "superpixel_pool",
    "superpixel_pool": "superpixel_pool",
    "local_affinity": "affinity",
    "mask_affinity": "affinity",
    "random_walk": "random_walk",
    "box_constraint_loss": "box_constraint",
    "pairwise_constraint_loss": "pairwise_constraint",
}
# op name (as `wsseg-fast info` lists it) -> the module holding its OpSpec
_SPEC_MODULES = {
    "batch_linear_assignment": "linear_assignment",
    "slic": "slic",
    "superpixel_pool": "superpixel_pool",
    "local_affinity": "affinity",
    "random_walk": "random_walk",
    "box_constraint_loss": "box_constraint",
    "pairwise_constraint_loss": "pairwise_constraint",
}

__all__ = ["BACKENDS", "BackendUnavailableError", "OP_SPECS", "available_backends", *_EXPORTS]


class _OpsPackage(types.ModuleType):
    """The module class of this package: it keeps an exported function when the import
    system binds the submodule of the same name over it (see the module docstring)."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _OpsPackage


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
