"""COCO-style weak-annotation datasets.

The JSON holds ``images``, ``categories`` and ``annotations``; an annotation has a
``bbox`` ``[x, y, w, h]`` and optionally ``points`` (``[[x, y], ...]`` on the
object), ``scribbles`` (strokes, each ``[[x, y], ...]``) and ``segmentation``
(RLE or polygons; for evaluation only). An image may carry ``tags`` (category ids
present). Class indices: 0 = background, then the categories sorted by id.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from wsseg_fast.errors import DataError


class ImageLoadError(OSError):
    """One image cannot be read; jobs skip it and report it."""


@dataclass
class ImageRecord:
    id: int
    file_name: str
    path: str
    height: int | None
    width: int | None
    tags: list[int]
    annotations: list[dict] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return os.path.splitext(os.path.basename(self.file_name))[0]


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, RLE or uncompressed RLE) -> ``[H, W]`` bool mask."""
    if isinstance(segmentation, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    return mask_utils.decode(rle).astype(bool)


class CocoWeakDataset:
    """The images and weak annotations of a COCO file.

    Args:
        annotation_file: the COCO JSON.
        image_dir: where ``file_name`` paths are relative to (default: an ``images``
            directory beside the JSON if it exists, else the JSON's directory).
    """

    def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike | None = None):
        annotation_file = os.fspath(annotation_file)
        if not os.path.isfile(annotation_file):
            raise DataError(f"annotation file not found: {annotation_file}")
        try:
            with open(annotation_file, encoding="utf-8") as f:
                coco = json.load(f)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{annotation_file} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {annotation_file}: {exc}") from None
        if not isinstance(coco, dict):
            raise DataError(
                f"{annotation_file}: expected a COCO object with images/categories/annotations, "
                f"got {type(coco).__name__}"
            )
        for key in ("images", "categories"):
            if not isinstance(coco.get(key), list):
                raise DataError(f"{annotation_file}: missing or invalid '{key}' list")
        if image_dir is None:
            beside = os.path.join(os.path.dirname(annotation_file), "images")
            image_dir = beside if os.path.isdir(beside) else os.path.dirname(annotation_file)
        self.annotation_file, self.image_dir = annotation_file, os.fspath(image_dir)
        try:
            self.categories = sorted(
                ({"id": int(c["id"]), "name": str(c["name"])} for c in coco["categories"]), key=lambda c: c["id"]
            )
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{annotation_file}: every category needs an integer 'id' and a 'name'") from None
        if len(self.categories) > 254:
            raise DataError(
                f"{annotation_file}: {len(self.categories)} categories; label PNGs hold at most 254 classes"
            )
        self.class_index = {c["id"]: i + 1 for i, c in enumerate(self.categories)}
        self.class_names = ["background"] + [c["name"] for c in self.categories]
        self.images: list[ImageRecord] = []
        by_id = {}
        for i, im in enumerate(coco["images"]):
            try:
                rec = ImageRecord(
                    int(im["id"]),
                    str(im["file_name"]),
                    os.path.join(self.image_dir, str(im["file_name"])),
                    im.get("height"),
                    im.get("width"),
                    [int(t) for t in im.get("tags", [])],
                )
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{annotation_file}: image #{i} needs an integer 'id' and a 'file_name'") from None
            if rec.id in by_id:
                raise DataError(f"{annotation_file}: duplicate image id {rec.id}")
            by_id[rec.id] = rec
            self.images.append(rec)
        stems = [r.stem for r in self.images]
        if len(set(stems)) != len(stems):
            raise DataError(f"{annotation_file}: image file names must have distinct stems (outputs are <stem>.png)")
        for j, ann in enumerate(coco.get("annotations", [])):
            try:
                rec = by_id[int(ann["image_id"])]
                if int(ann["category_id"]) not in self.class_index:
                    raise KeyError("category_id")
                if "bbox" in ann and (len(ann["bbox"]) != 4 or float(ann["bbox"][2]) < 0 or float(ann["bbox"][3]) < 0):
                    raise ValueError("bbox")
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(
                    f"{annotation_file}: annotation #{j} (id {ann.get('id')}) has a bad or unknown {exc}"
                ) from None
            rec.annotations.append(ann)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load_image(self, record: ImageRecord) -> np.ndarray:
        """The image as RGB ``uint8`` ``[H, W, 3]``; :class:`ImageLoadError` when it cannot be read."""
        try:
            with Image.open(record.path) as im:
                image = np.array(im.convert("RGB"))
        except FileNotFoundError:
            raise ImageLoadError(f"image {record.file_name} (id {record.id}) not found at {record.path}") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise ImageLoadError(f"image {record.file_name} (id {record.id}) cannot be read: {exc}") from None
        if record.height is not None and record.width is not None and image.shape[:2] != (record.height, record.width):
            raise ImageLoadError(
                f"image {record.file_name} is {image.shape[1]}x{image.shape[0]}, the annotations say "
                f"{record.width}x{record.height}"
            )
        return image

    def boxes(self, record: ImageRecord) -> tuple[np.ndarray, np.ndarray]:
        """``[N, 4]`` float32 ``x0, y0, x1, y1`` boxes and ``[N]`` class indices of an image's annotations."""
        anns = [a for a in record.annotations if "bbox" in a]
        boxes = np.array(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
            dtype=np.float32,
        ).reshape(-1, 4)
        return boxes, np.array([self.class_index[int(a["category_id"])] for a in anns], dtype=np.int64)

    def instance_masks(self, record: ImageRecord, height: int, width: int) -> list[np.ndarray]:
        """The ``[H, W]`` bool masks of the image's annotations that have a ``segmentation``."""
        return [
            decode_segmentation(a["segmentation"], height, width) for a in record.annotations if a.get("segmentation")
        ]

    def has_segmentation(self) -> bool:
        return any("segmentation" in a for r in self.images for a in r.annotations)

    def gt_label_map(self, record: ImageRecord, height: int, width: int) -> np.ndarray | None:
        """A class-index map from the annotations' ``segmentation`` (largest first, so a
        contained object wins over its container), or ``None`` when the image has none."""

        anns = [a for a in record.annotations if a.get("segmentation")]
        if not anns:
            return None if not record.annotations else np.zeros((height, width), np.uint8)
        masks = [
            (decode_segmentation(a["segmentation"], height, width), self.class_index[int(a["category_id"])])
            for a in anns
        ]
        label = np.zeros((height, width), np.uint8)
        for mask, cls in sorted(masks, key=lambda mc: -int(mc[0].sum())):
            label[mask] = cls
        return label
