"""CAM refinement by an affinity random walk, as PSA, IRN and WeakMedSAM do it.

Two affinity sources:

- image or network features -> :func:`wsseg_fast.ops.local_affinity` (PSA/IRN);
- SAM masks of a grid of point prompts over the whole image ->
  :func:`wsseg_fast.ops.mask_affinity` (WeakMedSAM's prompt affinity mining).
  :func:`grid_prompt_masks` runs every grid point through SAM's prompt encoder
  and mask decoder on one cached image embedding (the encoder runs once per
  image, not once per prompt), the points spread over the whole H x W.

Then :func:`refine_cams`: background score ``(1 - max_c CAM)^alpha``, the
sparse walk of :func:`wsseg_fast.ops.random_walk`, argmax.
"""

from __future__ import annotations

import torch

from wsseg_fast.cache import Embedding
from wsseg_fast.ops import local_affinity, mask_affinity, random_walk
from wsseg_fast.sam.prompting import predict_masks


def grid_points(points_per_side: int, height: int, width: int, *, device=None) -> torch.Tensor:
    """``[n*n, 2]`` float32 ``(x, y)`` pixel coordinates of the centres of an
    ``n x n`` grid of cells over an ``height x width`` image, row by row.
    (WeakMedSAM's public code puts every point in the top-left 16x16 pixels;
    these cover the whole image.)"""
    if isinstance(points_per_side, bool) or not isinstance(points_per_side, int) or points_per_side < 1:
        raise ValueError(f"grid_points: `points_per_side` must be an int >= 1, got {points_per_side!r}")
    if height < 1 or width < 1:
        raise ValueError(f"grid_points: `height` and `width` must be >= 1, got {(height, width)}")
    centres = (torch.arange(points_per_side, dtype=torch.float32, device=device) + 0.5) / points_per_side
    ys, xs = torch.meshgrid(centres * height, centres * width, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)


@torch.no_grad()
def grid_prompt_masks(
    model,
    embedding: Embedding,
    points_per_side: int = 16,
    *,
    multimask_output: bool = True,
    points_per_batch: int | None = None,
) -> torch.Tensor:
    """SAM mask logits for a grid of single positive point prompts over the whole image.

    Args:
        model: a :class:`~wsseg_fast.sam.registry.SamModel` of either family.
        embedding: the image's :class:`~wsseg_fast.cache.Embedding` (e.g. from the cache), computed once.
        points_per_side: ``n``: ``n*n`` prompts at the cell centres of :func:`grid_points`.
        multimask_output: decode SAM's three candidate masks per point and keep the one with the highest
            predicted IoU (recommended for single points); otherwise the single-mask output.
        points_per_batch: prompts per decoder call; ``None`` decodes all in one call (the decoder holds
            one copy of the embedding per prompt).

    Returns:
        ``[n*n, H, W]`` mask logits at the original resolution.
    """
    height, width = embedding.original_size
    points = grid_points(points_per_side, height, width)
    batch = points.shape[0] if points_per_batch is None else points_per_batch
    masks = []
    for chunk in points.split(batch):
        prediction = predict_masks(
            model,
            embedding,
            points=chunk[:, None, :],
            point_labels=torch.ones(len(chunk), 1),
            multimask_output=multimask_output,
        )
        logits = prediction.logits
        if multimask_output:
            best = prediction.scores.argmax(1)
            logits = logits[torch.arange(len(best), device=best.device), best][:, None]
        masks.append(logits[:, 0])
    return torch.cat(masks)


def normalize_cams(cams: torch.Tensor) -> torch.Tensor:
    """ReLU, then each class map divided by its maximum (PSA/IRN), into [0, 1]."""
    cams = cams.clamp_min(0)
    return cams / cams.amax((2, 3), keepdim=True).clamp_min(1e-5)


def background_score(cams: torch.Tensor, alpha: float = 16.0) -> torch.Tensor:
    """PSA's background ``(1 - max_c CAM)^alpha`` for CAMs in [0, 1]: ``[B, 1, H, W]``."""
    return (1 - cams.amax(1, keepdim=True)).clamp_min(0).pow(alpha)


def refine_cams(
    cams: torch.Tensor,
    source: torch.Tensor,
    *,
    source_kind: str = "features",
    radius: int = 5,
    beta: float = 8.0,
    steps: int = 256,
    alpha: float = 16.0,
    mask_aggregate: str = "sum",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine CAMs by the affinity random walk and label every pixel.

    Args:
        cams: ``[B, C, H, W]`` raw class activation maps (classes absent from an
            image should be zeroed by the caller).
        source: ``[B, D, H, W]`` features (``source_kind="features"``) or
            ``[B, N, H, W]`` SAM mask logits (``"masks"``, e.g. from
            :func:`grid_prompt_masks`) the affinities come from.
        radius, beta, steps: the walk (PSA: 5, 8, 256; IRN: beta 10).
        alpha: background exponent (PSA: 16).
        mask_aggregate: how :func:`~wsseg_fast.ops.mask_affinity` combines the
            masks (``"sum"``: WeakMedSAM's one normalised map; ``"stack"``).

    Returns:
        ``(scores, labels)``: ``[B, C+1, H, W]`` walked scores (channel 0 the
        background) and ``[B, H, W]`` int64 labels (0 background, ``c+1`` class ``c``).
    """
    if source_kind not in ("features", "masks"):
        raise ValueError(f"refine_cams: `source_kind` must be 'features' or 'masks', got {source_kind!r}")
    if cams.dim() != 4 or source.dim() != 4 or cams.shape[0] != source.shape[0] or cams.shape[2:] != source.shape[2:]:
        raise ValueError(
            f"refine_cams: `cams` [B, C, H, W] and `source` [B, D, H, W] must share B, H, W; "
            f"got {tuple(cams.shape)} and {tuple(source.shape)}"
        )
    cams = normalize_cams(cams.float())
    scores = torch.cat([background_score(cams, alpha), cams], 1)
    if source_kind == "features":
        affinity = local_affinity(source.float(), radius, backend=backend)
    else:
        affinity = mask_affinity(source.float(), radius, aggregate=mask_aggregate, backend=backend)
    scores = random_walk(scores, affinity, radius, beta=beta, steps=steps, backend=backend)
    return scores, scores.argmax(1)
