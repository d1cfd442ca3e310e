"""Pure-PyTorch reference of the fused pairwise colour prior, composed from the
operators of :mod:`wsseg_fast.fuzzy` (plain autograd). It defines what the fused
kernels compute; see ``wsseg_fast.ops.pairwise_constraint`` for the exact semantics."""

from __future__ import annotations

import torch

from wsseg_fast.fuzzy import pmean_error
from wsseg_fast.ops.neighbors import shifted


def pairwise_edges(lab: torch.Tensor, offsets: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[B, K, H, W]`` bool: the edge from (y, x) to (y + dy, x + dx) exists (neighbour inside the
    image) and its colour similarity exp(-||Lab difference|| / 2) is at least ``threshold``."""
    edges = [torch.zeros(lab.shape[0], 0, *lab.shape[2:], dtype=torch.bool, device=lab.device)]
    for dy, dx in offsets.tolist():
        other, inside = shifted(lab, dy, dx)
        similarity = torch.exp(-torch.linalg.vector_norm(lab - other, dim=1) * 0.5)
        edges.append(((similarity >= threshold) & inside).unsqueeze(1))
    return torch.cat(edges, dim=1)


def pairwise_constraint_truths(
    probs: torch.Tensor,
    lab: torch.Tensor,
    offsets: torch.Tensor,
    *,
    threshold: float = 0.3,
    p_forall: float = 2.0,
    stable: bool = True,
) -> torch.Tensor:
    """``[B, C]``: for each image and class, ∀ similar neighbours (x, y): p_x p_y + (1 - p_x)(1 - p_y)."""
    edges = pairwise_edges(lab, offsets, threshold)
    same = [probs.unsqueeze(2)[:, :, :0]]  # (an empty slice of probs keeps the graph without offsets)
    for dy, dx in offsets.tolist():
        other, _ = shifted(probs, dy, dx)
        same.append((probs * other + (1 - probs) * (1 - other)).unsqueeze(2))
    same = torch.cat(same, dim=2)  # [B, C, K, H, W]
    mask = edges.unsqueeze(1).expand_as(same)
    return pmean_error(same, dim=(2, 3, 4), p=p_forall, mask=mask, stable=stable)


def pairwise_constraint_loss(
    probs: torch.Tensor,
    lab: torch.Tensor,
    offsets: torch.Tensor,
    *,
    threshold: float = 0.3,
    p_forall: float = 2.0,
    stable: bool = True,
) -> torch.Tensor:
    """1 - pMeanError(p=2) over the B x C pairwise truths; 0 for an empty batch."""
    if probs.shape[0] * probs.shape[1] == 0:
        return (probs * 0).sum()
    truths = pairwise_constraint_truths(probs, lab, offsets, threshold=threshold, p_forall=p_forall, stable=stable)
    return 1.0 - pmean_error(truths.flatten(), p=2.0, stable=stable)


__all__ = ["pairwise_constraint_loss", "pairwise_constraint_truths", "pairwise_edges"]
