"""Pseudo-label methods: weak annotations of one image -> scored instance masks.

A method is a function registered with :func:`register_method`; the job resolves
the instances it returns into one class-index map. To add one::

    @register_method("sam-box-multi", needs_sam=True, options={"clip_to_box": True})
    def sam_box_multi(ctx: MethodInput) -> Instances:
        prediction = ctx.engine.predict(ctx.embedding, boxes=ctx.boxes, multimask_output=True)
        return instances_from_prediction(ctx, prediction)

``options`` declares the method's ``--method-option key=value`` settings and their
defaults (values are parsed to the default's type).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from scipy.ndimage import label as connected
from scipy.ndimage import uniform_filter
from scipy.special import expit

from wsseg_fast.logic.knowledge_base import rasterise_polyline
from wsseg_fast.ops.color import rgb_to_lab
from wsseg_fast.reference.box_constraint import box_pixel_bounds
from wsseg_fast.sam.prompting import MIN_ZOOM, zoom_windows


@dataclass
class MethodInput:
    """What a method sees of one image."""

    image: np.ndarray            # RGB uint8 [H, W, 3]
    boxes: np.ndarray            # [N, 4] float32 x0, y0, x1, y1 (original pixels)
    classes: np.ndarray          # [N] class indices (1..C)
    annotations: list[dict]      # the COCO annotations, same order (points, scribbles, ...)
    options: dict
    engine: object = None        # SamEngine, for methods that need SAM
    embedding: object = None     # the image's Embedding, for methods that need SAM
    class_names: tuple = ()      # the dataset's class names, channel 0 the background


class MethodError(ValueError):
    """A method's options or inputs it cannot use (a bad checkpoint, say); one line from the CLI."""


@dataclass
class Instances:
    """``masks`` ``[N, H, W]`` bool, ``classes`` ``[N]``, ``scores`` ``[N]`` float (instance
    confidence), optional ``pixel_scores`` ``[N, H, W]`` float in [0, 1]; overlaps are won
    by the larger ``scores * pixel_scores``."""

    masks: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    pixel_scores: np.ndarray | None = None


@dataclass
class Method:
    name: str
    fn: Callable[[MethodInput], Instances]
    needs_sam: bool
    options: dict = field(default_factory=dict)
    help: str = ""
    needs_boxes: bool = True  # False: prompt-free, it labels images without boxes too


METHODS: dict[str, Method] = {}


def register_method(name: str, *, needs_sam: bool, options: dict | None = None, needs_boxes: bool = True):
    def deco(fn):
        METHODS[name] = Method(name, fn, needs_sam, dict(options or {}), (fn.__doc__ or "").strip().splitlines()[0],
                               needs_boxes)
        return fn

    return deco


def parse_options(method: str, pairs: list[str]) -> dict:
    """``["k=v", ...]`` -> the method's options, typed like their defaults."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; methods: {', '.join(sorted(METHODS))}")
    defaults = METHODS[method].options
    options = dict(defaults)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in defaults:
            known = ", ".join(f"{k}={v}" for k, v in defaults.items()) or "none"
            raise ValueError(f"--method-option {pair!r}: method {method} takes key=value with keys: {known}")
        default = defaults[key]
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"--method-option {key} takes true/false, got {value!r}")
            options[key] = value.lower() in ("true", "1", "yes")
        else:
            try:
                options[key] = type(default)(value)
            except ValueError:
                raise ValueError(f"--method-option {key} takes a {type(default).__name__}, got {value!r}") from None
    return options


def box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    masks = np.zeros((len(boxes), height, width), bool)
    for i, (x0, y0, x1, y1) in enumerate(np.rint(boxes).astype(int)):
        masks[i, max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return masks


@register_method("box", needs_sam=False)
def box_method(ctx: MethodInput) -> Instances:
    """Filled boxes (the baseline); where boxes overlap the smaller box wins."""
    h, w = ctx.image.shape[:2]
    masks = box_masks(ctx.boxes, h, w)
    area = masks.reshape(len(masks), -1).sum(1).astype(np.float64)
    return Instances(masks, ctx.classes, 1.0 - area / (h * w))


def best_candidates(prediction) -> tuple[np.ndarray, np.ndarray]:
    """``[N, H, W]`` logits and ``[N]`` scores of each prompt's best candidate by predicted IoU."""
    logits, scores = prediction.logits.float(), prediction.scores.float()
    best = scores.argmax(1)
    index = torch.arange(len(best))
    return logits[index, best].cpu().numpy(), scores[index, best].cpu().numpy()


def instances_from_prediction(ctx: MethodInput, prediction) -> Instances:
    """SAM's output for N prompts -> instances: the best of the candidate masks by predicted
    IoU, clipped to the prompt box (``clip_to_box``, the object lies inside its box),
    pixel scores = sigmoid(logit). An empty mask falls back to the filled box (``fallback``)."""
    return instances_from_logits(ctx, *best_candidates(prediction))


