"""Superpixel pooling and SSC's activation self-modulation in plain PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def superpixel_pool(x: torch.Tensor, labels: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """``x`` ``[B, C, H, W]``, ``labels`` ``[B, H, W]`` (-1 = no superpixel) -> ``[B, C, H, W]``:
    every pixel gets the mean (or max) over its superpixel, per channel; 0 where the label is -1.
    A NaN makes its superpixel's mean and max NaN; x is not read where the label is -1.
    Differentiable through autograd (max: torch's rule, ties share the gradient)."""
    batch, channels, height, width = x.shape
    flat = labels.reshape(batch, 1, height * width).long()
    valid = flat >= 0
    k = max(int(flat.max()) + 1, 1) if flat.numel() else 1
    index = flat.clamp_min(0).expand(batch, channels, height * width)
    values = x.reshape(batch, channels, height * width)
    if reduce == "mean":
        sums = x.new_zeros(batch, channels, k).scatter_add(2, index, values.masked_fill(~valid, 0))
        counts = torch.zeros(batch, 1, k, dtype=x.dtype, device=x.device).scatter_add(
            2, flat.clamp_min(0), valid.to(x.dtype)
        )
        pooled = sums / counts.clamp_min(1)
    else:
        lowest = torch.finfo(x.dtype).min
        pooled = x.new_full((batch, channels, k), lowest).scatter_reduce(
            2, index, values.masked_fill(~valid, lowest), "amax", include_self=True
        )
    return pooled.gather(2, index).masked_fill(~valid, 0).view(batch, channels, height, width)


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary erosion of ``[B, C, H, W]`` bool by a (2r+1)^2 square; outside the image does not erode."""
    if radius <= 0:
        return mask
    pad = F.pad((~mask).float(), (radius,) * 4, value=0.0)
    return F.max_pool2d(pad, 2 * radius + 1, stride=1) == 0


def working_precision(cams: torch.Tensor) -> torch.Tensor:
    """Half precision computes in float32; float32 and float64 stay."""
    return cams.float() if cams.dtype in (torch.float16, torch.bfloat16) else cams


def normalise_by_max(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """ReLU, then divide each ``[H, W]`` map by its max (+eps)."""
    cams = F.relu(cams)
    return cams / (cams.amax(dim=(2, 3), keepdim=True) + eps)


def activation_modulation(
    cams: torch.Tensor,
    labels: torch.Tensor,
    present: torch.Tensor | None = None,
    threshold: float = 0.3,
    erode_radius: int = 8,
) -> torch.Tensor:
    """SSC's self-modulation target, detached: ``max(norm(superpixel mean of norm(cams)),
    norm(cams) inside the eroded reliable region norm(cams) > threshold)``; zero for absent classes."""
    with torch.no_grad():
        cam = normalise_by_max(working_precision(cams))
        pooled = normalise_by_max(superpixel_pool(cam, labels, "mean"))
        reliable = erode(cam > threshold, erode_radius)
        target = torch.maximum(pooled, cam * reliable)
        if present is not None:
            target = target * present.to(target.dtype)[:, :, None, None]
    return target.to(cams.dtype)


def ssc_alignment_loss(
    cams: torch.Tensor,
    labels: torch.Tensor,
    present: torch.Tensor | None = None,
    threshold: float = 0.3,
    erode_radius: int = 8,
) -> torch.Tensor:
    """MSE between norm(cams) and the detached modulation target, averaged over the pixels of
    the present classes (all classes when ``present`` is None); 0 when none is present."""
    target = activation_modulation(cams, labels, present, threshold, erode_radius)
    diff2 = (normalise_by_max(cams) - target) ** 2
    per_map = diff2.mean(dim=(2, 3))  # [B, C]
    if present is None:
        return per_map.mean()
    weight = present.to(per_map.dtype)
    return (per_map * weight).sum() / weight.sum().clamp_min(1)
