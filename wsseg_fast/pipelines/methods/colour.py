"""Colour models from the weak labels alone (CRF-free): the object's colours against its
surroundings', inside each box, and the clean-up of mask parts no seed touches. Shared by
``sbr`` and ``logic-refine``."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
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


def colour_features(image: np.ndarray, space: str = "lab") -> np.ndarray:
    """``[H, W, 3]`` float64 colours, 3x3-smoothed: CIELAB (``"lab"``) or RGB in 0..255 (``"rgb"``)."""
    if space == "lab":
        rgb = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
        colours = rgb_to_lab(rgb)[0].permute(1, 2, 0).numpy()
    elif space == "rgb":
        colours = image
    else:
        raise ValueError(f"colour space must be 'lab' or 'rgb', got {space!r}")
    return uniform_filter(colours.astype(np.float64), size=(3, 3, 1), mode="nearest")


def _colour_samples(colours, boxes, annotations, masks, ring, off_mask):
    """Per box: its pixel bounds, the object's colours (its seeds when at least 3 lie in the box, else
    its ``masks`` pixels) and its surroundings' (the ``ring`` pixels around the box, the whole image
    outside it when ``ring < 0``; other boxes excluded, except those holding this one; with
    ``off_mask``, its box's pixels off its mask too)."""
    h, w = colours.shape[:2]
    inner, outer = box_pixels(boxes, h, w), box_pixels(boxes, h, w, grow=max(h, w) if ring < 0 else ring)
    for i, box in enumerate(boxes):
        y0, y1, x0, x1 = inner[i]
        if y1 <= y0 or x1 <= x0:
            yield inner[i], None, None
            continue
        oy0, oy1, ox0, ox1 = outer[i]
        around = np.zeros((h, w), bool)
        around[oy0:oy1, ox0:ox1] = True
        around[y0:y1, x0:x1] = ~masks[i, y0:y1, x0:x1] if off_mask else False
        for j, other in enumerate(boxes):
            holds = other[0] <= box[0] and other[1] <= box[1] and other[2] >= box[2] and other[3] >= box[3]
            if j != i and not holds:
                a0, a1, b0, b1 = inner[j]
                around[a0:a1, b0:b1] = False
        seeds = seed_pixels(annotations[i], h, w) if i < len(annotations) else np.zeros((0, 2), np.int64)
        inside = (seeds[:, 0] >= y0) & (seeds[:, 0] < y1) & (seeds[:, 1] >= x0) & (seeds[:, 1] < x1)
        object_colours = colours[seeds[inside, 0], seeds[inside, 1]]
        if len(object_colours) < 3:
            object_colours = colours[y0:y1, x0:x1][masks[i, y0:y1, x0:x1]]
        yield inner[i], object_colours, colours[around]


