"""What every pseudo-label method shares: its input, its output, the registry, and the
resolution of overlapping instances into one class-index map.

A method is a function registered with :func:`register_method` that turns one image's weak
labels (and, if it needs SAM, its cached embedding) into scored instance masks; the job
resolves them into one map. To add one (in a module of :mod:`wsseg_fast.pipelines.methods`,
imported by its ``__init__``)::

    @register_method("sam-box-multi", needs_sam=True, options={"clip_to_box": True})
    def sam_box_multi(ctx: MethodInput) -> Instances:
        prediction = ctx.engine.predict(ctx.embedding, boxes=ctx.boxes, multimask_output=True)
        return instances_from_prediction(ctx, prediction)

``options`` declares the method's ``--method-option key=value`` settings and their
defaults (values are parsed to the default's type). ``check(options, class_names)``, if given,
runs once before any image is labelled (a file an option names, read against the dataset's
classes): its ``MethodError`` stops the job before SAM is built or anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from wsseg_fast.errors import UserError
from wsseg_fast.reference.box_constraint import box_pixel_bounds


@dataclass
class MethodInput:
    """What a method sees of one image."""

    image: np.ndarray  # RGB uint8 [H, W, 3]
    boxes: np.ndarray  # [N, 4] float32 x0, y0, x1, y1 (original pixels)
    classes: np.ndarray  # [N] class indices (1..C)
    annotations: list[dict]  # the COCO annotations, same order (points, scribbles, ...)
    options: dict
    engine: object = None  # SamEngine, for methods that need SAM
    embedding: object = None  # the image's Embedding, for methods that need SAM
    class_names: tuple = ()  # the dataset's class names, channel 0 the background


class MethodError(UserError):
    """A method's options or inputs it cannot use (a bad checkpoint, say); one line from the CLI."""


@dataclass
class Instances:
    """``masks`` ``[N, H, W]`` bool, ``classes`` ``[N]``, ``scores`` ``[N]`` float (instance
    confidence), optional ``pixel_scores`` ``[N, H, W]`` float in [0, 1]; overlaps are won
    by the larger ``scores * pixel_scores``. ``class_scores`` ``[num_classes, H, W]`` in [0, 1]: a
    method's soft per-class map (the CAM methods'), which the job saves as ``OUT/soft/<stem>.npz``
    for a student head with a sigmoid loss."""

    masks: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    pixel_scores: np.ndarray | None = None
    class_scores: np.ndarray | None = None


@dataclass
class Method:
    name: str
    fn: Callable[[MethodInput], Instances]
    needs_sam: bool
    options: dict = field(default_factory=dict)
    help: str = ""
    needs_boxes: bool = True  # False: prompt-free, it labels images without boxes too
    check: Callable[[dict, tuple], None] | None = None  # (options, class names) -> None, before the first image
    files: tuple[str, ...] = ()  # options naming a file the outputs depend on (a model, priors): kept by digest


METHODS: dict[str, Method] = {}


def register_method(
    name: str, *, needs_sam: bool, options: dict | None = None, needs_boxes: bool = True, check=None, files=()
):
    def deco(fn):
        summary = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())  # the first paragraph
        METHODS[name] = Method(name, fn, needs_sam, dict(options or {}), summary, needs_boxes, check, tuple(files))
        return fn

    return deco


def parse_options(method: str, given: Mapping[str, object] | Iterable[str] = ()) -> dict:
    """The method's options: its defaults updated by ``given`` (``"key=value"`` strings or a
    mapping); text values are parsed to the default's type, others must have it."""
    if method not in METHODS:
        raise MethodError(f"unknown method {method!r}; methods: {', '.join(sorted(METHODS))}")
    defaults = METHODS[method].options
    known = ", ".join(f"{k}={v}" for k, v in defaults.items()) or "none"
    pairs = given.items() if isinstance(given, Mapping) else [str(p).partition("=")[::2] for p in given]
    options = dict(defaults)
    texts = [f"{k}={v}" for k, v in given.items()] if isinstance(given, Mapping) else given
    for (key, value), text in zip(pairs, texts):
        if key not in defaults or not (isinstance(given, Mapping) or "=" in text):
            raise MethodError(f"--method-option {text!r}: method {method} takes key=value with keys: {known}")
        options[key] = _option_value(key, value, defaults[key])
    return options


def _option_value(key: str, value, default):
    """``value`` of option ``key`` as the type of its ``default``."""
    kind = type(default)
    if not isinstance(value, str):
        if isinstance(value, kind) or (kind is float and isinstance(value, int) and not isinstance(value, bool)):
            return kind(value)
        raise MethodError(f"--method-option {key} takes a {kind.__name__}, got {value!r}")
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise MethodError(f"--method-option {key} takes true/false, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    try:
        return kind(value)
    except ValueError:
        raise MethodError(f"--method-option {key} takes a {kind.__name__}, got {value!r}") from None


def box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    masks = np.zeros((len(boxes), height, width), bool)
    for i, (x0, y0, x1, y1) in enumerate(np.rint(boxes).astype(int)):
        masks[i, max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return masks


def box_pixels(boxes: np.ndarray, height: int, width: int, grow: int = 0) -> np.ndarray:
    """``[N, 4]`` int (y0, y1, x0, x1): the pixels of each box as the box constraint reads them
    (:func:`wsseg_fast.reference.box_constraint.box_pixel_bounds`), grown by ``grow`` and clipped to the image."""

    boxes = torch.as_tensor(np.asarray(boxes, np.float64).reshape(-1, 4))
    x0, y0, x1, y1 = box_pixel_bounds(boxes, height, width).numpy().T
    return np.stack(
        [
            np.maximum(y0 - grow, 0),
            np.minimum(y1 + grow, height),
            np.maximum(x0 - grow, 0),
            np.minimum(x1 + grow, width),
        ],
        axis=1,
    )


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
