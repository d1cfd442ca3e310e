"""Prompt-free student networks trained on pseudo-labels.

`UNet` is a U-Net (Ronneberger et al.) on one of two encoders: ``conv``, a compact one sized by
`widths` whose GroupNorm keeps it independent of the per-process batch size (DDP needs no
SyncBatchNorm), or ``resnet34``, torchvision's ResNet-34 (the multi-head paper's student; ImageNet
weights a user has load with :meth:`ResNet34Trunk.load_encoder_weights`). `MultiHeadUNet` shares
one trunk between several heads, one per supervision source (a small ground-truth subset, CAMs,
boxes, SAM/pseudo-labels); the `gt` head is the one used at inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from wsseg_fast.errors import CheckpointError

ENCODERS = ("conv", "resnet34")


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
        h, w = x.shape[-2:]
        x = _pad_to(x, 2 ** (len(self.widths) - 1))  # every skip lines up; cropped at the end
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips[:-1])):
            x = fuse(torch.cat([up(x), skip], dim=1))
        return x[..., :h, :w]


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x`` padded (replicating its edge) below and right to a multiple of ``multiple``."""
    pad_h, pad_w = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x


class ResNet34Trunk(nn.Module):
    """torchvision's ResNet-34 as a U-Net encoder: its five stages (/2 ... /32) are the skips of a
    decoder (2x nearest upsampling, concatenation, :class:`DoubleConv`) of widths 256, 128, 64, 32
    and 16 back to full resolution; returns ``[B, 16, H, W]`` (any H, W: padded to a multiple of 32)."""

    DECODER = (256, 128, 64, 32, 16)

    def __init__(self):
        super().__init__()
        self.encoder = torchvision.models.resnet34(weights=None)
        del self.encoder.fc  # a classifier's head: the trunk ends at layer4
        skips = (256, 128, 64, 64, 0)  # layer3, layer2, layer1, the stem; none at full resolution
        cin = 512
        self.decoder = nn.ModuleList()
        for width, skip in zip(self.DECODER, skips):
            self.decoder.append(DoubleConv(cin + skip, width))
            cin = width
        self.out_channels = self.DECODER[-1]

    def load_encoder_weights(self, path: str) -> None:
        """torchvision's ``resnet34`` state dict (ImageNet weights, e.g. ``resnet34-b627a593.pth``;
        its ``fc`` is dropped) into the encoder."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"encoder weights {path} cannot be read ({type(exc).__name__}: {exc})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise CheckpointError(f"encoder weights {path}: expected a resnet34 state dict")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        own = self.encoder.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"encoder weights {path} are not torchvision's resnet34: "
                + "; ".join(
                    f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                    for what, keys in (("missing", missing), ("unexpected", unexpected), ("other shapes", wrong))
                    if keys
                )
            )
        self.encoder.load_state_dict(state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        e = self.encoder
        x = _pad_to(x, 32)
        stem = e.relu(e.bn1(e.conv1(x)))  # /2
        layer1 = e.layer1(e.maxpool(stem))  # /4
        layer2 = e.layer2(layer1)
        layer3 = e.layer3(layer2)
        x = e.layer4(layer3)  # /32
        for block, skip in zip(self.decoder, (layer3, layer2, layer1, stem, None)):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(x if skip is None else torch.cat([x, skip], dim=1))
        return x[..., :h, :w]


def build_trunk(encoder: str, widths: Sequence[int], in_channels: int = 3) -> nn.Module:
    """The U-Net trunk with ``encoder`` (:data:`ENCODERS`)."""
    if encoder == "conv":
        return UNetTrunk(in_channels, widths)
    if encoder == "resnet34":
        if in_channels != 3:
            raise ValueError(f"the resnet34 encoder reads RGB images, not {in_channels} channels")
        return ResNet34Trunk()
    raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")


class UNet(nn.Module):
    """``[B, 3, H, W]`` images -> ``[B, num_classes, H, W]`` logits (any H, W)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64, 128),
        encoder: str = "conv",
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"UNet: `num_classes` must be >= 1, got {num_classes}")
        self.trunk = build_trunk(encoder, widths, in_channels)
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
        encoder: str = "conv",
    ):
        super().__init__()
        if primary not in heads:
            raise ValueError(f"MultiHeadUNet: primary head {primary!r} is not among heads {tuple(heads)}")
        if len(set(heads)) != len(heads):
            raise ValueError(f"MultiHeadUNet: head names must be distinct, got {tuple(heads)}")
        self.trunk = build_trunk(encoder, widths, in_channels)
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
    encoder: str = "conv",
) -> nn.Module:
    """``unet`` or ``multihead`` on ``encoder`` (:data:`ENCODERS`); a multihead student predicts
    with ``primary``, by default ``gt`` when it is one of the heads, else the first head."""
    if arch == "unet":
        return UNet(num_classes, widths=widths, encoder=encoder)
    if arch == "multihead":
        if primary is None:
            primary = "gt" if "gt" in heads else tuple(heads)[0]
        return MultiHeadUNet(num_classes, heads=heads, widths=widths, primary=primary, encoder=encoder)
    raise ValueError(f"build_student: `arch` must be 'unet' or 'multihead', got {arch!r}")
