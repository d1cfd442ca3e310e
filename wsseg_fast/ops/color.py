"""Colour conversion shared by every op that compares pixel colours (SLIC, the
pairwise colour prior): sRGB -> CIELAB exactly as scikit-image's ``rgb2lab``
converts (D65 white, 2° observer), so distances match the public peers."""

from __future__ import annotations

import torch

# sRGB (linear) -> XYZ, D65 (scikit-image's xyz_from_rgb).
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_D65_WHITE = (0.95047, 1.0, 1.08883)


def to_unit_rgb(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """``[B, 3, H, W]`` uint8 (0..255) or float in [0, 1] -> float32 in [0, 1].

    Raises ``ValueError``/``TypeError`` naming ``name`` for anything else (NaN included)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must have shape [B, 3, H, W], got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise TypeError(f"{name} must be uint8 (0..255) or floating point in [0, 1], got {images.dtype}")
    if images.numel():
        lo, hi = torch.aminmax(images)  # NaN when images hold one
        if torch.isnan(lo):
            raise ValueError(f"{name} contains NaN; floating-point images must lie in [0, 1]")
        if not (torch.isfinite(lo) and torch.isfinite(hi)) or lo < 0 or hi > 1:
            raise ValueError(
                f"{name}: floating-point images must lie in [0, 1] (got min {lo.item():.4g}, max {hi.item():.4g}); "
                "pass uint8 for 0..255 images"
            )
    return images.float()


def rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` RGB (uint8 or float in [0, 1]) -> float32 CIELAB ``[B, 3, H, W]``
    (L in [0, 100]), the same numbers as ``skimage.color.rgb2lab``."""
    rgb = to_unit_rgb(images)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    matrix = torch.tensor(_XYZ_FROM_RGB, dtype=linear.dtype, device=linear.device)
    white = torch.tensor(_D65_WHITE, dtype=linear.dtype, device=linear.device).view(1, 3, 1, 1)
    xyz = torch.einsum("ij,bjhw->bihw", matrix, linear) / white
    f = torch.where(xyz > 0.008856, xyz.clamp_min(0) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(1)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=1)
