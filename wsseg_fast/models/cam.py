"""Multi-label CAM classifier on a frozen backbone's feature map.

The default backbone is SAM's image encoder, read from the embedding cache: the
classifier sees ``[B, 256, g, g]`` embeddings (any SAM variant) and is a 1x1
adapter + ReLU + 1x1 class head. Class activation maps are the class head applied
to the adapted features at feature resolution; the image logits are their mean
over the valid (non-padding) cells. An optional sub-class head (WeakMedSAM) reads
the same features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BACKBONES = ("sam",)


class CamClassifier(nn.Module):
    """Args:
        in_channels: feature channels of the backbone (256 for SAM).
        num_classes: foreground classes (no background).
        hidden: adapter channels.
        num_subclasses: size of the sub-class head (0: none).
    """

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 256, num_subclasses: int = 0):
        super().__init__()
        if in_channels < 1 or num_classes < 1 or hidden < 1 or num_subclasses < 0:
            raise ValueError(f"CamClassifier: in_channels, num_classes, hidden must be >= 1 and num_subclasses >= 0, "
                             f"got {(in_channels, num_classes, hidden, num_subclasses)}")
        self.in_channels, self.num_classes, self.hidden, self.num_subclasses = in_channels, num_classes, hidden, num_subclasses
        self.adapter = nn.Conv2d(in_channels, hidden, 1)
        self.head = nn.Conv2d(hidden, num_classes, 1, bias=False)
        self.sub_head = nn.Conv2d(hidden, num_subclasses, 1, bias=False) if num_subclasses else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"CamClassifier: features must be [B, {self.in_channels}, h, w], got {tuple(x.shape)}")
        return F.relu(self.adapter(x.float()))

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` class activation maps at feature resolution."""
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None):
        """``x`` ``[B, D, h, w]``, ``valid`` ``[B, 1, h, w]`` (1 where the image is, 0 on padding) ->
        ``(logits [B, C], sub_logits [B, K] or None, cams [B, C, h, w])``."""
        f = self.features(x)
        cams = self.head(f)
        sub = self.sub_head(f) if self.sub_head is not None else None
        return masked_mean(cams, valid), (masked_mean(sub, valid) if sub is not None else None), cams


def masked_mean(maps: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, C]`` mean over the cells where ``valid`` is 1 (all cells if None)."""
    if valid is None:
        return maps.mean((2, 3))
    return (maps * valid).sum((2, 3)) / valid.sum((2, 3)).clamp_min(1)


def cam_loss(logits: torch.Tensor, targets: torch.Tensor, sub_logits: torch.Tensor | None = None,
             sub_targets: torch.Tensor | None = None, sub_weight: float = 0.5) -> dict:
    """BCE(parent) [+ ``sub_weight`` * BCE(child)] (WeakMedSAM); returns the terms and ``total``."""
    terms = {"bce": F.binary_cross_entropy_with_logits(logits, targets.float())}
    if sub_logits is not None and sub_targets is not None:
        terms["sub_bce"] = sub_weight * F.binary_cross_entropy_with_logits(sub_logits, sub_targets.float())
    terms["total"] = sum(terms.values())
    return terms


def valid_cells(input_size: tuple[int, int], img_size: int, grid: int) -> tuple[int, int]:
    """Feature cells ``(rows, cols)`` covering the resized image (SAM pads bottom/right)."""
    stride = img_size / grid
    return (max(1, min(grid, int(-(-input_size[0] // stride)))), max(1, min(grid, int(-(-input_size[1] // stride)))))
