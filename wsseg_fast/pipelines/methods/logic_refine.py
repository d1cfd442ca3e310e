"""``logic-refine``: pseudo-labels from the weak labels alone, by optimising each image's
instance masks under its own fuzzy-logic knowledge base — no trained weights needed.

Each box's probability map is optimised with Adam on the box's own crop (crops padded to one
size and batched; nothing of an instance lies outside its box, so that is exact):

- **colour** (the unary): each pixel pulled towards the colour evidence of
  :func:`~wsseg_fast.pipelines.methods.colour.colour_evidence` — a Gaussian of the object's colours
  (fitted to its box, its seeds, or both) against one of the pixels around its box (``colour_ring``;
  -1: the whole image outside it), or (``colour_model=gmm``) a Gaussian mixture of each, fitted by a
  few EM steps to all boxes of the image in one batch, as GrabCut's — plus a **box prior** (objects
  fill much of their box) and a **border prior** (a box's edge is mostly background);
- **boxes** (fused box loss): every row and every column of the box holds some of the
  object (tightness, ∃ with pMean ``p_exists``);
- **seeds**: its points and scribbles are the object (∀, then clamped); mask parts no seed
  touches are dropped;
- **pairwise** (optional, fused pairwise loss): neighbours of similar colour agree;
- **superpixels** (optional): the evidence averaged over SLIC superpixels first;
- **rounds** (optional): the object's colours (``refit=both``: and the background's, as GrabCut)
  refit to its mask, then optimised again;
- **class priors** (optional, ``priors=FILE``, the YAML of ``finetune --priors``): ``contains``,
  ``excludes`` and ``one_class_per_pixel`` couple the instances of an image — each step, the
  classes' truths (the fuzzy OR of their instances) are formed on the pixels the boxes cover,
  and the priors' knowledge base is added to the loss (``prior_weight``);
- **SAM** (``sam-logic-refine``): SAM's box-prompted logits, clipped to ±``sam_clip``, join
  the evidence.

The masks are the logits' sign, or (``finish=graphcut``) per box the exact minimum cut of the
logits plus GrabCut's contrast-sensitive Potts term between neighbours
(:mod:`~wsseg_fast.pipelines.methods.graphcut`). Every term has a weight option, so its
contribution can be measured (set it to 0).
Overlaps go to the smaller box, as for ``box``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit

from wsseg_fast.logic import compile_knowledge_base
from wsseg_fast.logic.priors import Contains, Excludes, OneClassPerPixel, PriorsError, load_priors
from wsseg_fast.ops.box_constraint import box_constraint_loss
from wsseg_fast.ops.color import rgb_to_lab
from wsseg_fast.ops.pairwise_constraint import pairwise_constraint_loss
from wsseg_fast.ops.slic import slic
from wsseg_fast.ops.superpixel_pool import superpixel_pool
from wsseg_fast.pipelines.methods.base import (
    Instances,
    MethodError,
    MethodInput,
    box_masks,
    box_pixels,
    register_method,
)
from wsseg_fast.pipelines.methods.colour import (
    COLOUR_CLIP,
    colour_evidence,
    colour_features,
    keep_seeded_components,
    seed_pixels,
)
from wsseg_fast.pipelines.methods.graphcut import contrast_weights, min_cut

OPTIONS = {
    "scale": 1.0,  # optimise each box at this fraction of its size
    "steps": 40,  # Adam steps
    "lr": 0.5,
    "colour_weight": 0.5,  # weight of the colour unary
    "colour_ring": 6,  # pixels around a box that model its surroundings (-1: the whole image outside the box)
    "colour_model": "gaussian",  # one Gaussian per side ("gaussian") or a mixture of `components` ("gmm")
    "components": 5,  # Gaussians per mixture (colour_model=gmm)
    "em_steps": 5,  # EM steps of the mixtures
    "colour_space": "lab",  # the colours the models see: CIELAB ("lab") or RGB ("rgb")
    "colour_samples": 2048,  # pixels (at most) each mixture is fitted to
    "unmix": False,  # gmm: the object's mixture drops the components its surroundings explain as well
    "object_colour": "box",  # the object's colour model: its whole box, or only its seeds ("seeds")
    "box_weight": 1.0,  # weight of the box constraints (outside + tightness)
    "p_exists": 8.0,  # pMean exponent of tightness: close to max
    "pairwise_weight": 0.0,  # the pairwise colour prior (slow; no gain measured on real photos)
    "seed_weight": 1.0,
    "superpixels": 0,  # SLIC superpixels per image to average the evidence over (0: off)
    "prior": 0.5,  # logit added inside a box: objects fill much of their box
    "sam_weight": 1.0,  # SAM's logits, when the job has SAM
    "sam_clip": 2.0,
    "border": 1.0,  # logit taken off at a box's edge, fading over ~2 px: objects touch their box at few places
    "keep_seeded": True,  # drop mask parts no seed touches
    "finish": "threshold",  # the masks from the logits: their sign ("threshold") or a minimum cut ("graphcut")
    "cut_weight": 1.0,  # graphcut: weight of the contrast-sensitive Potts term between neighbours
    "rounds": 1,  # rounds: later ones refit the colour models to the current masks
    "refit": "object",  # what later rounds refit: the object's model ("object") or both sides' ("both", as GrabCut)
    "priors": "",  # YAML of class priors (contains / excludes / one_class_per_pixel); "" = none
    "prior_weight": 1.0,  # weight of the class priors' knowledge base
}
CHOICES = {  # the text options' values
    "object_colour": ("box", "seeds", "both"),
    "colour_model": ("gaussian", "gmm"),
    "colour_space": ("lab", "rgb"),
    "finish": ("threshold", "graphcut"),
    "refit": ("object", "both"),
}
LEAST = {"components": 1, "em_steps": 0, "colour_samples": 1, "cut_weight": 0.0}  # the numbers' least values
# What of a priors file logic-refine uses: the pairwise prior is `pairwise_weight`, and the
# box prior (`prior`, `border`) stands in for `box_size`.
CLASS_PRIORS = (Contains, Excludes, OneClassPerPixel)


def _class_priors(path: str, class_names: tuple[str, ...]) -> list:
    # Read per image (~1 ms): a cache keyed by path would miss edits to the file.
    try:
        priors = load_priors(path, list(class_names), what="--method-option priors")
    except PriorsError as exc:
        raise MethodError(str(exc)) from None
    return [p for p in priors if isinstance(p, CLASS_PRIORS)]


def check_options(options: dict, class_names: tuple[str, ...]) -> None:
    """The job's check before the first image: the priors file is readable, names the dataset's
    classes and holds no contradiction (:func:`~wsseg_fast.logic.priors.check_priors`)."""
    if options["priors"] and options["prior_weight"]:
        _class_priors(str(options["priors"]), tuple(class_names))


def refine(
    image: np.ndarray,
    boxes: np.ndarray,
    annotations: list[dict],
    options: dict,
    sam_logits: np.ndarray | None = None,
    classes: np.ndarray | None = None,
    class_names: tuple[str, ...] = (),
) -> np.ndarray:
    """``[N, H, W]`` refined logits of the instances of one image (see the module docstring);
    ``classes`` (1..C-1) and ``class_names`` (channel 0 the background) are needed by class priors."""
    for key, allowed in CHOICES.items():
        if options[key] not in allowed:
            raise MethodError(
                f"--method-option {key} must be {' or '.join(repr(a) for a in allowed)}, got {options[key]!r}"
            )
    for key, least in LEAST.items():
        if options[key] < least:
            raise MethodError(f"--method-option {key} must be at least {least}, got {options[key]!r}")
    h, w = image.shape[:2]
    if len(boxes) == 0:
        return np.zeros((0, h, w), np.float32)
    priors = None
    if options["priors"] and options["prior_weight"]:
        if classes is None or not class_names:
            raise MethodError("--method-option priors: class priors need the instances' classes and the class names")
        priors = (
            _class_priors(str(options["priors"]), tuple(class_names)),
            torch.as_tensor(classes, dtype=torch.long),
            list(class_names),
        )
    inside_box = box_masks(boxes, h, w)
    masks = inside_box
    for r in range(max(1, int(options["rounds"]))):  # later rounds refit the colour models to the masks
        off_mask = r > 0 and options["refit"] == "both"
        evidence = _evidence(image, boxes, annotations, masks, inside_box, options, sam_logits, off_mask)
        logits = _optimise(image, boxes, annotations, evidence, options, priors)
        found = (logits > 0).reshape(len(logits), -1).any(1)
        masks = np.where(found[:, None, None], logits > 0, inside_box)
    if options["finish"] == "graphcut":
        logits = _graph_cut(image, boxes, logits, options)
    if options["keep_seeded"]:
        logits = keep_seeded_components(logits, boxes, annotations)
    return logits


def _graph_cut(image: np.ndarray, boxes: np.ndarray, logits: np.ndarray, options: dict) -> np.ndarray:
    """Each box's mask as the minimum cut of its logits (the unary) plus GrabCut's contrast-sensitive Potts term
    (``cut_weight``); the logits keep their size and take the cut's sign."""
    h, w = image.shape[:2]
    right, down = contrast_weights(colour_features(image, options["colour_space"]), options["cut_weight"])
    logits = logits.copy()
    for i, (y0, y1, x0, x1) in enumerate(box_pixels(boxes, h, w)):
        if y1 > y0 and x1 > x0:
            unary = logits[i, y0:y1, x0:x1]
            cut = min_cut(unary, right[y0:y1, x0 : x1 - 1], down[y0 : y1 - 1, x0:x1])
            logits[i, y0:y1, x0:x1] = np.where(cut, np.maximum(unary, 1e-3), np.minimum(unary, -1e-3))
    return logits


