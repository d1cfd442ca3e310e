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


METHODS: dict[str, Method] = {}


def register_method(name: str, *, needs_sam: bool, options: dict | None = None):
    def deco(fn):
        METHODS[name] = Method(name, fn, needs_sam, dict(options or {}), (fn.__doc__ or "").strip().splitlines()[0])
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


def _box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    masks = np.zeros((len(boxes), height, width), bool)
    for i, (x0, y0, x1, y1) in enumerate(np.rint(boxes).astype(int)):
        masks[i, max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return masks


@register_method("box", needs_sam=False)
def box_method(ctx: MethodInput) -> Instances:
    """Filled boxes (the baseline); where boxes overlap the smaller box wins."""
    h, w = ctx.image.shape[:2]
    masks = _box_masks(ctx.boxes, h, w)
    area = masks.reshape(len(masks), -1).sum(1).astype(np.float64)
    return Instances(masks, ctx.classes, 1.0 - area / (h * w))


def instances_from_prediction(ctx: MethodInput, prediction) -> Instances:
    """SAM's output for N prompts -> instances: the best of the candidate masks by predicted
    IoU, clipped to the prompt box (``clip_to_box``, the object lies inside its box),
    pixel scores = sigmoid(logit). An empty mask falls back to the filled box (``fallback``)."""
    logits, scores = prediction.logits.float(), prediction.scores.float()
    best = scores.argmax(1)
    index = torch.arange(len(best))
    logits, scores = logits[index, best], scores[index, best]
    masks = (logits > 0).cpu().numpy()
    h, w = ctx.image.shape[:2]
    if ctx.options.get("clip_to_box", True) and len(ctx.boxes):
        margin = float(ctx.options.get("box_margin", 0))
        grown = ctx.boxes + np.array([-margin, -margin, margin, margin], np.float32)
        masks &= _box_masks(grown, h, w)
    if ctx.options.get("fallback", True) and len(ctx.boxes):
        empty = ~masks.reshape(len(masks), -1).any(1)
        masks[empty] = _box_masks(ctx.boxes[empty], h, w)
    return Instances(masks, ctx.classes, scores.cpu().numpy().astype(np.float64),
                     torch.sigmoid(logits).cpu().numpy())


SAM_OPTIONS = {"multimask": False, "clip_to_box": True, "box_margin": 2.0, "fallback": True}


@register_method("sam-box", needs_sam=True, options=SAM_OPTIONS)
def sam_box(ctx: MethodInput) -> Instances:
    """SAM prompted with every box of the image in one decoder call."""
    prediction = ctx.engine.predict(ctx.embedding, boxes=ctx.boxes, multimask_output=ctx.options["multimask"])
    return instances_from_prediction(ctx, prediction)


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


@register_method("sbr", needs_sam=True, options={"clip_to_box": True, "box_margin": 2.0, "fallback": True})
def sbr(ctx: MethodInput) -> Instances:
    """SAM fine-tuned under the weak-label constraints (--finetuned from wsseg-fast finetune), box prompts."""
    instances = instances_from_prediction(ctx, ctx.engine.predict(ctx.embedding, boxes=ctx.boxes))
    # The fine-tuning trains the masks, not SAM's IoU head: where confident masks overlap
    # (a cup inside its disc) the smaller object wins, as in the box baseline.
    h, w = ctx.image.shape[:2]
    area = instances.masks.reshape(len(instances.masks), -1).sum(1).astype(np.float64)
    instances.scores = 1.0 - area / (h * w)
    return instances


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