def colour_evidence(
    image: np.ndarray,
    boxes: np.ndarray,
    annotations: list[dict],
    masks: np.ndarray,
    ring: int = 6,
    model: str = "gaussian",
    components: int = 5,
    em_steps: int = 5,
    space: str = "lab",
    samples: int = 2048,
    off_mask: bool = False,
    unmix: bool = False,
) -> np.ndarray:
    """``[N, H, W]`` colour log-likelihood ratios, object vs. surroundings, inside each box
    (``-COLOUR_CLIP`` outside: boxes are tight). The object's colours are its points and scribbles
    (its current ``masks`` when fewer than 3 of them lie in its box), the surroundings' the ``ring``
    pixels around its box (the whole image outside it when ``ring < 0``; other boxes excluded, except
    those holding this one: a cup's surroundings are its disc), in ``space`` (:func:`colour_features`).

    ``model="gaussian"``: one Gaussian each (the object's spread shrunk towards the surroundings');
    ``"gmm"``: a mixture of ``components`` Gaussians each, as GrabCut's, fitted by ``em_steps`` EM
    steps to at most ``samples`` pixels, all boxes of the image in one batch (:func:`fit_gmm`).
    ``off_mask``: the surroundings also hold the box's pixels off its mask (as GrabCut refits its
    background). ``unmix`` (gmm): the object's mixture drops the components that its surroundings'
    mixture explains as well (:func:`_unmixed`): background seen through the box. Clipped to
    ±COLOUR_CLIP; 0 in a box with no colour model."""

    if model not in ("gaussian", "gmm"):
        raise ValueError(f"colour model must be 'gaussian' or 'gmm', got {model!r}")
    h, w = image.shape[:2]
    colours = colour_features(image, space)
    evidence = np.full((len(boxes), h, w), -COLOUR_CLIP, np.float32)
    fitted = []  # (box index, pixel bounds, object colours, surroundings' colours)
    for i, (bounds, object_colours, surroundings) in enumerate(
        _colour_samples(colours, boxes, annotations, masks, ring, off_mask)
    ):
        y0, y1, x0, x1 = bounds
        if object_colours is None:
            continue
        evidence[i, y0:y1, x0:x1] = 0.0
        if len(object_colours) >= 3 and len(surroundings):
            fitted.append((i, bounds, object_colours, surroundings))
    if not fitted:
        return evidence
    regions = [colours[y0:y1, x0:x1].reshape(-1, 3) for _, (y0, y1, x0, x1), _, _ in fitted]
    if model == "gmm":
        objects, around = [f[2] for f in fitted], [f[3] for f in fitted]
        ratios = _gmm_ratios(regions, objects, around, components, em_steps, samples, unmix)
    else:
        ratios = [_gaussian_ratio(region, obj, around) for region, (_, _, obj, around) in zip(regions, fitted)]
    for (i, (y0, y1, x0, x1), _, _), ratio in zip(fitted, ratios):
        evidence[i, y0:y1, x0:x1] = np.clip(ratio, -COLOUR_CLIP, COLOUR_CLIP).reshape(y1 - y0, x1 - x0)
    return evidence


def _gaussian_ratio(region: np.ndarray, object_colours: np.ndarray, surroundings: np.ndarray) -> np.ndarray:
    texture = np.cov(surroundings.T, bias=True) if len(surroundings) > 1 else np.eye(3)
    return _gaussian_log_density(region, object_colours, texture, SHRINK_SAMPLES) - _gaussian_log_density(
        region, surroundings
    )