OUTSIDE_WINDOW_LOGIT = -20.0  # a zoomed box's mask outside its window: certainly not the object


def zoomed_box_predictions(ctx: MethodInput, logits: np.ndarray, scores: np.ndarray, multimask: bool) -> None:
    """Re-decode in place every box whose :func:`zoom_window` enlarges it at least ``zoom_min``
    times on that window, encoded at the model's input size: a thing a few pixels wide in the
    whole image gets up to MAX_ZOOM times the pixels. The windows' embeddings go through the job's cache."""
    windows = zoom_windows(ctx.boxes, *ctx.image.shape[:2], float(ctx.options.get("zoom_min", MIN_ZOOM)))
    crops = [np.ascontiguousarray(ctx.image[y0:y1, x0:x1]) for x0, y0, x1, y1 in windows.values()]
    for i, embedding in zip(windows, ctx.engine.embed(crops, batch_size=8)):
        x0, y0, x1, y1 = windows[i]
        box = ctx.boxes[i : i + 1] - np.array([x0, y0, x0, y0], np.float32)
        crop_logits, crop_scores = best_candidates(ctx.engine.predict(embedding, boxes=box, multimask_output=multimask))
        logits[i] = OUTSIDE_WINDOW_LOGIT
        logits[i, y0:y1, x0:x1] = crop_logits[0]
        scores[i] = crop_scores[0]


def instances_from_logits(ctx: MethodInput, logits: np.ndarray, scores: np.ndarray) -> Instances:
    """``[N, H, W]`` mask logits -> instances (``clip_to_box``, ``fallback`` as above; with
    ``min_score`` a mask whose predicted IoU is below it falls back to its box too)."""

    masks = logits > 0
    h, w = ctx.image.shape[:2]
    if ctx.options.get("clip_to_box", True) and len(ctx.boxes):
        margin = float(ctx.options.get("box_margin", 0))
        grown = ctx.boxes + np.array([-margin, -margin, margin, margin], np.float32)
        masks &= box_masks(grown, h, w)
    if ctx.options.get("fallback", True) and len(ctx.boxes):
        empty = ~masks.reshape(len(masks), -1).any(1)
        min_score = float(ctx.options.get("min_score", 0.0))  # 0: off (an untrained IoU head can go below 0)
        doubted = (np.asarray(scores) < min_score) & (min_score > 0)  # SAM itself expects a poor mask
        masks[empty | doubted] = box_masks(ctx.boxes[empty | doubted], h, w)
    return Instances(masks, ctx.classes, np.asarray(scores, np.float64), expit(logits))


SAM_OPTIONS = {"multimask": False, "clip_to_box": True, "box_margin": 2.0, "fallback": True, "min_score": 0.0}


# zoom_min 2 rather than pre-training's 1.5: on CamVid val boxes zoomed 1.5-2x (cars, mostly) came out
# better on the whole image (docs/pretrain.md)
ZOOM_OPTIONS = {"zoom": False, "zoom_min": 2.0}


@register_method("sam-box", needs_sam=True, options={**SAM_OPTIONS, **ZOOM_OPTIONS})
def sam_box(ctx: MethodInput) -> Instances:
    """SAM prompted with every box of the image in one decoder call (``zoom``: small boxes
    again, each on its own zoomed window -- for a SAM pre-trained with ``--zoom``)."""

    prediction = ctx.engine.predict(ctx.embedding, boxes=ctx.boxes, multimask_output=ctx.options["multimask"])
    logits, scores = best_candidates(prediction)
    if ctx.options["zoom"] and len(ctx.boxes):
        zoomed_box_predictions(ctx, logits, scores, ctx.options["multimask"])
    return instances_from_logits(ctx, logits, scores)