def _evidence(image, boxes, annotations, masks, inside_box, options, sam_logits, off_mask=False) -> np.ndarray:
    """``[N, H, W]`` the unary's logits: colour evidence (object colours from ``masks`` or the seeds),
    SAM's clipped logits, optionally averaged over superpixels."""
    n, ring = len(boxes), int(options["colour_ring"])
    kinds = ("box", "seeds") if options["object_colour"] == "both" else (options["object_colour"],)
    model = {
        "model": options["colour_model"],
        "components": int(options["components"]),
        "em_steps": int(options["em_steps"]),
        "space": options["colour_space"],
        "samples": int(options["colour_samples"]),
        "off_mask": off_mask,
        "unmix": bool(options["unmix"]),
    }
    evidence = sum(
        colour_evidence(image, boxes, annotations if kind == "seeds" else [{}] * n, masks, ring=ring, **model)
        for kind in kinds
    ) / len(kinds)
    evidence = options["colour_weight"] * evidence
    if sam_logits is not None and options["sam_weight"]:
        clip = options["sam_clip"]
        evidence = evidence + options["sam_weight"] * np.clip(sam_logits, -clip, clip) * inside_box
    if options["superpixels"]:
        rgb = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
        pooled = superpixel_pool(torch.from_numpy(evidence)[None], slic(rgb, int(options["superpixels"])))[0].numpy()
        evidence = np.where(inside_box, pooled, evidence)
    return evidence


