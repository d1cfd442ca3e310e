"""A student on frozen SAM features: a light trainable decoder over the cached image embedding.

:class:`SamFeatureHead` reads what the embedding cache holds for an image (SAM 1: the ``[256, g, g]``
embedding; SAM 2.1 also its ``[32, 4g, 4g]`` and ``[64, 2g, 2g]`` high-resolution levels) and gives
logits on SAM's square input frame at ``size x size`` (the image in its top-left corner, as SAM
resizes and pads it). A transposed convolution takes the features from g to 2g (adding SAM 2.1's
high-resolution levels, as its mask decoder does); an optional shallow branch on the image itself
restores boundaries finer than a feature cell. One light head per supervision
source, as :class:`~wsseg_fast.models.student.MultiHeadUNet`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class SamFeatureHead(nn.Module):
    """``forward(*levels, [image])`` -> ``{head: [B, num_classes, size, size] logits}``.

    Args:
        num_classes: classes including background.
        level_shapes: ``(C, H, W)`` of each feature level, the image embedding ``(C, g, g)`` first.
        heads: one head per supervision source; ``primary`` predicts.
        size: the output's side, even (the decoder works at ``size / 2``; its logits are upsampled 2x).
        image_branch: also read the image letterboxed to ``size`` (normalised, ``[B, 3, size, size]``).
        width: channels at the feature grid (halved at the working resolution).
    """

    def __init__(
        self,
        num_classes: int,
        level_shapes: Sequence[Sequence[int]],
        heads: Sequence[str] = ("pseudo",),
        primary: str | None = None,
        size: int = 256,
        image_branch: bool = False,
        width: int = 64,
    ):
        super().__init__()
        heads = tuple(heads)
        primary = heads[0] if primary is None else primary
        if num_classes < 1:
            raise ValueError(f"SamFeatureHead: `num_classes` must be >= 1, got {num_classes}")
        if primary not in heads or len(set(heads)) != len(heads):
            raise ValueError(f"SamFeatureHead: heads must be distinct and hold primary {primary!r}, got {heads}")
        if width < 8 or width % 4:
            raise ValueError(f"SamFeatureHead: `width` must be a multiple of 4 and >= 8, got {width}")
        if size < 2 or size % 2:
            raise ValueError(f"SamFeatureHead: `size` must be even and >= 2, got {size}")
        self.level_shapes = tuple(tuple(int(v) for v in s) for s in level_shapes)
        channels, grid = self.level_shapes[0][0], self.level_shapes[0][-1]
        self.size, self.image_branch, self.primary = size, image_branch, primary
        half = width // 2
        # Depthwise-separable 3x3 at the grid: the context of a plain 3x3 at a seventh of its cost.
        self.neck = nn.Sequential(
            nn.Conv2d(channels, width, 1, bias=False),
            _norm(width),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
            nn.Conv2d(width, width, 1, bias=False),
            _norm(width),
            nn.GELU(),
        )
        self.up = nn.ConvTranspose2d(width, half, 2, stride=2)
        self.up_norm = _norm(half)
        # SAM 2.1's high-resolution levels join at 2g (its 4g level average-pooled), as its decoder adds them
        self.skips = nn.ModuleDict()
        for c, h, _ in self.level_shapes[1:]:
            if h not in (2 * grid, 4 * grid):
                raise ValueError(f"SamFeatureHead: a level of {h} rows is neither 2x nor 4x the grid {grid}")
            self.skips[str(h // grid)] = nn.Conv2d(c, half, 1)
        # Everything after the features runs at size / 2, where a CPU spends a quarter of the time
        # on the memory-bound thin layers; only the logits are upsampled to size.
        if image_branch:
            self.image = nn.Sequential(
                nn.Conv2d(3, 16, 3, stride=2, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(16, 16, 3, padding=1),
                nn.ReLU(inplace=True),
            )
            self.fuse = nn.Sequential(nn.Conv2d(half + 16, half, 1, bias=False), _norm(half), nn.GELU())
        self.heads = nn.ModuleDict({name: nn.Conv2d(half, num_classes, 1) for name in heads})

    def features(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The shared features ``[B, width / 2, size / 2, size / 2]`` the heads read."""
        n = len(self.level_shapes)
        expected = n + int(self.image_branch)
        if len(inputs) != expected:
            raise ValueError(
                f"SamFeatureHead: expected {n} feature level(s)"
                + (" and the image" if self.image_branch else "")
                + f", got {len(inputs)} tensors"
            )
        levels = [t.float() for t in inputs[:n]]
        for t, shape in zip(levels, self.level_shapes):
            if t.ndim != 4 or tuple(t.shape[1:]) != shape:
                raise ValueError(
                    f"SamFeatureHead: a level is {tuple(t.shape)}, expected [B, {', '.join(map(str, shape))}]"
                )
        grid = self.level_shapes[0][-1]
        x = self.up(self.neck(levels[0]))
        for t in levels[1:]:
            scale = t.shape[-1] // grid
            x = x + self.skips[str(scale)](F.avg_pool2d(t, 2) if scale == 4 else t)
        x = F.gelu(self.up_norm(x))
        work = self.size // 2
        if x.shape[-1] != work:
            x = F.interpolate(x, size=(work, work), mode="bilinear", align_corners=False)
        if self.image_branch:
            image = inputs[n].float()
            if tuple(image.shape[-2:]) != (self.size, self.size):
                raise ValueError(
                    f"SamFeatureHead: the image is {tuple(image.shape)}, expected [B, 3, {self.size}, {self.size}]"
                )
            x = self.fuse(torch.cat([x, self.image(image)], 1))
        return x

    def _logits(self, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(head(x), size=(self.size, self.size), mode="bilinear", align_corners=False)

    def forward(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.features(*inputs)
        return {name: self._logits(head, x) for name, head in self.heads.items()}

    def predict(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self._logits(self.heads[self.primary], self.features(*inputs))