def _subsample(colours: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` rows of ``colours``, evenly spaced (deterministic)."""
    if len(colours) <= count:
        return colours
    return colours[np.linspace(0, len(colours) - 1, count).astype(np.int64)]


def _gmm_ratios(regions, object_colours, surroundings, components, em_steps, samples, unmix) -> list[np.ndarray]:
    """Per box, log p(region | object GMM) - log p(region | surroundings GMM); the mixtures of both
    sides of every box fitted in one batch."""
    n = len(regions)
    gmm = fit_gmm(*_padded(list(object_colours) + list(surroundings), samples), components, em_steps)
    obj, around = tuple(t[:n] for t in gmm), tuple(t[n:] for t in gmm)
    if unmix:
        obj = (_unmixed(obj, around),) + obj[1:]
    ratios = []
    for i, region in enumerate(regions):
        r = torch.from_numpy(region)
        fg = gmm_log_density(r, *(t[i] for t in obj))
        bg = gmm_log_density(r, *(t[i] for t in around))
        ratios.append((fg - bg).numpy())
    return ratios


def _unmixed(obj: tuple, around: tuple) -> torch.Tensor:
    """The object mixtures' log-weights ``[B, K]`` without the components that are background seen
    through the box: those whose mean is no likelier under the object's mixture than under its
    surroundings' (a colour the box holds no more of than its surroundings do), renormalised; the
    most enriched component always stays. A faithful density of a box's pixels keeps such a colour with
    the share it has in the box, and the log-ratio there is only log(share in box / share around)."""
    log_weights, means, _ = obj
    enrichment = torch.stack(
        [
            gmm_log_density(means[i], *(t[i] for t in obj)) - gmm_log_density(means[i], *(t[i] for t in around))
            for i in range(len(means))
        ]
    )  # [B, K]
    keep = (enrichment > 0) | (enrichment == enrichment.max(1, keepdim=True).values)
    kept = log_weights.masked_fill(~keep, -math.inf)
    return kept - torch.logsumexp(kept, 1, keepdim=True)


def _padded(sets: list[np.ndarray], samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, P, 3]`` the sets (at most ``samples`` of each) padded to one length, and ``[B, P]`` 1/0 weights."""
    sets = [_subsample(c, samples) for c in sets]
    x = torch.zeros(len(sets), max(len(c) for c in sets), 3, dtype=torch.float64)
    weight = torch.zeros(x.shape[:2], dtype=torch.float64)
    for b, c in enumerate(sets):
        x[b, : len(c)] = torch.from_numpy(c)
        weight[b, : len(c)] = 1.0
    return x, weight


def fit_gmm(
    x: torch.Tensor, weight: torch.Tensor, components: int, steps: int, reg: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian mixtures fitted to a batch of sample sets, ``x`` ``[B, P, D]`` with ``weight``
    ``[B, P]`` (0 = padding): each set's samples start in ``components`` equal-weight bins along its
    principal axis (deterministic, like a 1-D k-means start), then ``steps`` EM steps. Returns
    ``(log_weights [B, K], means [B, K, D], covariances [B, K, D, D])``, the covariances plus ``reg``
    times the identity (so a flat patch of colour still has a spread). A component left without
    samples keeps a weight of ~1e-10."""

    b, p, d = x.shape
    w = weight / weight.sum(1, keepdim=True).clamp_min(1e-12)
    centred = x - torch.einsum("bp,bpd->bd", w, x)[:, None]
    axis = torch.linalg.eigh(torch.einsum("bp,bpi,bpj->bij", w, centred, centred)).eigenvectors[..., -1]
    order = torch.einsum("bpd,bd->bp", centred, axis).argsort(1)
    sorted_w = w.gather(1, order)
    rank = torch.empty_like(w).scatter_(1, order, torch.cumsum(sorted_w, 1) - 0.5 * sorted_w)
    resp = F.one_hot((rank * components).long().clamp(0, components - 1), components).to(x.dtype)
    squares = (x[..., :, None] * x[..., None, :]).reshape(b, p, d * d)  # the second moments, as matrix products
    eye = reg * torch.eye(d, dtype=x.dtype)
    for step in range(steps + 1):
        r = resp * w[..., None]  # M step
        mass = r.sum(1) + 1e-10  # [B, K]
        means = r.transpose(1, 2) @ x / mass[..., None]
        second = (r.transpose(1, 2) @ squares).view(b, components, d, d) / mass[..., None, None]
        cov = second - means[..., :, None] * means[..., None, :] + eye
        log_weights = torch.log(mass / mass.sum(1, keepdim=True))
        if step == steps:
            return log_weights, means, cov
        log_p = _component_log_density(x, means, cov, squares) + log_weights[:, None]  # E step
        resp = (log_p - log_p.amax(-1, keepdim=True)).exp_()  # a softmax: torch.softmax is ~5x slower on K = 5
        resp = resp / resp.sum(-1, keepdim=True)
    raise AssertionError  # unreachable


def _component_log_density(
    x: torch.Tensor, means: torch.Tensor, cov: torch.Tensor, squares: torch.Tensor | None = None
) -> torch.Tensor:
    """``[..., P, K]`` log N(x; mean_k, cov_k) of ``x`` ``[..., P, D]`` (``squares``: its flattened outer
    products, if at hand), ``means`` ``[..., K, D]``: the quadratic form expanded into matrix products."""
    d = x.shape[-1]
    if squares is None:
        squares = (x[..., :, None] * x[..., None, :]).flatten(-2)
    precision = torch.linalg.inv(cov)  # [..., K, D, D]
    shifted = precision @ means[..., None]  # [..., K, D, 1]
    quadratic = (
        squares @ precision.flatten(-2).transpose(-1, -2)
        - 2 * x @ shifted[..., 0].transpose(-1, -2)
        + (means[..., None, :] @ shifted)[..., 0, 0].unsqueeze(-2)
    )
    log_det = torch.linalg.slogdet(cov)[1]
    return -0.5 * (quadratic + log_det.unsqueeze(-2) + d * math.log(2 * math.pi))


def gmm_log_density(x: torch.Tensor, log_weights: torch.Tensor, means: torch.Tensor, cov: torch.Tensor):
    """``[P]`` log-density of ``x`` ``[P, D]`` under one mixture of :func:`fit_gmm`."""
    return torch.logsumexp(_component_log_density(x, means, cov) + log_weights, -1)


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