def _crop(t: torch.Tensor, box: tuple[int, int, int, int], size: tuple[int, int]) -> torch.Tensor:
    """``t[..., y0:y1, x0:x1]`` resized (bilinear) to ``size``."""
    y0, y1, x0, x1 = box
    return F.interpolate(t[..., y0:y1, x0:x1], size=size, mode="bilinear", align_corners=False)


def _optimise(image, boxes, annotations, evidence, options, priors=None) -> np.ndarray:
    """Adam on each box's logits under the box, seed and pairwise constraints, and the class
    ``priors`` (``(priors dict, classes, class names)`` or None) (see the module docstring)."""
    h, w = image.shape[:2]
    n = len(boxes)
    rgb = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    # Each instance is optimised on its own box, scaled by `scale`; the crops are padded to one
    # size and batched (nothing of an instance lies outside its box, so nothing is lost).
    bounds = box_pixels(boxes, h, w)
    sizes = [
        (max(1, round((y1 - y0) * options["scale"])), max(1, round((x1 - x0) * options["scale"])))
        for y0, y1, x0, x1 in bounds
    ]
    hm, wm = max(s[0] for s in sizes), max(s[1] for s in sizes)
    lab_full = rgb_to_lab(rgb)
    target = torch.zeros(n, 1, hm, wm)
    lab = torch.zeros(n, 3, hm, wm)
    inside = torch.zeros(n, 1, hm, wm, dtype=torch.bool)
    seeds = torch.zeros(n, 1, hm, wm, dtype=torch.bool)
    crop_boxes = torch.zeros(n, 1, 4)
    for i, ((y0, y1, x0, x1), (hc, wc)) in enumerate(zip(bounds, sizes)):
        if y1 <= y0 or x1 <= x0:
            continue
        box = (y0, y1, x0, x1)
        target[i, :, :hc, :wc] = _crop(torch.from_numpy(evidence[i])[None, None], box, (hc, wc))[0] - options[
            "border"
        ] * _edge_falloff(y1 - y0, x1 - x0, hc, wc)
        lab[i, :, :hc, :wc] = _crop(lab_full, box, (hc, wc))[0]
        inside[i, :, :hc, :wc] = True
        crop_boxes[i, 0] = torch.tensor([0.0, 0.0, wc, hc])
        yx = seed_pixels(annotations[i], h, w) if i < len(annotations) else np.zeros((0, 2), np.int64)
        yx = yx[(yx[:, 0] >= y0) & (yx[:, 0] < y1) & (yx[:, 1] >= x0) & (yx[:, 1] < x1)]
        sy, sx = hc / (y1 - y0), wc / (x1 - x0)
        seeds[
            i,
            0,
            np.minimum(((yx[:, 0] - y0) * sy).astype(int), hc - 1),
            np.minimum(((yx[:, 1] - x0) * sx).astype(int), wc - 1),
        ] = True
    target = target + options["prior"]  # the unary's logit: evidence plus a prior for inside the box
    z = target.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=options["lr"])
    unary = torch.sigmoid(target)
    labels = torch.zeros(n, 1, dtype=torch.long)
    coupling = _Coupling(priors, bounds, h, w) if priors is not None and priors[0] else None
    for _ in range(int(options["steps"])):
        p = torch.where(inside, torch.sigmoid(z), torch.zeros_like(z))  # nothing outside the box: exact
        loss = options["colour_weight"] * F.binary_cross_entropy(p[inside], unary[inside])
        if options["box_weight"]:
            loss = loss + options["box_weight"] * box_constraint_loss(
                p, crop_boxes, labels, p_exists=options["p_exists"]
            )
        if options["pairwise_weight"]:
            loss = loss + options["pairwise_weight"] * pairwise_constraint_loss(p, lab=lab)
        if options["seed_weight"] and seeds.any():
            loss = loss + options["seed_weight"] * (1 - p[seeds]).mean()
        if coupling is not None:
            loss = loss + options["prior_weight"] * coupling.loss(z, sizes)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    logits = np.full((n, h, w), -COLOUR_CLIP, np.float32)
    with torch.no_grad():
        z = torch.where(seeds, torch.full_like(z, COLOUR_CLIP), z)
        for i, ((y0, y1, x0, x1), (hc, wc)) in enumerate(zip(bounds, sizes)):
            if y1 > y0 and x1 > x0:
                back = F.interpolate(
                    z[i : i + 1, :, :hc, :wc], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False
                )
                logits[i, y0:y1, x0:x1] = back[0, 0].numpy()
    return logits


