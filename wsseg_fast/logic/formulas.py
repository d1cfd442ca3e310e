"""What every formula of a knowledge base shares: its type and how it quantifies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Formula = Callable[[torch.Tensor], torch.Tensor]
"""A closed formula: ``probs [B, C, H, W]`` -> a scalar truth in [0, 1]."""


@dataclass(frozen=True)
class Logic:
    """How formulas quantify: the exponents of ∀ (pMeanError) and ∃ (pMean), LTN's stable
    projections, and the backend of the fused box and pairwise losses."""

    p_forall: float = 2.0
    p_exists: float = 2.0
    stable: bool = True
    backend: str = "auto"
