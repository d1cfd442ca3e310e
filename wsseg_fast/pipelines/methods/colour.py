"""Colour models from the weak labels alone (CRF-free): the object's colours against its
surroundings', inside each box, and the clean-up of mask parts no seed touches. Shared by
``sbr`` and ``logic-refine``."""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import label as connected
from scipy.ndimage import uniform_filter

from wsseg_fast.logic.weak_labels import rasterise_polyline
from wsseg_fast.ops.color import rgb_to_lab
from wsseg_fast.pipelines.methods.base import box_pixels

COLOUR_CLIP = 8.0  # log-likelihood ratios beyond this say nothing more: caps one texture outlier's vote
SHRINK_SAMPLES = 20.0  # the object's colour spread starts as its surroundings' (same kind of texture)


def seed_pixels(annotation: dict, height: int, width: int) -> np.ndarray:
    """``[K, 2]`` (y, x) pixels an annotation marks as its object: its points and its
    scribbles drawn as polylines (as the knowledge base draws them)."""

    xy = [np.asarray(annotation.get("points") or [], np.float64).reshape(-1, 2)]
    for line in annotation.get("scribbles") or []:
        xy.append(rasterise_polyline(torch.tensor(line, dtype=torch.float64).reshape(-1, 2)).numpy())
    xy = np.floor(np.concatenate(xy)).astype(np.int64)
    ok = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
    return np.unique(xy[ok][:, ::-1], axis=0)


def _gaussian_log_density(
    x: np.ndarray, samples: np.ndarray, prior_cov: np.ndarray | None = None, prior_weight: float = 0.0
) -> np.ndarray:
    """log N(x; mean, cov) of ``[P, 3]`` features under a Gaussian fitted to ``samples``,
    its covariance shrunk towards ``prior_cov`` as if from ``prior_weight`` more samples
    (the few pixels of a small object's scribble would give a far too narrow one)."""

    n = len(samples)
    mean = samples.mean(0)
    cov = np.cov(samples.T, bias=True) if n > 1 else np.zeros((3, 3))
    if prior_cov is not None and prior_weight > 0:
        cov = (n * cov + prior_weight * prior_cov) / (n + prior_weight)
    cov = cov + 1.0 * np.eye(3)
    d = x - mean
    inv = np.linalg.inv(cov)
    return -0.5 * np.einsum("pi,ij,pj->p", d, inv, d) - 0.5 * np.linalg.slogdet(cov)[1]


def colour_evidence(
    image: np.ndarray, boxes: np.ndarray, annotations: list[dict], masks: np.ndarray, ring: int = 6
) -> np.ndarray:
    """``[N, H, W]`` colour log-likelihood ratios, object vs. surroundings, inside each box
    (``-COLOUR_CLIP`` outside: boxes are tight). The object's colour is a Gaussian (CIELAB,
    3x3-smoothed) fitted to its points and scribbles (to its current ``masks`` when fewer
    than 3 of them lie in its box), the surroundings' one to the ``ring`` pixels around
    its box (other boxes excluded, except those holding this one: a cup's surroundings
    are its disc). Clipped to ±COLOUR_CLIP; 0 in a box with no colour model."""

    h, w = image.shape[:2]
    lab = rgb_to_lab(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    lab = uniform_filter(lab.astype(np.float64), size=(3, 3, 1), mode="nearest")
    evidence = np.full((len(boxes), h, w), -COLOUR_CLIP, np.float32)
    inner, outer = box_pixels(boxes, h, w), box_pixels(boxes, h, w, grow=ring)
    for i, box in enumerate(boxes):
        y0, y1, x0, x1 = inner[i]
        if y1 <= y0 or x1 <= x0:
            continue
        evidence[i, y0:y1, x0:x1] = 0.0
        oy0, oy1, ox0, ox1 = outer[i]
        around = np.zeros((h, w), bool)
        around[oy0:oy1, ox0:ox1] = True
        around[y0:y1, x0:x1] = False
        for j, other in enumerate(boxes):
            holds = other[0] <= box[0] and other[1] <= box[1] and other[2] >= box[2] and other[3] >= box[3]
            if j != i and not holds:
                a0, a1, b0, b1 = inner[j]
                around[a0:a1, b0:b1] = False
        seeds = seed_pixels(annotations[i], h, w) if i < len(annotations) else np.zeros((0, 2), np.int64)
        inside = (seeds[:, 0] >= y0) & (seeds[:, 0] < y1) & (seeds[:, 1] >= x0) & (seeds[:, 1] < x1)
        object_colours = lab[seeds[inside, 0], seeds[inside, 1]]
        if len(object_colours) < 3:
            object_colours = lab[y0:y1, x0:x1][masks[i, y0:y1, x0:x1]]
        if len(object_colours) < 3 or not around.any():
            continue
        region = lab[y0:y1, x0:x1].reshape(-1, 3)
        surroundings = lab[around]
        texture = np.cov(surroundings.T, bias=True) if len(surroundings) > 1 else np.eye(3)
        ratio = _gaussian_log_density(region, object_colours, texture, SHRINK_SAMPLES) - _gaussian_log_density(
            region, surroundings
        )
        evidence[i, y0:y1, x0:x1] = np.clip(ratio, -COLOUR_CLIP, COLOUR_CLIP).reshape(y1 - y0, x1 - x0)
    return evidence


def keep_seeded_components(logits: np.ndarray, boxes: np.ndarray, annotations: list[dict]) -> np.ndarray:
    """Inside each box, pushes the mask's connected parts that no point or scribble of the
    object touches to background (``min(logit, -1)``): stray patches of object-like colour
    in the background. Objects without seeds are kept as they are."""

    logits = logits.copy()
    h, w = logits.shape[1:]
    bounds = box_pixels(boxes, h, w)
    for i in range(min(len(logits), len(annotations), len(boxes))):
        seeds = seed_pixels(annotations[i], h, w)
        if not len(seeds):
            continue
        y0, y1, x0, x1 = bounds[i]
        crop = logits[i, y0:y1, x0:x1]  # a view: edits land in logits
        parts, _ = connected(crop > 0, structure=np.ones((3, 3)))
        inside = (seeds[:, 0] >= y0) & (seeds[:, 0] < y1) & (seeds[:, 1] >= x0) & (seeds[:, 1] < x1)
        kept = np.unique(parts[seeds[inside, 0] - y0, seeds[inside, 1] - x0])
        stray = (parts > 0) & ~np.isin(parts, kept[kept > 0])
        crop[stray] = np.minimum(crop[stray], -1.0)
    return logits
