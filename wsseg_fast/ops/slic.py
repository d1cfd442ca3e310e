"""SLIC superpixels (the pre-processing of SSC's activation self-modulation)."""

from __future__ import annotations

import torch

from wsseg_fast import reference
from wsseg_fast.ops._backend import OpSpec, choose
from wsseg_fast.ops.color import to_unit_rgb

SPEC = OpSpec("slic", backends=("torch", "cpu", "cuda"), auto={"cpu": ("cpu",), "cuda": ("cuda",)})

if SPEC.compiled["cpu"] or SPEC.compiled["cuda"]:

    @torch.library.register_fake("wsseg_fast::slic")
    def _(images, mask, n_segments, compactness, max_iter, enforce_connectivity, min_size_factor, max_size_factor):
        batch, _, height, width = images.shape
        return images.new_empty((batch, height, width), dtype=torch.int32)


def _check_number(name: str, value, kind: type, low: float, inclusive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise TypeError(
            f"slic: `{name}` must be {'a number' if kind is float else 'an int'}, got {type(value).__name__}"
        )
    if value < low or (not inclusive and value == low):
        raise ValueError(f"slic: `{name}` must be {'>=' if inclusive else '>'} {low}, got {value}")


def slic(
    images: torch.Tensor,
    n_segments: int = 100,
    *,
    compactness: float = 10.0,
    max_iter: int = 10,
    enforce_connectivity: bool = True,
    min_size_factor: float = 0.5,
    max_size_factor: float = 3.0,
    mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """SLIC superpixels of a batch of RGB images, with scikit-image's defaults.

    Args:
        images: ``[B, 3, H, W]`` uint8 (0..255) or floating point in [0, 1].
        n_segments: about how many superpixels per image (a grid of that many cells).
        compactness: weight of space against CIELAB colour; larger is more square.
        max_iter: assignment/update rounds (stops early when nothing changes).
        enforce_connectivity: make every label one 4-connected region: components
            smaller than ``min_size_factor`` x the mean segment size join a neighbour,
            and none grows past ``max_size_factor`` x that size.
        mask: optional ``[B, H, W]`` bool of valid pixels (e.g. not padding); the
            others get label -1 and take no part.
        backend: ``auto | cuda | cpu | torch`` (``auto`` honours ``$WSSEG_FAST_BACKEND``).
            ``cuda`` runs the iterations on the GPU and the connectivity pass on the
            host (one copy of labels each way; it synchronises).

    Returns:
        ``[B, H, W]`` int32 labels, 0..K_b-1 per image numbered in raster order of
        their first pixel, -1 outside ``mask``.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"slic: `images` must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        to_unit_rgb(images, "slic: `images`")  # shape, dtype and range checks
        images = images.float()
    elif images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"slic: `images` must have shape [B, 3, H, W], got {tuple(images.shape)}")
    _check_number("n_segments", n_segments, int, 1)
    _check_number("compactness", compactness, float, 0, inclusive=False)
    _check_number("max_iter", max_iter, int, 0)
    _check_number("min_size_factor", min_size_factor, float, 0)
    _check_number("max_size_factor", max_size_factor, float, 0, inclusive=False)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"slic: `mask` must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
        batch, _, height, width = images.shape
        if tuple(mask.shape) != (batch, height, width):
            raise ValueError(
                f"slic: `mask` must have shape [B, H, W] = {(batch, height, width)}, got {tuple(mask.shape)}"
            )
        mask = mask.to(images.device)
    which = choose(SPEC, backend, images.device)
    args = dict(
        compactness=float(compactness),
        max_iter=max_iter,
        enforce_connectivity=bool(enforce_connectivity),
        min_size_factor=float(min_size_factor),
        max_size_factor=float(max_size_factor),
    )
    if which == "torch":
        return reference.slic(images, n_segments, mask=mask, **args)
    return torch.ops.wsseg_fast.slic(
        images.contiguous(), mask if mask is None else mask.contiguous(), n_segments, *args.values()
    )
