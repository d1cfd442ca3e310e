"""Knowledge bases: weighted fuzzy constraints on a batch of class-probability maps,
compiled from weak annotations (boxes, points, scribbles, image tags) and priors.

A constraint is a closed formula: a function of ``probs [B, C, H, W]`` returning a
scalar truth in [0, 1]. The loss of a knowledge base is ``1 - SatAgg`` (weighted
pMeanError, p = 2, over the constraints' truths), as in LTN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from wsseg_fast.fuzzy import check_truth_values, sat_agg
from wsseg_fast.logic.formulas import Formula, Logic
from wsseg_fast.logic.priors import ORDER, BoxSize, Pairwise, Prior, PriorsError, as_priors, check_priors
from wsseg_fast.logic.weak_labels import (
    ImageLabels,
    box_formula,
    box_tensors,
    parse_image,
    seed_formula,
    split_images,
    tag_formulas,
)
from wsseg_fast.ops.color import rgb_to_lab


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

    def __init__(
        self,
        *,
        p: float = 2.0,
        stable: bool = True,
        batch_size: int | None = None,
        num_classes: int | None = None,
        image_size: tuple[int, int] | None = None,
    ):
        self.constraints: list[Constraint] = []
        self.p, self.stable = p, stable
        self.batch_size, self.num_classes = batch_size, num_classes
        self.image_size = tuple(image_size) if image_size is not None else None

    def add(self, name: str, formula: Formula, weight: float = 1.0) -> KnowledgeBase:
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
            raise ValueError(
                f"KnowledgeBase: `probs` must have shape [B, C, H, W] = [{shape}], got {tuple(probs.shape)}"
            )
        return probs

    def truths(self, probs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each constraint's truth (differentiable).

        ``probs`` are checked once, for every formula, by one reduction over them
        (:func:`~wsseg_fast.fuzzy.check_truth_values`): a value more than 1e-3 outside [0, 1]
        raises ``ValueError`` naming ``probs`` (not while ``torch.compile`` traces), and a NaN
        anywhere in ``probs`` makes every truth, and so the loss, NaN."""
        probs = self._check(probs)
        guard = check_truth_values(probs, "KnowledgeBase")
        return {c.name: c.formula(probs) + guard for c in self.constraints if c.weight > 0}

    def __call__(self, probs: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss = 1 - SatAgg, each constraint's satisfaction as a float, for logging); the checks
        of :meth:`truths`."""
        truths = self.truths(probs)
        if not truths:
            return (self._check(probs) * 0).sum(), {}
        values = torch.stack([t.reshape(()) for t in truths.values()])
        weights = torch.tensor(
            [c.weight for c in self.constraints if c.weight > 0], dtype=values.dtype, device=values.device
        )
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


class ClassSpace:
    """The channels of ``probs``: their names, and the COCO ``category_id`` of each (``category_map``)."""

    def __init__(
        self, num_classes: int, names: Sequence[str] | None = None, category_map: Mapping[int, int] | None = None
    ):
        self.num_classes, self.category_map = num_classes, category_map
        self.names = list(names) if names is not None else None

    def channel(self, value, what: str = "priors") -> int:
        """The channel of a class name, or of an id (a COCO category id for annotations and tags)."""
        if isinstance(value, str):
            if self.names is None or value not in self.names:
                raise PriorsError(f"unknown class name {value!r} in {what} (class_names={self.names})")
            return self.names.index(value)
        c = int(value)
        if self.category_map is not None and what in ("annotations", "tags"):
            if c not in self.category_map:
                raise ValueError(f"compile_knowledge_base: category_id {c} is not in `category_map`")
            c = int(self.category_map[c])
        if not 0 <= c < self.num_classes:
            where = f"class {value!r} in {what} is not a channel in [0, {self.num_classes})"
            raise PriorsError(where) if what == "priors" else ValueError(f"compile_knowledge_base: {where}")
        return c

    def name_of(self, value) -> str:
        c = self.channel(value)
        return self.names[c] if self.names is not None else str(c)


def _parse(
    per_image: list,
    image_size: tuple[int, int],
    annotation_size,
    classes: ClassSpace,
    exhaustive: bool,
    background: int | None,
) -> list[ImageLabels]:
    height, width = image_size
    sizes = annotation_size if annotation_size is not None else (height, width)
    if isinstance(sizes[0], (int, float)):
        sizes = [sizes] * len(per_image)
    if len(sizes) != len(per_image):
        raise ValueError(
            f"compile_knowledge_base: `annotation_size` has {len(sizes)} sizes for {len(per_image)} images"
        )
    parsed = []
    for i, (image, size) in enumerate(zip(per_image, sizes)):
        info = parse_image(
            i, image, (height / float(size[0]), width / float(size[1])), (height, width), classes.channel
        )
        if exhaustive:
            info.absent.update(c for c in range(classes.num_classes) if c not in info.present and c != background)
        if info.present & info.absent:
            raise ValueError(
                f"compile_knowledge_base: image {i}: classes {sorted(info.present & info.absent)} "
                "are both present and absent"
            )
        parsed.append(info)
    return parsed


def _pairwise_colours(images: torch.Tensor | None, rules: list[Prior], shape: tuple[int, int, int]):
    """The images in CIELAB for the pairwise prior (``None`` when it is off); adds the default
    :class:`Pairwise` to ``rules`` when images are given and no prior configures it."""
    if images is None or any(isinstance(p, Pairwise) and not p.enabled for p in rules):
        return None
    batch, height, width = shape
    if images.shape[0] != batch or tuple(images.shape[-2:]) != (height, width):
        raise ValueError(
            f"compile_knowledge_base: `images` must be [B={batch}, 3, {height}, {width}], got {tuple(images.shape)}"
        )
    if not any(isinstance(p, Pairwise) for p in rules):
        rules.append(Pairwise())  # on by default with images
    return rgb_to_lab(images)  # once: the range check reads data


def compile_knowledge_base(
    annotations,
    num_classes: int,
    image_size: tuple[int, int],
    *,
    priors: Sequence[Prior] | Mapping | None = None,
    images: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    weights: Mapping[str, float] | None = None,
    category_map: Mapping[int, int] | None = None,
    annotation_size: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
    exhaustive: bool = False,
    background: int | None = None,
    p_forall: float = 2.0,
    p_exists: float = 2.0,
    stable: bool = True,
    backend: str = "auto",
) -> KnowledgeBase:
    """A :class:`KnowledgeBase` for a batch of images from their weak annotations.

    Args:
        annotations: per image, COCO-style annotation dicts: ``bbox`` [x, y, w, h], ``category_id``,
            optional ``points`` [[x, y], ...] and ``scribbles`` [[[x, y], ...], ...]; an annotation
            with only ``category_id`` is an image tag. An image may also be a dict
            ``{"annotations": [...], "tags": [ids or names], "absent_tags": [...]}``. Pass one image
            (its list or dict) or a list of images (a batch, in the order of ``probs``).
        num_classes: C, the channels of ``probs``.
        image_size: (H, W) of ``probs``.
        priors: :mod:`wsseg_fast.logic.priors` (``[Contains("cup", "disc"), OneClassPerPixel(), ...]``),
            or the mapping of a priors file (``{"contains": [("cup", "disc")], ...}``). Classes by channel
            or name. Priors no map can satisfy are refused (:func:`~wsseg_fast.logic.priors.check_priors`).
        images: ``[B, 3, H, W]`` RGB at ``image_size``: adds the pairwise colour prior (unless
            ``Pairwise(enabled=False)`` is among the priors).
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
    weights = dict(weights or {})
    classes = ClassSpace(num_classes, class_names, category_map)
    logic = Logic(p_forall, p_exists, stable, backend)
    parsed = _parse(split_images(annotations), (height, width), annotation_size, classes, exhaustive, background)
    rules = as_priors(priors)
    check_priors(rules, classes.channel, classes.name_of)  # one clear error before anything is built
    kb = KnowledgeBase(
        p=2.0, stable=stable, batch_size=len(parsed), num_classes=num_classes, image_size=(height, width)
    )

    def add(name: str, formula: Formula | None, kind: str | None = None) -> None:
        if formula is not None:
            kb.add(name, formula, float(weights.get(name, weights.get(kind or name, 1.0))))

    boxes = box_tensors(parsed)
    if boxes is not None:
        add("boxes", box_formula(*boxes, logic))
    lab = _pairwise_colours(images, rules, (len(parsed), height, width))
    box_args = dict(zip(("boxes", "labels"), boxes)) if boxes is not None else {}
    rules = sorted(rules, key=lambda p: ORDER.index(type(p)))
    for prior in [p for p in rules if isinstance(p, BoxSize)]:  # with the boxes, before the seeds
        add(prior.name(classes.name_of), prior.formula(classes.channel, logic, **box_args), prior.kind)
    for kind in ("points", "scribbles"):
        add(kind, seed_formula(parsed, kind, logic))
    for name, formula in tag_formulas(parsed, logic).items():
        add(name, formula)
    for prior in [p for p in rules if not isinstance(p, BoxSize)]:
        add(prior.name(classes.name_of), prior.formula(classes.channel, logic, lab=lab), prior.kind)
    return kb
