"""Prompt-free student networks trained on pseudo-labels.

`UNet` is a compact U-Net (Ronneberger et al.) sized by `widths`; GroupNorm
keeps it independent of the per-process batch size, so DDP needs no
SyncBatchNorm. `MultiHeadUNet` shares one U-Net trunk between several heads,
one per supervision source (a small ground-truth subset, CAMs, boxes,
SAM/pseudo-labels); the `gt` head is the one used at inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            _norm(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            _norm(cout),
            nn.ReLU(inplace=True),
        )


class UNetTrunk(nn.Module):
    """Encoder-decoder with skip connections; returns full-resolution features."""

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (16, 32, 64, 128)):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"UNet: `widths` needs at least two levels, got {tuple(widths)}")
        self.widths = tuple(widths)
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(DoubleConv(cin, w))
            cin = w
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for w_low, w_high in zip(reversed(widths[1:]), reversed(widths[:-1])):
            self.up.append(nn.ConvTranspose2d(w_low, w_high, 2, stride=2))
            self.fuse.append(DoubleConv(2 * w_high, w_high))
        self.out_channels = widths[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = len(self.widths)
        multiple = 2 ** (levels - 1)
        h, w = x.shape[-2:]
        # Pad to a multiple of 2^(levels-1) so every skip lines up; crop at the end.
        pad_h, pad_w = (-h) % multiple, (-w) % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips[:-1])):
            x = fuse(torch.cat([up(x), skip], dim=1))
        return x[..., :h, :w]


class UNet(nn.Module):
    """``[B, 3, H, W]`` images -> ``[B, num_classes, H, W]`` logits (any H, W)."""

    def __init__(self, num_classes: int, in_channels: int = 3, widths: Sequence[int] = (16, 32, 64, 128)):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"UNet: `num_classes` must be >= 1, got {num_classes}")
        self.trunk = UNetTrunk(in_channels, widths)
        self.head = nn.Conv2d(self.trunk.out_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class MultiHeadUNet(nn.Module):
    """One U-Net trunk, one light head per supervision source.

    ``forward`` returns ``{source: logits}``; ``predict`` uses the primary head
    (``gt`` by default)."""

    def __init__(
        self,
        num_classes: int,
        heads: Sequence[str] = ("gt", "cam", "box", "pseudo"),
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64, 128),
        primary: str = "gt",
    ):
        super().__init__()
        if primary not in heads:
            raise ValueError(f"MultiHeadUNet: primary head {primary!r} is not among heads {tuple(heads)}")
        if len(set(heads)) != len(heads):
            raise ValueError(f"MultiHeadUNet: head names must be distinct, got {tuple(heads)}")
        self.trunk = UNetTrunk(in_channels, widths)
        c = self.trunk.out_channels
        self.heads = nn.ModuleDict(
            {
                name: nn.Sequential(
                    nn.Conv2d(c, c, 3, padding=1, bias=False),
                    _norm(c),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(c, num_classes, 1),
                )
                for name in heads
            }
        )
        self.primary = primary

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk(x)
        return {name: head(features) for name, head in self.heads.items()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads[self.primary](self.trunk(x))


def build_student(
    arch: str,
    num_classes: int,
    *,
    widths: Sequence[int] = (16, 32, 64, 128),
    heads: Sequence[str] = ("gt", "cam", "box", "pseudo"),
    primary: str | None = None,
) -> nn.Module:
    """``unet`` or ``multihead``; a multihead student predicts with ``primary``,
    by default ``gt`` when it is one of the heads, else the first head."""
    if arch == "unet":
        return UNet(num_classes, widths=widths)
    if arch == "multihead":
        if primary is None:
            primary = "gt" if "gt" in heads else tuple(heads)[0]
        return MultiHeadUNet(num_classes, heads=heads, widths=widths, primary=primary)
    raise ValueError(f"build_student: `arch` must be 'unet' or 'multihead', got {arch!r}")
