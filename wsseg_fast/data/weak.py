"""Weak labels from dense masks: the data to measure weak supervision on real photos.

A dataset with dense ground truth becomes a COCO file of weak labels — per instance a
box, ``k`` interior points, one scribble (a stroke of touching pixels along the
object's skeleton) and the instance's RLE mask (``segmentation``, for scoring and for
promptable pre-training only) — plus image tags and a class-index ground-truth PNG per
image (``gt/<stem>.png``: 0 background, 1..K the chosen classes, 255 ignore).

Instances are the connected components (8-connected) of each chosen class in a
class-index map, or the objects of an instance map (PASCAL VOC's
``SegmentationObject``). Components smaller than ``min_area`` get no weak label, so
their pixels are marked ignore in the ground truth: no method could know of them.

Layouts (``LAYOUTS``):

- ``camvid``: ``ROOT/<split>/*.png`` images and ``ROOT/<split>annot/*.png`` class maps
  (0–10 = sky … bicyclist, 11 = void), as in the SegNet tutorial's ``CamVid/`` folder;
- ``voc``: ``ROOT/JPEGImages``, ``ROOT/SegmentationClass``, ``ROOT/SegmentationObject``
  and ``ROOT/ImageSets/Segmentation/<split>.txt`` (255 = void);
- ``generic``: ``ROOT/images`` and ``ROOT/labels`` (class-index PNGs named by image
  stem), optionally ``ROOT/instances`` (instance-index PNGs, 0 = none).

Deterministic for a seed: the same input and settings give the same bytes.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage
from skimage.morphology import skeletonize

from wsseg_fast.data.coco import decode_segmentation
from wsseg_fast.data.labels import IGNORE, write_label_png
from wsseg_fast.errors import UserError
from wsseg_fast.io import atomic_write_bytes, atomic_write_json

CAMVID_CLASSES = [
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
]
CAMVID_VOID = 11
CAMVID_THINGS = ["pole", "sign", "car", "pedestrian", "bicyclist"]
VOC_CLASSES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class WeakLabelError(UserError):
    """The dense-mask source cannot be converted (missing folders, unknown classes, bad maps)."""


# -- weak labels of one mask -----------------------------------------------------------------


def mask_bbox(mask: np.ndarray) -> list[int]:
    """COCO ``[x, y, w, h]`` of a non-empty boolean mask (whole pixels)."""
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE (JSON-ready) of a boolean mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def skeleton_strokes(skeleton: np.ndarray) -> list[list[tuple[int, int]]]:
    """The pixels of a skeleton as strokes of ``(y, x)``: walks along 8-connected neighbours,
    starting from an end (a pixel with one neighbour) when there is one, so consecutive
    pixels of a stroke touch and the polyline through them stays on the skeleton."""
    remaining = {(int(y), int(x)) for y, x in np.argwhere(skeleton)}
    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]

    def neighbours(p):
        return [(p[0] + dy, p[1] + dx) for dy, dx in steps if (p[0] + dy, p[1] + dx) in remaining]

    strokes = []
    while remaining:
        ends = sorted(p for p in remaining if len(neighbours(p)) <= 1)
        p = ends[0] if ends else min(remaining)
        stroke = []
        while p is not None:
            remaining.discard(p)
            stroke.append(p)
            nxt = neighbours(p)
            # 4-neighbours first: a diagonal step would skip the pixel next to it
            nxt.sort(key=lambda q: (abs(q[0] - p[0]) + abs(q[1] - p[1]), q))
            p = nxt[0] if nxt else None
        strokes.append(stroke)
    return strokes


def weak_labels(
    mask: np.ndarray, rng: np.random.Generator | None = None, *, points: int = 1, scribble: str = "skeleton"
) -> tuple[list, list]:
    """Points and scribbles (``[x, y]`` lists) a person could have drawn on ``mask``.

    The first point is the pixel deepest inside the mask; further points are drawn (with
    ``rng``) from the pixels at least half as deep. ``scribble="skeleton"`` gives the whole
    skeleton as strokes of touching pixels (polylines that stay on the object, through
    holes and thin tips); ``"short"`` one stroke, the middle half of the longest."""
    depth = ndimage.distance_transform_edt(mask)
    py, px = np.unravel_index(int(np.argmax(depth)), depth.shape)
    chosen = [[int(px), int(py)]]
    if points > 1:
        deep = np.argwhere(depth >= max(1.0, 0.5 * float(depth.max())))
        picks = rng.choice(len(deep), size=min(points - 1, len(deep)), replace=False)
        chosen += [[int(x), int(y)] for y, x in deep[np.sort(picks)]]
    strokes = [[[x, y] for y, x in stroke] for stroke in skeleton_strokes(skeletonize(mask))]
    if scribble == "short" and strokes:
        longest = max(strokes, key=len)
        n = len(longest)
        strokes = [longest[n // 4 : max(n // 4 + 2, n - n // 4)]]
    elif scribble not in ("skeleton", "short"):
        raise ValueError(f"weak_labels: scribble must be 'skeleton' or 'short', got {scribble!r}")
    return chosen, strokes or [chosen[:1]]


def components(label: np.ndarray, class_value: int) -> list[np.ndarray]:
    """The 8-connected components of ``label == class_value``, largest first."""
    parts, n = ndimage.label(label == class_value, structure=np.ones((3, 3), bool))
    masks = [parts == i for i in range(1, n + 1)]
    return sorted(masks, key=lambda m: -int(m.sum()))


# -- sources ----------------------------------------------------------------------------------


@dataclass
class Sample:
    image: Path
    label: Path  # class-index map
    instances: Path | None = None  # instance-index map (VOC), else components are the instances


def _stems(directory: Path) -> dict[str, Path]:
    if not directory.is_dir():
        raise WeakLabelError(f"not a directory: {directory}")
    return {p.stem: p for p in sorted(directory.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def camvid_samples(root: Path, split: str) -> list[Sample]:
    images, labels = _stems(root / split), _stems(root / f"{split}annot")
    missing = sorted(set(images) - set(labels))
    if missing:
        raise WeakLabelError(f"{root / (split + 'annot')}: no label map for {len(missing)} images, e.g. {missing[0]}")
    return [Sample(images[s], labels[s]) for s in images]


def voc_samples(root: Path, split: str) -> list[Sample]:
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise WeakLabelError(f"no split file {listing}")
    stems = [s.strip() for s in listing.read_text().split() if s.strip()]
    return [
        Sample(
            root / "JPEGImages" / f"{s}.jpg",
            root / "SegmentationClass" / f"{s}.png",
            root / "SegmentationObject" / f"{s}.png",
        )
        for s in stems
    ]


def generic_samples(root: Path, split: str | None = None) -> list[Sample]:
    images, labels = _stems(root / "images"), _stems(root / "labels")
    instances = _stems(root / "instances") if (root / "instances").is_dir() else {}
    missing = sorted(set(images) - set(labels))
    if missing:
        raise WeakLabelError(f"{root / 'labels'}: no label map for {len(missing)} images, e.g. {missing[0]}")
    return [Sample(images[s], labels[s], instances.get(s)) for s in images]


LAYOUTS = {"camvid": camvid_samples, "voc": voc_samples, "generic": generic_samples}
DEFAULT_CLASSES = {"camvid": CAMVID_CLASSES, "voc": VOC_CLASSES}
DEFAULT_VOID = {"camvid": CAMVID_VOID, "voc": 255}


def _read_map(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise WeakLabelError(f"{path}: a label map must be a palette or greyscale PNG, got mode {im.mode}")
            return np.array(im).astype(np.int64)
    except OSError as exc:
        raise WeakLabelError(f"cannot read {path}: {exc}") from None


def resolve_classes(things: list[str] | str, class_names: list[str]) -> list[int]:
    """Class values (indices into ``class_names``) of ``things``: names, integer values, or ``"all"``."""
    if things == "all" or things == ["all"]:
        return [i for i, name in enumerate(class_names) if name != "background"]
    values = []
    for thing in things:
        if thing in class_names:
            values.append(class_names.index(thing))
        elif str(thing).isdigit() and int(thing) < len(class_names):
            values.append(int(thing))
        else:
            raise WeakLabelError(f"unknown class {thing!r}; classes: {', '.join(class_names)}")
    if len(set(values)) != len(values):
        raise WeakLabelError(f"a class is named twice in {things}")
    return values


def make_weak(
    out: str | os.PathLike,
    samples: list[Sample],
    class_names: list[str],
    things: list[str] | str,
    *,
    void: int | None = None,
    min_area: int = 64,
    points: int = 1,
    scribble: str = "short",
    seed: int = 0,
    description: str = "",
) -> dict:
    """Write the weak-label dataset under ``out`` (``annotations.json``, ``images/``, ``gt/``);
    returns a summary. The categories are ``things`` in the order given (ids 1..K)."""
    if min_area < 1 or points < 1:
        raise WeakLabelError(f"min_area and points must be >= 1, got {min_area} and {points}")
    if not samples:
        raise WeakLabelError("no images to convert")
    values = resolve_classes(things, class_names)
    out = Path(out)
    coco = {
        "info": {"description": description or "wsseg_fast weak labels from dense masks"},
        "categories": [{"id": i + 1, "name": class_names[v]} for i, v in enumerate(values)],
        "images": [],
        "annotations": [],
    }
    skipped = 0
    for index, sample in enumerate(samples):
        rng = np.random.default_rng([seed, index])
        image, instances, gt = _weak_sample(index, sample, values, void, min_area, points, scribble, rng)
        skipped += sum(instance is None for instance in instances)
        for instance in instances:
            if instance is not None:
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, **instance})
        atomic_write_bytes(out / "images" / image["file_name"], sample.image.read_bytes())
        write_label_png(out / "gt" / f"{sample.image.stem}.png", gt)
        coco["images"].append(image)
    atomic_write_json(out / "annotations.json", coco)
    return {
        "images": len(coco["images"]),
        "instances": len(coco["annotations"]),
        "too_small": skipped,
        "categories": [c["name"] for c in coco["categories"]],
    }


def _weak_sample(
    index: int, sample: Sample, values: list[int], void: int | None, min_area: int, points: int, scribble: str, rng
) -> tuple[dict, list[dict | None], np.ndarray]:
    """One image of :func:`make_weak`: its COCO image record, its instances' annotations (``None``
    for an instance under ``min_area``, marked ignore in the ground truth instead) and its ground truth."""
    label = _read_map(sample.label)
    if not sample.image.is_file():
        raise WeakLabelError(f"image not found: {sample.image}")
    with Image.open(sample.image) as im:
        width, height = im.size
    if label.shape != (height, width):
        raise WeakLabelError(
            f"{sample.label}: {label.shape[1]}x{label.shape[0]} label map for a {width}x{height} image {sample.image}"
        )
    instance_map = _read_map(sample.instances) if sample.instances is not None else None
    gt = np.zeros(label.shape, np.uint8)
    if void is not None:
        gt[label == void] = IGNORE
    tags, instances = [], []
    for category, value in enumerate(values, start=1):
        where = label == value
        if not where.any():
            continue
        tags.append(category)
        gt[where] = category
        if instance_map is not None:
            ids = [i for i in np.unique(instance_map[where]) if i not in (0, 255)]
            masks = sorted(((instance_map == i) & where for i in ids), key=lambda m: -int(m.sum()))
        else:
            masks = components(label, value)
        for mask in masks:
            area = int(mask.sum())
            if area < min_area:
                gt[mask] = IGNORE  # no weak label: nobody could know of it
                instances.append(None)
                continue
            pts, strokes = weak_labels(mask, rng, points=points, scribble=scribble)
            instances.append(
                {
                    "image_id": index + 1,
                    "category_id": category,
                    "bbox": mask_bbox(mask),
                    "area": area,
                    "iscrowd": 0,
                    "points": pts,
                    "scribbles": strokes,
                    "segmentation": encode_rle(mask),
                }
            )
    image = {"id": index + 1, "file_name": sample.image.name, "height": height, "width": width, "tags": tags}
    return image, instances, gt


def make_weak_from_layout(
    out: str | os.PathLike,
    root: str | os.PathLike,
    layout: str,
    things: list[str] | str,
    *,
    split: str | None = None,
    class_names: list[str] | None = None,
    void: int | None = None,
    limit: int | None = None,
    **kwargs,
) -> dict:
    """:func:`make_weak` on a dataset folder of one of the ``LAYOUTS``."""
    if layout not in LAYOUTS:
        raise WeakLabelError(f"unknown layout {layout!r}; layouts: {', '.join(LAYOUTS)}")
    if layout in ("camvid", "voc") and not split:
        raise WeakLabelError(f"the {layout} layout needs a split (e.g. train, val)")
    class_names = class_names or DEFAULT_CLASSES.get(layout)
    if not class_names:
        raise WeakLabelError("the generic layout needs the class names (index order of the label maps)")
    samples = LAYOUTS[layout](Path(root), split)
    if limit is not None:
        samples = samples[:limit]
    void = DEFAULT_VOID.get(layout) if void is None else void
    return make_weak(
        out,
        samples,
        class_names,
        things,
        void=void,
        description=f"weak labels of {root} ({layout}, {split or 'all'})",
        **kwargs,
    )


def make_weak_from_coco(
    out: str | os.PathLike,
    annotation_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    things: list[str] | str = "all",
    **kwargs,
) -> dict:
    """:func:`make_weak` from a COCO file with ``segmentation``: its instances painted into a
    class map (largest first) and instance map, then converted like any other source."""
    with open(annotation_file) as f:
        coco = json.load(f)
    if not any("segmentation" in a for a in coco.get("annotations", [])):
        raise WeakLabelError(f"{annotation_file}: no annotation has a 'segmentation'")
    class_names = ["background"] + [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    with tempfile.TemporaryDirectory() as maps:
        samples = _paint_coco(coco, Path(maps), Path(image_dir))
        return make_weak(out, samples, class_names, things, description=f"weak labels of {annotation_file}", **kwargs)


def _paint_coco(coco: dict, tmp: Path, image_dir: Path) -> list[Sample]:
    """Class and instance maps of a COCO file's segmentations, as label PNGs under ``tmp``."""
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    value_of = {c["id"]: i + 1 for i, c in enumerate(categories)}
    samples = []
    by_image: dict[int, list] = {}
    for ann in coco["annotations"]:
        if "segmentation" in ann:
            by_image.setdefault(ann["image_id"], []).append(ann)
    for image in coco["images"]:
        h, w = int(image["height"]), int(image["width"])
        label, instances = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
        anns = sorted(by_image.get(image["id"], []), key=lambda a: -float(a.get("area", 0)))
        for k, ann in enumerate(anns[:254], start=1):
            mask = decode_segmentation(ann["segmentation"], h, w)
            label[mask], instances[mask] = value_of[ann["category_id"]], k
        stem = Path(image["file_name"]).stem
        write_label_png(tmp / "labels" / f"{stem}.png", label)
        write_label_png(tmp / "instances" / f"{stem}.png", instances)
        samples.append(
            Sample(image_dir / image["file_name"], tmp / "labels" / f"{stem}.png", tmp / "instances" / f"{stem}.png")
        )
    return samples