@register_method("sam-point", needs_sam=True, options={**SAM_OPTIONS, "multimask": True, "with_box": False})
def sam_point(ctx: MethodInput) -> Instances:
    """SAM prompted with each object's points (and its box with ``with_box=true``)."""

    per_object = []
    for ann, box in zip(ctx.annotations, ctx.boxes):
        pts = ann.get("points") or [[(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]]  # no point: the box centre
        per_object.append([p[:2] for p in pts])
    k = max((len(p) for p in per_object), default=1)
    points = np.zeros((len(per_object), k, 2), np.float32)
    labels = -np.ones((len(per_object), k), np.int64)  # -1 pads objects with fewer points
    for i, pts in enumerate(per_object):
        points[i, : len(pts)] = pts
        labels[i, : len(pts)] = 1
    prediction = ctx.engine.predict(ctx.embedding, points=points, point_labels=labels,
                                    boxes=ctx.boxes if ctx.options["with_box"] else None,
                                    multimask_output=ctx.options["multimask"])
    return instances_from_prediction(ctx, prediction)


@register_method("sbr", needs_sam=True, options={"clip_to_box": True, "box_margin": 2.0, "fallback": True,
                                                 "colour_refine": True, "colour_ring": 6, "colour_weight": 1.0,
                                                 "sam_clip": 2.0, **ZOOM_OPTIONS})
def sbr(ctx: MethodInput) -> Instances:
    """SAM fine-tuned under the weak-label constraints (--finetuned from wsseg-fast finetune), box prompts, colour-refined."""

    logits, scores = best_candidates(ctx.engine.predict(ctx.embedding, boxes=ctx.boxes))
    if ctx.options["zoom"] and len(ctx.boxes):  # small boxes on their own windows, as sam-box zoom=true
        zoomed_box_predictions(ctx, logits, scores, multimask=False)
    if ctx.options["colour_refine"] and len(ctx.boxes):
        sam_clip = ctx.options["sam_clip"]
        logits = np.clip(logits, -sam_clip, sam_clip) + ctx.options["colour_weight"] * colour_evidence(
            ctx.image, ctx.boxes, ctx.annotations, logits > 0, ring=int(ctx.options["colour_ring"]))
        logits = keep_seeded_components(logits, ctx.boxes, ctx.annotations)
    instances = instances_from_logits(ctx, logits, np.ones(len(logits)))
    # The fine-tuning trains the masks, not SAM's IoU head: where confident masks overlap
    # (a cup inside its disc) the smaller object wins, as in the box baseline.
    h, w = ctx.image.shape[:2]
    area = instances.masks.reshape(len(instances.masks), -1).sum(1).astype(np.float64)
    instances.scores = 1.0 - area / (h * w)
    return instances


# --- colour refinement of box pseudo-labels (CRF-free, from the weak labels only) --------------

COLOUR_CLIP = 8.0  # log-likelihood ratios beyond this say nothing more: caps one texture outlier's vote
SHRINK_SAMPLES = 20.0  # the object's colour spread starts as its surroundings' (same kind of texture)


def box_pixels(boxes: np.ndarray, height: int, width: int, grow: int = 0) -> np.ndarray:
    """``[N, 4]`` int (y0, y1, x0, x1): the pixels of each box as the box constraint reads them
    (:func:`wsseg_fast.reference.box_constraint.box_pixel_bounds`), grown by ``grow`` and clipped to the image."""

    boxes = torch.as_tensor(np.asarray(boxes, np.float64).reshape(-1, 4))
    x0, y0, x1, y1 = box_pixel_bounds(boxes, height, width).numpy().T
    return np.stack([np.maximum(y0 - grow, 0), np.minimum(y1 + grow, height),
                     np.maximum(x0 - grow, 0), np.minimum(x1 + grow, width)], axis=1)


def seed_pixels(annotation: dict, height: int, width: int) -> np.ndarray:
    """``[K, 2]`` (y, x) pixels an annotation marks as its object: its points and its
    scribbles drawn as polylines (as the knowledge base draws them)."""

    xy = [np.asarray(annotation.get("points") or [], np.float64).reshape(-1, 2)]
    for line in annotation.get("scribbles") or []:
        xy.append(rasterise_polyline(torch.tensor(line, dtype=torch.float64).reshape(-1, 2)).numpy())
    xy = np.floor(np.concatenate(xy)).astype(np.int64)
    ok = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
    return np.unique(xy[ok][:, ::-1], axis=0)


def _gaussian_log_density(x: np.ndarray, samples: np.ndarray, prior_cov: np.ndarray | None = None,
                          prior_weight: float = 0.0) -> np.ndarray:
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


def colour_evidence(image: np.ndarray, boxes: np.ndarray, annotations: list[dict], masks: np.ndarray,
                    ring: int = 6) -> np.ndarray:
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
        ratio = (_gaussian_log_density(region, object_colours, texture, SHRINK_SAMPLES)
                 - _gaussian_log_density(region, surroundings))
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


def resolve(instances: Instances, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One class-index map from overlapping instances, and the winning instance of each
    pixel (-1 = background). Each pixel goes to the covering instance with the highest
    ``score * pixel_score`` (ties: the earlier instance)."""

    n = len(instances.masks)
    if n == 0:
        return np.zeros((height, width), np.uint8), -np.ones((height, width), np.int64)
    # Predicted IoUs can be <= 0 (untrained weights): clamp so pixel confidence still orders.
    scores = np.maximum(np.asarray(instances.scores, np.float64), 1e-6)
    strength = np.broadcast_to(scores[:, None, None], (n, height, width)).copy()
    if instances.pixel_scores is not None:
        strength *= instances.pixel_scores
    strength = np.where(instances.masks, strength, -np.inf)
    winner = strength.argmax(0)
    winner[~instances.masks.any(0)] = -1
    label = np.where(winner >= 0, np.asarray(instances.classes)[np.maximum(winner, 0)], 0).astype(np.uint8)
    return label, winner
