"""Knowledge bases: weighted fuzzy constraints on a batch of class-probability maps,
compiled from weak annotations (boxes, points, scribbles, image tags) and priors.

A constraint is a closed formula: a function of ``probs [B, C, H, W]`` returning a
scalar truth in [0, 1]. The loss of a knowledge base is ``1 - SatAgg`` (weighted
pMeanError, p = 2, over the constraints' truths), as in LTN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from wsseg_fast.fuzzy import (
    and_prod,
    implies_reichenbach,
    negation,
    pi_1,
    pmean,
    pmean_error,
    sat_agg,
)
from wsseg_fast.ops.box_constraint import box_constraint_loss
from wsseg_fast.ops.color import rgb_to_lab
from wsseg_fast.ops.pairwise_constraint import pairwise_constraint_loss
from wsseg_fast.reference.box_constraint import box_pixel_bounds

Formula = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Constraint:
    name: str
    formula: Formula
    weight: float = 1.0


class KnowledgeBase:
    """Weighted constraints; ``kb(probs) -> (1 - SatAgg, {name: satisfaction})``.

    Add your own formulas written with the operators of :mod:`wsseg_fast.fuzzy`; they run as
    plain autograd::

        kb.add("cup implies disc", lambda p: forall(implies_reichenbach(p[:, 2], p[:, 1])))
    """

    def __init__(self, *, p: float = 2.0, stable: bool = True, batch_size: int | None = None,
                 num_classes: int | None = None, image_size: tuple[int, int] | None = None):
        self.constraints: list[Constraint] = []
        self.p, self.stable = p, stable
        self.batch_size, self.num_classes = batch_size, num_classes
        self.image_size = tuple(image_size) if image_size is not None else None

    def add(self, name: str, formula: Formula, weight: float = 1.0) -> "KnowledgeBase":
        if not callable(formula):
            raise TypeError(f"KnowledgeBase.add: `formula` must be callable(probs) -> truth, got {type(formula)}")
        if not weight >= 0:
            raise ValueError(f"KnowledgeBase.add: `weight` must be >= 0, got {weight}")
        if any(c.name == name for c in self.constraints):
            raise ValueError(f"KnowledgeBase.add: a constraint named {name!r} exists already")
        self.constraints.append(Constraint(name, formula, float(weight)))
        return self

    def __len__(self) -> int:
        return len(self.constraints)

    def names(self) -> list[str]:
        return [c.name for c in self.constraints]

    def _check(self, probs: torch.Tensor) -> torch.Tensor:
        if not isinstance(probs, torch.Tensor) or not probs.is_floating_point():
            raise TypeError("KnowledgeBase: `probs` must be a floating-point tensor of truth values")
        if probs.dim() == 3 and self.batch_size in (None, 1):
            probs = probs.unsqueeze(0)  # one image
        expected = (self.batch_size, self.num_classes, *(self.image_size or (None, None)))
        if probs.dim() != 4 or any(e is not None and e != s for e, s in zip(expected, probs.shape)):
            shape = ", ".join("?" if e is None else str(e) for e in expected)
            raise ValueError(f"KnowledgeBase: `probs` must have shape [B, C, H, W] = [{shape}], got {tuple(probs.shape)}")
        return probs

    def truths(self, probs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each constraint's truth (differentiable)."""
        probs = self._check(probs)
        return {c.name: c.formula(probs) for c in self.constraints if c.weight > 0}

    def __call__(self, probs: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss = 1 - SatAgg, each constraint's satisfaction as a float, for logging)."""
        truths = self.truths(probs)
        if not truths:
            return (self._check(probs) * 0).sum(), {}
        values = torch.stack([t.reshape(()) for t in truths.values()])
        weights = torch.tensor([c.weight for c in self.constraints if c.weight > 0], dtype=values.dtype,
                               device=values.device)
        loss = 1.0 - sat_agg(values, weights, p=self.p, stable=self.stable)
        return loss, {name: float(v) for name, v in zip(truths, values.detach())}


# --- instance masks as class truths -----------------------------------------------------------

def class_truths(instance_logits: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[N, H, W]`` instance mask logits of one image, their ``[N]`` class indices (1..C-1)
    -> ``[C, H, W]`` truth values: class c = any of its instances (product t-conorm,
    ``1 - prod(1 - p)``), background (0) = no instance."""
    miss = torch.nn.functional.logsigmoid(-instance_logits)  # log(1 - p), stable
    miss_by_class = instance_logits.new_zeros((num_classes, *instance_logits.shape[1:]))
    miss_by_class = miss_by_class.index_add(0, classes, miss)
    truths = 1 - miss_by_class.exp()
    truths[0] = miss.sum(0).exp()
    return truths


# --- compiling weak annotations ----------------------------------------------------------------

def rasterise_polyline(polyline: torch.Tensor) -> torch.Tensor:
    """[P, 2] (x, y) vertices -> the (x, y) points along each segment, one per pixel step."""
    if len(polyline) == 1:
        return polyline
    pieces = []
    for a, b in zip(polyline[:-1], polyline[1:]):
        steps = int(math.ceil(float((b - a).abs().max()))) + 1
        t = torch.linspace(0, 1, steps, dtype=polyline.dtype).unsqueeze(1)
        pieces.append(a + t * (b - a))
    return torch.cat(pieces)


class _Image:
    """What the annotations of one image say, in channels and output pixels."""

    def __init__(self):
        self.boxes: list[list[float]] = []
        self.box_labels: list[int] = []
        self.points: list[tuple[int, int, int]] = []     # (c, y, x)
        self.scribbles: list[tuple[int, int, int]] = []  # (c, y, x)
        self.present: set[int] = set()
        self.absent: set[int] = set()


def _split(annotations) -> list:
    """One image (a list of annotation dicts, or a dict with "annotations") or a batch of them."""

    def is_image(item):
        return isinstance(item, Mapping) and ("annotations" in item or "tags" in item or "absent_tags" in item)

    if is_image(annotations):
        return [annotations]
    if not isinstance(annotations, Sequence) or isinstance(annotations, (str, bytes)):
        raise TypeError("compile_knowledge_base: `annotations` must be a list of COCO annotation dicts (one image), "
                        "a dict {'annotations': [...], 'tags': [...]} or a list of those (a batch)")
    if annotations and all(isinstance(a, Mapping) and not is_image(a) for a in annotations):
        return [annotations]  # one image's list of annotation dicts
    return list(annotations)


def compile_knowledge_base(annotations, num_classes: int, image_size: tuple[int, int], *,
                           priors: Mapping | None = None, images: torch.Tensor | None = None,
                           class_names: Sequence[str] | None = None, weights: Mapping[str, float] | None = None,
                           category_map: Mapping[int, int] | None = None,
                           annotation_size: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
                           exhaustive: bool = False, background: int | None = None,
                           p_forall: float = 2.0, p_exists: float = 2.0, stable: bool = True,
                           backend: str = "auto") -> KnowledgeBase:
    """A :class:`KnowledgeBase` for a batch of images from their weak annotations.

    Args:
        annotations: per image, COCO-style annotation dicts: ``bbox`` [x, y, w, h], ``category_id``,
            optional ``points`` [[x, y], ...] and ``scribbles`` [[[x, y], ...], ...]; an annotation
            with only ``category_id`` is an image tag. An image may also be a dict
            ``{"annotations": [...], "tags": [ids or names], "absent_tags": [...]}``. Pass one image
            (its list or dict) or a list of images (a batch, in the order of ``probs``).
        num_classes: C, the channels of ``probs``.
        image_size: (H, W) of ``probs``.
        priors: ``{"contains": [(a, b), ...]}`` (a -> b: a lies inside b), ``"excludes": [(a, b)]``
            (¬(a ∧ b)), ``"one_class_per_pixel": True``, ``"box_size": (rho_lo, rho_hi)``
            (rho_lo·|box| ≤ Σ_box p ≤ rho_hi·|box|), ``"pairwise": {...}`` (keyword arguments of
            :func:`pairwise_constraint_loss`, or False to turn it off). Classes by channel or name.
        images: ``[B, 3, H, W]`` RGB at ``image_size``: adds the pairwise colour prior.
        class_names: channel names, to refer to classes by name in tags and priors.
        weights: per constraint name (``boxes``, ``points``, ``scribbles``, ``tags_present``,
            ``tags_absent``, ``contains``, ``excludes``, ``one_class_per_pixel``, ``box_size``,
            ``pairwise``) or full name (``contains[cup->disc]``); default 1.
        category_map: COCO ``category_id`` -> channel (default: the id is the channel).
        annotation_size: (H0, W0) of the annotated images (one, or one per image) when it
            differs from ``image_size``: coordinates are scaled.
        exhaustive: every class that an image does not mention is absent (COCO boxes are
            exhaustive), except ``background``.
        p_forall, p_exists, stable: quantifier exponents and LTN's projections.
        backend: backend of the fused box and pairwise losses.
    """
    height, width = map(int, image_size)
    priors = dict(priors or {})
    weights = dict(weights or {})
    names = list(class_names) if class_names is not None else None
    per_image = _split(annotations)
    batch = len(per_image)
    sizes = annotation_size if annotation_size is not None else (height, width)
    if isinstance(sizes[0], (int, float)):
        sizes = [sizes] * batch
    if len(sizes) != batch:
        raise ValueError(f"compile_knowledge_base: `annotation_size` has {len(sizes)} sizes for {batch} images")

    def channel(value, what: str) -> int:
        if isinstance(value, str):
            if names is None or value not in names:
                raise ValueError(f"compile_knowledge_base: unknown class name {value!r} in {what} (class_names={names})")
            return names.index(value)
        c = int(value)
        if category_map is not None and what in ("annotations", "tags"):
            if c not in category_map:
                raise ValueError(f"compile_knowledge_base: category_id {c} is not in `category_map`")
            c = int(category_map[c])
        if not 0 <= c < num_classes:
            raise ValueError(f"compile_knowledge_base: class {value!r} in {what} is not a channel in [0, {num_classes})")
        return c

    def name_of(c: int) -> str:
        return names[c] if names is not None else str(c)

    parsed = []
    for i, image in enumerate(per_image):
        info = _Image()
        anns = image.get("annotations", []) if isinstance(image, Mapping) else image
        tags = image.get("tags", []) if isinstance(image, Mapping) else []
        absent = image.get("absent_tags", []) if isinstance(image, Mapping) else []
        sy, sx = height / float(sizes[i][0]), width / float(sizes[i][1])

        def pixel(x, y):
            return min(max(int(math.floor(y * sy)), 0), height - 1), min(max(int(math.floor(x * sx)), 0), width - 1)

        for ann in anns:
            if "category_id" not in ann:
                raise ValueError(f"compile_knowledge_base: image {i}: an annotation has no `category_id`: {ann}")
            c = channel(ann["category_id"], "annotations")
            info.present.add(c)
            if ann.get("bbox") is not None:
                x, y, w, h = map(float, ann["bbox"])
                if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
                    raise ValueError(f"compile_knowledge_base: image {i}: bad COCO bbox [x, y, w, h] {ann['bbox']}")
                info.boxes.append([x * sx, y * sy, (x + w) * sx, (y + h) * sy])
                info.box_labels.append(c)
            for x, y in ann.get("points") or []:
                info.points.append((c, *pixel(float(x), float(y))))
            for line in ann.get("scribbles") or []:
                for x, y in rasterise_polyline(torch.tensor(line, dtype=torch.float64).reshape(-1, 2)).tolist():
                    info.scribbles.append((c, *pixel(x, y)))
        info.present.update(channel(t, "tags") for t in tags)
        info.absent.update(channel(t, "tags") for t in absent)
        if exhaustive:
            info.absent.update(c for c in range(num_classes) if c not in info.present and c != background)
        if info.present & info.absent:
            raise ValueError(f"compile_knowledge_base: image {i}: classes {sorted(info.present & info.absent)} "
                             "are both present and absent")
        parsed.append(info)

    kb = KnowledgeBase(p=2.0, stable=stable, batch_size=batch, num_classes=num_classes, image_size=(height, width))

    def weight(kind: str, full: str | None = None) -> float:
        return float(weights.get(full, weights.get(kind, 1.0)) if full else weights.get(kind, 1.0))

    # Boxes: the fused OUT/TIGHT constraint (its truth is 1 - its loss).
    n_boxes = max((len(info.boxes) for info in parsed), default=0)
    if n_boxes:
        boxes = torch.zeros(batch, n_boxes, 4, dtype=torch.float64)
        labels = torch.full((batch, n_boxes), -1, dtype=torch.long)
        for b, info in enumerate(parsed):
            if info.boxes:
                boxes[b, : len(info.boxes)] = torch.tensor(info.boxes, dtype=torch.float64)
                labels[b, : len(info.boxes)] = torch.tensor(info.box_labels)

        def box_truth(probs, boxes=boxes, labels=labels):
            return 1.0 - box_constraint_loss(probs, boxes.to(probs.device), labels.to(probs.device), p_forall=p_forall,
                                             p_exists=p_exists, stable=stable, backend=backend)

        kb.add("boxes", box_truth, weight("boxes"))
        if priors.get("box_size"):
            kb.add("box_size", _box_size_formula(boxes, labels, *priors["box_size"], p_forall, stable),
                   weight("box_size"))

    # Points and scribbles: ∀ x ∈ S: p_c(x).
    for kind in ("points", "scribbles"):
        index = [(b, c, y, x) for b, info in enumerate(parsed) for c, y, x in getattr(info, kind)]
        if index:
            at = torch.tensor(index, dtype=torch.long).unique(dim=0).T

            def labelled(probs, at=at):
                b, c, y, x = at.to(probs.device)
                return pmean_error(probs[b, c, y, x], p=p_forall, stable=stable)

            kb.add(kind, labelled, weight(kind))

    # Tags: present ∃x p_c(x), absent ∀x ¬p_c(x); ∀ over the tags of the batch.
    present = [(b, c) for b, info in enumerate(parsed) for c in sorted(info.present)]
    absent = [(b, c) for b, info in enumerate(parsed) for c in sorted(info.absent)]
    if present:
        bi, ci = torch.tensor(present).T

        def tags_present(probs, bi=bi, ci=ci):
            maps = probs[bi.to(probs.device), ci.to(probs.device)]
            return pmean_error(pmean(maps, dim=(1, 2), p=p_exists, stable=stable), p=p_forall, stable=stable)

        kb.add("tags_present", tags_present, weight("tags_present"))
    if absent:
        ba, ca = torch.tensor(absent).T

        def tags_absent(probs, ba=ba, ca=ca):
            maps = negation(probs[ba.to(probs.device), ca.to(probs.device)])
            return pmean_error(pmean_error(maps, dim=(1, 2), p=p_forall, stable=stable), p=p_forall, stable=stable)

        kb.add("tags_absent", tags_absent, weight("tags_absent"))

    # Priors given as data.
    for a, b in priors.get("contains", []):
        ca, cb = channel(a, "priors"), channel(b, "priors")
        full = f"contains[{name_of(ca)}->{name_of(cb)}]"
        kb.add(full, lambda probs, ca=ca, cb=cb: pmean_error(implies_reichenbach(probs[:, ca], probs[:, cb], stable),
                                                            p=p_forall, stable=stable), weight("contains", full))
    for a, b in priors.get("excludes", []):
        ca, cb = channel(a, "priors"), channel(b, "priors")
        full = f"excludes[{name_of(ca)},{name_of(cb)}]"
        kb.add(full, lambda probs, ca=ca, cb=cb: pmean_error(negation(and_prod(probs[:, ca], probs[:, cb], stable)),
                                                            p=p_forall, stable=stable), weight("excludes", full))
    if priors.get("one_class_per_pixel"):
        kb.add("one_class_per_pixel", lambda probs: _one_class_per_pixel(probs, p_forall, stable),
               weight("one_class_per_pixel"))
    pairwise = priors.get("pairwise", {})
    if images is not None and pairwise is not False:
        if images.shape[0] != batch or tuple(images.shape[-2:]) != (height, width):
            raise ValueError(f"compile_knowledge_base: `images` must be [B={batch}, 3, {height}, {width}], "
                             f"got {tuple(images.shape)}")

        lab = rgb_to_lab(images)  # once: the range check reads data
        options = dict(pairwise if isinstance(pairwise, Mapping) else {})

        def pairwise_truth(probs, lab=lab):
            return 1.0 - pairwise_constraint_loss(probs, lab=lab.to(probs.device), stable=stable, backend=backend,
                                                  **options)

        kb.add("pairwise", pairwise_truth, weight("pairwise"))
    return kb


def _one_class_per_pixel(probs: torch.Tensor, p: float, stable: bool) -> torch.Tensor:
    """∀x ∀ c < c': ¬(p_c(x) ∧ p_c'(x)), one class at a time to keep memory at [B, C, H, W]."""

    classes = probs.shape[1]
    if classes < 2:
        return probs.new_ones(())
    total = probs.new_zeros(())
    count = 0
    for c in range(classes - 1):
        truth = negation(and_prod(probs[:, c : c + 1], probs[:, c + 1 :], stable))
        if stable:
            truth = pi_1(truth)
        total = total + ((1.0 - truth) ** p).sum()
        count += truth.numel()
    return 1.0 - (total / count) ** (1.0 / p)


def _box_size_formula(boxes: torch.Tensor, labels: torch.Tensor, rho_lo: float, rho_hi: float, p: float,
                      stable: bool) -> Formula:
    """∀ boxes: rho_lo <= mean_box p_c <= rho_hi, as min(1, m / rho_lo) · min(1, (1 - m) / (1 - rho_hi))."""
    if not 0 <= rho_lo <= rho_hi <= 1:
        raise ValueError(f"compile_knowledge_base: `box_size` must be (rho_lo, rho_hi) with 0 <= lo <= hi <= 1, "
                         f"got {(rho_lo, rho_hi)}")

    def formula(probs: torch.Tensor) -> torch.Tensor:
        bounds = box_pixel_bounds(boxes, probs.shape[2], probs.shape[3])
        truths = []
        for b, k in (labels >= 0).nonzero().tolist():
            x0, y0, x1, y1 = bounds[b, k].tolist()
            if x1 <= x0 or y1 <= y0:
                continue
            m = probs[b, int(labels[b, k]), y0:y1, x0:x1].mean()
            lo = torch.clamp(m / rho_lo, max=1.0) if rho_lo > 0 else torch.ones_like(m)
            hi = torch.clamp((1.0 - m) / (1.0 - rho_hi), max=1.0) if rho_hi < 1 else torch.ones_like(m)
            truths.append(lo * hi)
        if not truths:
            return probs.new_ones(())
        return pmean_error(torch.stack(truths), p=p, stable=stable)

    return formula
