"""Domain priors: one dataclass per kind of rule, each with its own small compiler.

::

    Contains("cup", "disc")      # every cup pixel is a disc pixel: ∀x cup(x) → disc(x)
    Excludes("rod", "ring")      # never both at one pixel: ∀x ¬(rod(x) ∧ ring(x))
    OneClassPerPixel()           # ∀x ∀c≠c': ¬(c(x) ∧ c'(x))
    BoxSize(0.2, 0.95)           # ρ_lo·|box| ≤ Σ_box p ≤ ρ_hi·|box| for every box
    Pairwise(threshold=0.3)      # neighbours of similar colour share a label (options of
                                 # pairwise_constraint_loss); Pairwise(enabled=False) turns it off

Classes are given by name or channel. A knowledge base takes a list of them
(:func:`wsseg_fast.logic.compile_knowledge_base`); :func:`load_priors` reads the YAML (or JSON)
file of ``finetune --priors`` and of ``logic-refine``'s ``priors=`` option::

    contains: [[cup, disc]]
    excludes: [[rod, ring]]
    pairwise: true
    box_size: [0.2, 0.95]

Priors that name an unknown class or that no map can satisfy are refused before anything is
optimised (:func:`check_priors`, one line naming the clauses): ``contains`` and ``excludes`` of one
pair, or of classes that one class lies inside by a chain of ``contains`` (that class could only be
empty); ``contains`` together with ``one_class_per_pixel`` (an inner pixel would be two classes at
once); ``excludes`` of a class with itself; cycles of ``contains`` between different classes.

``contains`` is for maps that hold a class per channel, such as the fuzzy OR of instance masks
(:func:`~wsseg_fast.logic.class_truths`), where a disc's mask covers its cup. In a map that holds one
class per pixel, nesting is expressed without ``contains``: the inner class is a class of its own
and the outer class keeps the pixels around it (the disc's rim), so ``one_class_per_pixel`` alone
states it; the whole outer object is the union of the two classes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from wsseg_fast.errors import UserError
from wsseg_fast.fuzzy import and_prod, implies_reichenbach, negation, pi_1, pmean_error
from wsseg_fast.logic.formulas import Formula, Logic
from wsseg_fast.ops.pairwise_constraint import pairwise_constraint_loss
from wsseg_fast.reference.box_constraint import box_pixel_bounds

PRIOR_KEYS = ("contains", "excludes", "one_class_per_pixel", "pairwise", "box_size")


class PriorsError(UserError):
    """Priors that cannot be read or used, or that contradict each other; one line from the CLI."""


@dataclass(frozen=True)
class Contains:
    """Every pixel of ``inner`` is a pixel of ``outer``: ∀x inner(x) → outer(x) (Reichenbach)."""

    inner: str | int
    outer: str | int
    kind = "contains"

    def name(self, name_of) -> str:
        return f"contains[{name_of(self.inner)}->{name_of(self.outer)}]"

    def formula(self, channel, logic: Logic, **_) -> Formula:
        a, b = channel(self.inner), channel(self.outer)
        return lambda probs: pmean_error(
            implies_reichenbach(probs[:, a], probs[:, b], logic.stable), p=logic.p_forall, stable=logic.stable
        )


@dataclass(frozen=True)
class Excludes:
    """Never both classes at one pixel: ∀x ¬(first(x) ∧ second(x)) (product t-norm)."""

    first: str | int
    second: str | int
    kind = "excludes"

    def name(self, name_of) -> str:
        return f"excludes[{name_of(self.first)},{name_of(self.second)}]"

    def formula(self, channel, logic: Logic, **_) -> Formula:
        a, b = channel(self.first), channel(self.second)
        return lambda probs: pmean_error(
            negation(and_prod(probs[:, a], probs[:, b], logic.stable)), p=logic.p_forall, stable=logic.stable
        )


@dataclass(frozen=True)
class OneClassPerPixel:
    """No pixel is two classes: ∀x ∀c < c': ¬(c(x) ∧ c'(x))."""

    kind = "one_class_per_pixel"

    def name(self, name_of) -> str:
        return self.kind

    def formula(self, channel, logic: Logic, **_) -> Formula:
        return lambda probs: one_class_per_pixel(probs, logic.p_forall, logic.stable)


@dataclass(frozen=True)
class BoxSize:
    """Objects fill between ``low`` and ``high`` of their box: ∀ boxes, low <= mean_box p_c <= high,
    as min(1, m / low) · min(1, (1 - m) / (1 - high))."""

    low: float
    high: float
    kind = "box_size"

    def __post_init__(self):
        if not 0 <= self.low <= self.high <= 1:
            raise PriorsError(
                f"box_size must be [rho_lo, rho_hi] with 0 <= rho_lo <= rho_hi <= 1, got {[self.low, self.high]}"
            )

    def name(self, name_of) -> str:
        return self.kind

    def formula(self, channel, logic: Logic, boxes=None, labels=None, **_) -> Formula | None:
        if boxes is None:  # no box in the batch: nothing to constrain
            return None
        return lambda probs: box_size_truth(probs, boxes, labels, self.low, self.high, logic.p_forall, logic.stable)


@dataclass(frozen=True)
class Pairwise:
    """Neighbours of similar colour share a label (:func:`pairwise_constraint_loss` with
    ``options``). On by default whenever the knowledge base is given the images."""

    options: Mapping = field(default_factory=dict)
    enabled: bool = True
    kind = "pairwise"

    def name(self, name_of) -> str:
        return self.kind

    def formula(self, channel, logic: Logic, lab=None, **_) -> Formula | None:
        if lab is None or not self.enabled:
            return None
        options = dict(self.options)
        return lambda probs: (
            1.0
            - pairwise_constraint_loss(  # check=False: the knowledge base checks probs, lab comes from checked images
                probs, lab=lab.to(probs.device), stable=logic.stable, check=False, backend=logic.backend, **options
            )
        )


Prior = Contains | Excludes | OneClassPerPixel | BoxSize | Pairwise
ORDER = (BoxSize, Contains, Excludes, OneClassPerPixel, Pairwise)  # the order their constraints are added


def one_class_per_pixel(probs: torch.Tensor, p: float, stable: bool) -> torch.Tensor:
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


def box_size_truth(
    probs: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, low: float, high: float, p: float, stable: bool
) -> torch.Tensor:
    """The truth of :class:`BoxSize` over the valid boxes ``[B, N, 4]`` (labels -1: padding)."""
    bounds = box_pixel_bounds(boxes, probs.shape[2], probs.shape[3])
    truths = []
    for b, k in (labels >= 0).nonzero().tolist():
        x0, y0, x1, y1 = bounds[b, k].tolist()
        if x1 <= x0 or y1 <= y0:
            continue
        m = probs[b, int(labels[b, k]), y0:y1, x0:x1].mean()
        lo = torch.clamp(m / low, max=1.0) if low > 0 else torch.ones_like(m)
        hi = torch.clamp((1.0 - m) / (1.0 - high), max=1.0) if high < 1 else torch.ones_like(m)
        truths.append(lo * hi)
    if not truths:
        return probs.new_ones(())
    return pmean_error(torch.stack(truths), p=p, stable=stable)


def _pairs(mapping: Mapping, key: str) -> list[tuple]:
    pairs = mapping.get(key) or []
    if not isinstance(pairs, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise PriorsError(f"{key} must be a list of [class, class] pairs, got {pairs!r}")
    return [tuple(p) for p in pairs]


def as_priors(priors: Sequence[Prior] | Mapping | None) -> list[Prior]:
    """Typed priors from a list of them or the mapping of a priors file (``None``: none)."""
    if priors is None:
        return []
    if not isinstance(priors, Mapping):
        return list(priors)
    unknown = sorted(set(priors) - set(PRIOR_KEYS))
    if unknown:
        raise PriorsError(f"unknown prior kinds {unknown}; known: {', '.join(PRIOR_KEYS)}")
    out: list[Prior] = [Contains(a, b) for a, b in _pairs(priors, "contains")]
    out += [Excludes(a, b) for a, b in _pairs(priors, "excludes")]
    if priors.get("one_class_per_pixel"):
        out.append(OneClassPerPixel())
    size = priors.get("box_size")
    if size is not None:
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, (int, float)) for v in size)):
            raise PriorsError(f"box_size must be [rho_lo, rho_hi] with 0 <= rho_lo <= rho_hi <= 1, got {size!r}")
        out.append(BoxSize(*map(float, size)))
    pairwise = priors.get("pairwise")
    if pairwise is False:
        out.append(Pairwise(enabled=False))
    elif isinstance(pairwise, Mapping):
        out.append(Pairwise(dict(pairwise)))
    return out


def check_priors(priors: Sequence[Prior], channel: Callable[[object], int], name_of: Callable[[int], str]) -> None:
    """Refuse priors that name an unknown class or that no map can satisfy (see the module
    docstring): a ``PriorsError`` of one line naming the clauses. ``channel`` turns a class name or
    id into a channel (a ``PriorsError`` for an unknown one), ``name_of`` a channel into its name."""
    for prior in priors:  # unknown classes first: the checks below compare channels
        for value in _classes_named(prior):
            try:
                channel(value)
            except PriorsError as exc:
                raise PriorsError(f"{prior.name(str)}: {exc}") from None

    def said(prior) -> str:
        return prior.name(lambda c: name_of(channel(c)))

    excludes = [p for p in priors if isinstance(p, Excludes)]
    for e in excludes:
        if channel(e.first) == channel(e.second):
            raise PriorsError(
                f"{said(e)} says a class is never itself: {name_of(channel(e.first))} could only be empty"
            )
    nested = [p for p in priors if isinstance(p, Contains) and channel(p.inner) != channel(p.outer)]
    if nested and any(isinstance(p, OneClassPerPixel) for p in priors):
        inside, around = name_of(channel(nested[0].inner)), name_of(channel(nested[0].outer))
        raise PriorsError(
            f"{_listed([said(c) for c in nested])} and one_class_per_pixel contradict each other: a {inside} pixel "
            f"would be {inside} and {around} at once; with one class per pixel, drop contains ({inside} is a class of "
            f"its own, {around} keeps the pixels around it)"
        )
    outer: dict[int, list[tuple[int, Contains]]] = {}
    for c in nested:
        outer.setdefault(channel(c.inner), []).append((channel(c.outer), c))
    for start in outer:
        chains = _containers(start, outer)
        if start in chains:
            raise PriorsError(
                f"{_listed([said(c) for c in chains[start]])} form a cycle: classes inside each other would be "
                "one class; keep one direction"
            )
        chains[start] = []
        for e in excludes:
            a, b = channel(e.first), channel(e.second)
            if a in chains and b in chains:
                clauses = list(dict.fromkeys([*chains[a], *chains[b]]))
                raise PriorsError(
                    f"{_listed([said(c) for c in [*clauses, e]])} contradict each other: a {name_of(start)} pixel "
                    f"would be both {name_of(a)} and {name_of(b)}, so {name_of(start)} could only be empty"
                )


def _classes_named(prior: Prior) -> tuple:
    if isinstance(prior, Contains):
        return (prior.inner, prior.outer)
    if isinstance(prior, Excludes):
        return (prior.first, prior.second)
    return ()


def _containers(start: int, outer: dict[int, list[tuple[int, Contains]]]) -> dict[int, list[Contains]]:
    """Every class that ``start`` lies inside by a chain of contains (``start`` itself only through a
    cycle), with the clauses of the shortest chain."""
    found: dict[int, list[Contains]] = {}
    queue = [(start, [])]
    while queue:
        inner, chain = queue.pop(0)
        for container, clause in outer.get(inner, []):
            if container not in found:
                found[container] = [*chain, clause]
                queue.append((container, found[container]))
    return found


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def load_priors(path: str | os.PathLike | None, class_names: list[str], what: str = "--priors") -> list[Prior]:
    """The priors file at ``path`` (the format of the module docstring), checked against
    ``class_names`` (channel 0 is the background) and for contradictions. ``None``: no priors.
    Errors name ``what``, the option the path came from."""
    if path is None:
        return []
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PriorsError(f"{what}: cannot read {path}: {exc}") from None
    try:
        mapping = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise PriorsError(f"{what}: {path} is not valid YAML: {exc}") from None
    if not isinstance(mapping, dict):
        raise PriorsError(f"{what}: {path} must hold a mapping, got {type(mapping).__name__}")
    if mapping.get("pairwise") is True:
        mapping["pairwise"] = {}
    try:
        priors = as_priors(mapping)
        check_priors(priors, lambda c: _named_channel(c, class_names), lambda c: class_names[c])
    except PriorsError as exc:
        raise PriorsError(f"{what}: {path}: {exc}") from None
    return priors


def _named_channel(value, class_names: list[str]) -> int:
    if value not in class_names[1:]:
        raise PriorsError(f"unknown class {value!r}; the classes are {class_names[1:]}")
    return class_names.index(value)
