"""SAM prompted with the weak labels: ``sam-box`` (every box of an image in one decoder call),
``sam-point`` (its points) and ``sbr`` (a SAM fine-tuned under the constraints, colour-refined)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import expit

from wsseg_fast.pipelines.methods.base import Instances, MethodInput, box_masks, register_method
from wsseg_fast.pipelines.methods.colour import colour_evidence, keep_seeded_components
from wsseg_fast.sam.prompting import MIN_ZOOM, zoom_windows


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
    prediction = ctx.engine.predict(
        ctx.embedding,
        points=points,
        point_labels=labels,
        boxes=ctx.boxes if ctx.options["with_box"] else None,
        multimask_output=ctx.options["multimask"],
    )
    return instances_from_prediction(ctx, prediction)


@register_method(
    "sbr",
    needs_sam=True,
    options={
        "clip_to_box": True,
        "box_margin": 2.0,
        "fallback": True,
        "colour_refine": True,
        "colour_ring": 6,
        "colour_weight": 1.0,
        "sam_clip": 2.0,
        **ZOOM_OPTIONS,
    },
)
def sbr(ctx: MethodInput) -> Instances:
    """SAM fine-tuned under the weak-label constraints (--finetuned from wsseg-fast finetune), box prompts,
    colour-refined."""

    logits, scores = best_candidates(ctx.engine.predict(ctx.embedding, boxes=ctx.boxes))
    if ctx.options["zoom"] and len(ctx.boxes):  # small boxes on their own windows, as sam-box zoom=true
        zoomed_box_predictions(ctx, logits, scores, multimask=False)
    if ctx.options["colour_refine"] and len(ctx.boxes):
        sam_clip = ctx.options["sam_clip"]
        logits = np.clip(logits, -sam_clip, sam_clip) + ctx.options["colour_weight"] * colour_evidence(
            ctx.image, ctx.boxes, ctx.annotations, logits > 0, ring=int(ctx.options["colour_ring"])
        )
        logits = keep_seeded_components(logits, ctx.boxes, ctx.annotations)
    instances = instances_from_logits(ctx, logits, np.ones(len(logits)))
    # The fine-tuning trains the masks, not SAM's IoU head: where confident masks overlap
    # (a cup inside its disc) the smaller object wins, as in the box baseline.
    h, w = ctx.image.shape[:2]
    area = instances.masks.reshape(len(instances.masks), -1).sum(1).astype(np.float64)
    instances.scores = 1.0 - area / (h * w)
    return instances
