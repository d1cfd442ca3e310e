"""Reference of ``local_affinity``: one shifted view per offset of the disc stencil
of :func:`~wsseg_fast.ops.neighbors.neighbor_offsets`, differentiable by autograd.
"""

from __future__ import annotations

import torch

from wsseg_fast.ops.neighbors import disc_offsets, shifted


def local_affinity(features: torch.Tensor, radius: int = 5, metric: str = "l1") -> torch.Tensor:
    """``[B, D, H, W]`` -> ``[B, K, H, W]``: ``exp(-mean_d dist(f_i, f_{i+off_k}))``,
    0 where the neighbour is outside the image."""
    out = []
    for dy, dx in disc_offsets(radius):
        other, valid = shifted(features, dy, dx)
        diff = features - other
        dist = diff.abs() if metric == "l1" else diff * diff
        out.append(torch.where(valid, torch.exp(-dist.mean(1)), 0.0))
    return torch.stack(out, 1)
