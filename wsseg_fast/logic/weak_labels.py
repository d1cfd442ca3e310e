"""What weak annotations say, as formulas: boxes, points and scribbles, image tags.

:func:`parse_images` reads a batch of COCO-style annotations into channels and output pixels;
the builders below turn them into the formulas of a knowledge base (DESIGN of the fuzzy logic):

- boxes: outside the boxes of class c, not c; every row and column of a box holds c (the fused
  box constraint, whose truth is 1 - its loss);
- points and scribbles of class c: ∀x ∈ S: c(x);
- tags: present ∃x c(x), absent ∀x ¬c(x), ∀ over the tags of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from wsseg_fast.fuzzy import negation, pmean, pmean_error
from wsseg_fast.logic.formulas import Formula, Logic
from wsseg_fast.ops.box_constraint import box_constraint_loss


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


@dataclass
class ImageLabels:
    """What the annotations of one image say, in channels and output pixels."""

    boxes: list[list[float]] = field(default_factory=list)  # x0, y0, x1, y1
    box_labels: list[int] = field(default_factory=list)
    points: list[tuple[int, int, int]] = field(default_factory=list)  # (c, y, x)
    scribbles: list[tuple[int, int, int]] = field(default_factory=list)  # (c, y, x)
    present: set[int] = field(default_factory=set)
    absent: set[int] = field(default_factory=set)


def split_images(annotations) -> list:
    """One image (a list of annotation dicts, or a dict with "annotations") or a batch of them."""

    def is_image(item):
        return isinstance(item, Mapping) and ("annotations" in item or "tags" in item or "absent_tags" in item)

    if is_image(annotations):
        return [annotations]
    if not isinstance(annotations, Sequence) or isinstance(annotations, (str, bytes)):
        raise TypeError(
            "compile_knowledge_base: `annotations` must be a list of COCO annotation dicts (one image), "
            "a dict {'annotations': [...], 'tags': [...]} or a list of those (a batch)"
        )
    if annotations and all(isinstance(a, Mapping) and not is_image(a) for a in annotations):
        return [annotations]  # one image's list of annotation dicts
    return list(annotations)


def parse_image(
    index: int, image, scale: tuple[float, float], size: tuple[int, int], channel: Callable[[object, str], int]
) -> ImageLabels:
    """The labels of image ``index`` (its annotations scaled by ``scale`` = (sy, sx) to the
    ``size`` = (H, W) of the maps); ``channel(value, what)`` maps a category or tag to a channel."""
    info = ImageLabels()
    anns = image.get("annotations", []) if isinstance(image, Mapping) else image
    (sy, sx), (height, width) = scale, size

    def pixel(x, y):
        return min(max(int(math.floor(y * sy)), 0), height - 1), min(max(int(math.floor(x * sx)), 0), width - 1)

    for ann in anns:
        if "category_id" not in ann:
            raise ValueError(f"compile_knowledge_base: image {index}: an annotation has no `category_id`: {ann}")
        c = channel(ann["category_id"], "annotations")
        info.present.add(c)
        if ann.get("bbox") is not None:
            x, y, w, h = map(float, ann["bbox"])
            if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
                raise ValueError(f"compile_knowledge_base: image {index}: bad COCO bbox [x, y, w, h] {ann['bbox']}")
            info.boxes.append([x * sx, y * sy, (x + w) * sx, (y + h) * sy])
            info.box_labels.append(c)
        for x, y in ann.get("points") or []:
            info.points.append((c, *pixel(float(x), float(y))))
        for line in ann.get("scribbles") or []:
            for x, y in rasterise_polyline(torch.tensor(line, dtype=torch.float64).reshape(-1, 2)).tolist():
                info.scribbles.append((c, *pixel(x, y)))
    if isinstance(image, Mapping):
        info.present.update(channel(t, "tags") for t in image.get("tags", []))
        info.absent.update(channel(t, "tags") for t in image.get("absent_tags", []))
    return info


def box_tensors(parsed: list[ImageLabels]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``boxes [B, N, 4]`` float64 and ``labels [B, N]`` (-1 pads), or ``None`` without a box."""
    n_boxes = max((len(info.boxes) for info in parsed), default=0)
    if not n_boxes:
        return None
    boxes = torch.zeros(len(parsed), n_boxes, 4, dtype=torch.float64)
    labels = torch.full((len(parsed), n_boxes), -1, dtype=torch.long)
    for b, info in enumerate(parsed):
        if info.boxes:
            boxes[b, : len(info.boxes)] = torch.tensor(info.boxes, dtype=torch.float64)
            labels[b, : len(info.boxes)] = torch.tensor(info.box_labels)
    return boxes, labels


def box_formula(boxes: torch.Tensor, labels: torch.Tensor, logic: Logic) -> Formula:
    """The fused OUT/TIGHT box constraint; its truth is 1 - its loss. Runs inside a
    :class:`~wsseg_fast.logic.KnowledgeBase`, which checks ``probs``."""
    return lambda probs: (
        1.0
        - box_constraint_loss(
            probs,
            boxes.to(probs.device),
            labels.to(probs.device),
            p_forall=logic.p_forall,
            p_exists=logic.p_exists,
            stable=logic.stable,
            check=False,  # the knowledge base checks probs once for all its formulas
            backend=logic.backend,
        )
    )


def seed_formula(parsed: list[ImageLabels], kind: str, logic: Logic) -> Formula | None:
    """∀ x ∈ S: p_c(x) over the ``kind`` (``points`` or ``scribbles``) pixels of the batch."""
    index = [(b, c, y, x) for b, info in enumerate(parsed) for c, y, x in getattr(info, kind)]
    if not index:
        return None
    at = torch.tensor(index, dtype=torch.long).unique(dim=0).T

    def labelled(probs):
        b, c, y, x = at.to(probs.device)
        return pmean_error(probs[b, c, y, x], p=logic.p_forall, stable=logic.stable)

    return labelled


def tag_formulas(parsed: list[ImageLabels], logic: Logic) -> dict[str, Formula]:
    """``tags_present`` (∃x p_c(x)) and ``tags_absent`` (∀x ¬p_c(x)), where the batch has such tags."""
    formulas = {}
    present = [(b, c) for b, info in enumerate(parsed) for c in sorted(info.present)]
    absent = [(b, c) for b, info in enumerate(parsed) for c in sorted(info.absent)]
    if present:
        bi, ci = torch.tensor(present).T

        def tags_present(probs):
            maps = probs[bi.to(probs.device), ci.to(probs.device)]
            return pmean_error(
                pmean(maps, dim=(1, 2), p=logic.p_exists, stable=logic.stable), p=logic.p_forall, stable=logic.stable
            )

        formulas["tags_present"] = tags_present
    if absent:
        ba, ca = torch.tensor(absent).T

        def tags_absent(probs):
            maps = negation(probs[ba.to(probs.device), ca.to(probs.device)])
            return pmean_error(
                pmean_error(maps, dim=(1, 2), p=logic.p_forall, stable=logic.stable),
                p=logic.p_forall,
                stable=logic.stable,
            )

        formulas["tags_absent"] = tags_absent
    return formulas