class _Coupling:
    """The class priors over the pixels that some box covers (elsewhere every instance is 0 and
    every prior holds). Each class's truth is the fuzzy OR of its instances, as
    :func:`~wsseg_fast.logic.class_truths`, but summed sparsely: one ``index_add`` over the boxes'
    pixels, not one full map per instance."""

    def __init__(self, priors, bounds, h: int, w: int):
        rules, classes, names = priors
        covered = np.zeros((h, w), bool)
        for y0, y1, x0, x1 in bounds:
            covered[y0:y1, x0:x1] = True
        pixel = np.full((h, w), -1, np.int64)
        pixel[covered] = np.arange(int(covered.sum()))
        self.pixels, self.num_classes, self.bounds = int(covered.sum()), len(names), bounds
        # where each box's pixels land in the flat [C * P] class map
        self.index = torch.from_numpy(
            np.concatenate(
                [
                    int(c) * self.pixels + pixel[y0:y1, x0:x1].ravel()
                    for c, (y0, y1, x0, x1) in zip(classes.tolist(), bounds)
                ]
            )
        )
        self.kb = compile_knowledge_base(
            {"annotations": []}, len(names), (self.pixels, 1), priors=rules, class_names=names
        )

    def loss(self, z: torch.Tensor, sizes) -> torch.Tensor:
        crops = []
        for i, ((y0, y1, x0, x1), (hc, wc)) in enumerate(zip(self.bounds, sizes)):
            crop = z[i : i + 1, :, :hc, :wc]
            if (hc, wc) != (y1 - y0, x1 - x0):  # scaled crops: back to the box's pixels
                crop = F.interpolate(crop, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
            crops.append(F.logsigmoid(-crop).reshape(-1))  # log(1 - p)
        miss = z.new_zeros(self.num_classes * self.pixels).index_add(0, self.index, torch.cat(crops))
        miss = miss.view(self.num_classes, self.pixels)
        truths = torch.cat([miss.sum(0, keepdim=True).exp(), 1 - miss[1:].exp()])  # background: no instance
        return self.kb(truths[None, :, :, None])[0]


def _edge_falloff(height: int, width: int, hc: int, wc: int, fade: float = 2.0) -> torch.Tensor:
    """``[hc, wc]``: exp(-d / fade) of each pixel's distance d (in original pixels) to the nearest edge of
    a ``height`` x ``width`` box sampled at ``hc`` x ``wc``."""
    y = (torch.arange(hc, dtype=torch.float32) + 0.5) * height / hc
    x = (torch.arange(wc, dtype=torch.float32) + 0.5) * width / wc
    d = torch.minimum(torch.minimum(y, height - y)[:, None], torch.minimum(x, width - x)[None, :]) - 0.5
    return torch.exp(-d / fade)


def _instances(ctx: MethodInput, logits: np.ndarray) -> Instances:
    h, w = ctx.image.shape[:2]
    masks = logits > 0
    area = box_masks(ctx.boxes, h, w).reshape(len(masks), -1).sum(1).astype(np.float64)
    return Instances(masks, ctx.classes, 1.0 - area / (h * w), expit(logits))


@register_method("logic-refine", needs_sam=False, options=OPTIONS, check=check_options, files=("priors",))
def logic_refine(ctx: MethodInput) -> Instances:
    """Weight-free: each image's instance masks optimised under its own knowledge base (boxes, seeds, colour,
    pairwise)."""
    return _instances(
        ctx,
        refine(ctx.image, ctx.boxes, ctx.annotations, ctx.options, classes=ctx.classes, class_names=ctx.class_names),
    )


@register_method("sam-logic-refine", needs_sam=True, options=OPTIONS, check=check_options, files=("priors",))
def sam_logic_refine(ctx: MethodInput) -> Instances:
    """``logic-refine`` with SAM's box-prompted logits as one more term (--checkpoint, optionally --finetuned)."""
    prediction = ctx.engine.predict(ctx.embedding, boxes=ctx.boxes)
    sam_logits = prediction.logits[:, 0].float().cpu().numpy()
    return _instances(
        ctx, refine(ctx.image, ctx.boxes, ctx.annotations, ctx.options, sam_logits, ctx.classes, ctx.class_names)
    )
