"""Public ops. Each takes ``backend="auto" | "triton" | "cuda" | "cpu" | "torch"``.

See :mod:`wsseg_fast.ops._backend` for how the backend is chosen, and
:func:`available_backends` for what can run here and why not.
"""

from __future__ import annotations

import torch

from wsseg_fast.ops import _backend
from wsseg_fast.ops._backend import BACKENDS, BackendUnavailableError
from wsseg_fast.ops.linear_assignment import assignment_to_indices, batch_linear_assignment
from wsseg_fast.ops.linear_assignment import SPEC as _LSAP_SPEC
from wsseg_fast.ops.neighbors import dilated_offsets, neighbor_offsets

OP_SPECS = {spec.name: spec for spec in (_LSAP_SPEC,)}

# --- SLIC superpixels and superpixel modulation (issue 5) ---
from wsseg_fast.ops.slic_superpixels import SPEC as _SLIC_SPEC  # noqa: E402
from wsseg_fast.ops.slic_superpixels import slic  # noqa: E402
from wsseg_fast.ops.superpixel import SPEC as _SUPERPIXEL_POOL_SPEC  # noqa: E402
from wsseg_fast.ops.superpixel import activation_modulation, ssc_alignment_loss, superpixel_pool  # noqa: E402

OP_SPECS.update({spec.name: spec for spec in (_SLIC_SPEC, _SUPERPIXEL_POOL_SPEC)})
# --- sparse affinity random walk (issue 4) ---
from wsseg_fast.ops.affinity import SPEC as _AFFINITY_SPEC  # noqa: E402
from wsseg_fast.ops.affinity import local_affinity, mask_affinity  # noqa: E402
from wsseg_fast.ops.random_walk import SPEC as _RANDOM_WALK_SPEC  # noqa: E402
from wsseg_fast.ops.random_walk import random_walk  # noqa: E402

OP_SPECS.update({spec.name: spec for spec in (_AFFINITY_SPEC, _RANDOM_WALK_SPEC)})
# --- end of issue 4 ---


def available_backends(op: str, device: torch.device | str = "cpu") -> dict[str, str]:
    """For each backend of ``op``: ``"available"`` or the reason it cannot run on ``device``."""
    if op not in OP_SPECS:
        raise ValueError(f"available_backends: unknown op {op!r}; ops are {', '.join(sorted(OP_SPECS))}")
    return _backend.availability(OP_SPECS[op], device)


__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "OP_SPECS",
    "assignment_to_indices",
    "available_backends",
    "batch_linear_assignment",
    "dilated_offsets",
    "neighbor_offsets",
    # issue 5
    "activation_modulation",
    "slic",
    "ssc_alignment_loss",
    "superpixel_pool",
    # issue 4: sparse affinity random walk
    "local_affinity",
    "mask_affinity",
    "random_walk",
]

# ---- fuzzy-logic constraint losses (issue 3); specs keyed by the public names
from wsseg_fast.ops.box_constraint import SPEC as _BOX_SPEC  # noqa: E402
from wsseg_fast.ops.box_constraint import box_constraint_loss  # noqa: E402
from wsseg_fast.ops.pairwise_constraint import SPEC as _PAIRWISE_SPEC  # noqa: E402
from wsseg_fast.ops.pairwise_constraint import pairwise_constraint_loss  # noqa: E402

OP_SPECS["box_constraint_loss"] = _BOX_SPEC
OP_SPECS["pairwise_constraint_loss"] = _PAIRWISE_SPEC
__all__ += ["box_constraint_loss", "pairwise_constraint_loss"]
