"""The built-in demo dataset: synthetic, deterministic, made for weak supervision.

Every image has a textured background and several objects of six classes chosen
so that a box is a poor mask: a crescent (concave), a rod (thin, rotated), a ring
(holed), an ell (concave, rotated), plus a containment pair, a cup inside a disc
(as the optic cup lies inside the optic disc). Objects other than the pair do not
overlap. Written as COCO (``annotations.json``: bbox, points, scribbles, image
tags and RLE segmentation) with PNG images and class-index ground truth
(``gt/<stem>.png``: 0 background, class = category id).

The disc's segmentation is the whole disc (the cup inside it included); in the
class-index map the cup's pixels are ``cup``: painting instance masks from the
largest to the smallest gives that map from the COCO file too.
"""

from __future__ import annotations

import json
import os

import numpy as np

from wsseg_fast.data.labels import encode_image_png, write_label_png
from wsseg_fast.data.weak import encode_rle, mask_bbox, weak_labels
from wsseg_fast.io import atomic_write_bytes

CATEGORIES = ["disc", "cup", "crescent", "rod", "ring", "ell"]
COLOURS = {  # base RGB of each class; textures vary around it
    "disc": (205, 150, 60),
    "cup": (245, 225, 150),
    "crescent": (60, 120, 210),
    "rod": (200, 60, 70),
    "ring": (70, 170, 90),
    "ell": (150, 80, 190),
}
SIZE = (240, 320)  # H, W


def _texture(rng: np.random.Generator, shape, amplitude: float) -> np.ndarray:
    """Smooth random waves plus grain, ``[H, W]`` around 0."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros(shape)
    for _ in range(4):
        fx, fy = rng.uniform(-0.12, 0.12, size=2)
        out += np.sin(fx * x + fy * y + rng.uniform(0, 2 * np.pi))
    return amplitude * (out / 4 + 0.35 * rng.standard_normal(shape))


def _background(rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(70, 150, size=3)
    image = np.empty((*SIZE, 3))
    tex = _texture(rng, SIZE, 28)
    for c in range(3):
        image[..., c] = base[c] + tex + 6 * rng.standard_normal(SIZE)
    return image


def _shape_mask(kind: str, rng: np.random.Generator, cy: float, cx: float, grid) -> tuple[np.ndarray, dict]:
    y, x = grid
    dy, dx = y - cy, x - cx
    theta = rng.uniform(0, np.pi)
    u, v = np.cos(theta), np.sin(theta)
    along, across = dx * u + dy * v, -dx * v + dy * u
    if kind == "disc":
        r = rng.uniform(30, 42)
        return dx**2 + dy**2 <= r**2, {"r": r}
    if kind == "crescent":
        r = rng.uniform(24, 34)
        off = 0.5 * r
        return (dx**2 + dy**2 <= r**2) & ((dx - off * u) ** 2 + (dy - off * v) ** 2 > (0.85 * r) ** 2), {}
    if kind == "rod":
        length, width = rng.uniform(70, 110), rng.uniform(4, 7)
        return (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2), {}
    if kind == "ring":
        r = rng.uniform(22, 32)
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2), {}
    if kind == "ell":
        arm, width = rng.uniform(36, 52), rng.uniform(9, 13)
        a = (along >= -arm / 2) & (along <= arm / 2) & (across >= -arm / 2) & (across <= -arm / 2 + width)
        b = (along >= -arm / 2) & (along <= -arm / 2 + width) & (across >= -arm / 2) & (across <= arm / 2)
        return a | b, {}
    raise ValueError(kind)


def make_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One demo image: RGB ``uint8``, class-index map, and its objects (category, full mask, visible mask)."""
    h, w = SIZE
    grid = np.mgrid[0:h, 0:w].astype(np.float64)
    image = _background(rng)
    label = np.zeros(SIZE, np.uint8)
    objects: list[dict] = []
    taken = np.zeros(SIZE, bool)

    def place(kind: str, tries: int = 200):
        for _ in range(tries):
            cy, cx = rng.uniform(45, h - 45), rng.uniform(45, w - 45)
            mask, params = _shape_mask(kind, rng, cy, cx, grid)
            if not mask.any() or mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
                continue
            x, y, bw, bh = mask_bbox(mask)
            box = np.zeros(SIZE, bool)
            box[max(0, y - 6) : y + bh + 6, max(0, x - 6) : x + bw + 6] = True
            if (box & taken).any():
                continue
            taken[box] = True
            return mask, params, (cy, cx)
        return None

    kinds = []
    if rng.random() < 0.85:
        kinds.append("disc")
    kinds += list(rng.choice(["crescent", "rod", "ring", "ell"], size=int(rng.integers(2, 5)), replace=True))
    for kind in kinds:
        placed = place(kind)
        if placed is None:
            continue
        mask, params, (cy, cx) = placed
        objects.append({"category": kind, "mask": mask})
        if kind == "disc":  # the cup, inside the disc, off-centre
            r = params["r"]
            rc = rng.uniform(0.35, 0.5) * r
            a = rng.uniform(0, 2 * np.pi)
            off = rng.uniform(0, r - rc - 4)
            cyc, cxc = cy + off * np.sin(a), cx + off * np.cos(a)
            objects.append({"category": "cup", "mask": (grid[0] - cyc) ** 2 + (grid[1] - cxc) ** 2 <= rc**2})
    for obj in objects:  # paint in order: the cup after (over) its disc
        colour = np.array(COLOURS[obj["category"]], dtype=np.float64)
        tex = _texture(rng, SIZE, 18)
        m = obj["mask"]
        image[m] = colour + tex[m][:, None] + 5 * rng.standard_normal((int(m.sum()), 3))
        label[m] = CATEGORIES.index(obj["category"]) + 1
    for obj in objects:
        obj["visible"] = label == CATEGORIES.index(obj["category"]) + 1
        obj["visible"] &= obj["mask"]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label, objects


def make_demo(out: str | os.PathLike, images: int = 8, seed: int = 0) -> dict:
    """Write the demo dataset under ``out``; returns the COCO dict. Same ``images`` and
    ``seed`` -> the same bytes."""

    if images < 1:
        raise ValueError(f"make_demo: images must be >= 1, got {images}")
    out = os.fspath(out)
    for sub in ("images", "gt"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    coco = {
        "info": {"description": f"wsseg_fast demo dataset ({images} images, seed {seed})", "version": "1"},
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES)],
        "images": [],
        "annotations": [],
    }
    for index in range(images):
        rng = np.random.default_rng([seed, index])  # each image from its own stream
        image, label, objects = make_image(rng)
        stem = f"demo_{index:04d}"
        atomic_write_bytes(os.path.join(out, "images", stem + ".png"), encode_image_png(image))
        write_label_png(os.path.join(out, "gt", stem + ".png"), label)
        tags = sorted({CATEGORIES.index(o["category"]) + 1 for o in objects})
        coco["images"].append(
            {"id": index + 1, "file_name": stem + ".png", "height": SIZE[0], "width": SIZE[1], "tags": tags}
        )
        for obj in objects:
            points, scribbles = weak_labels(obj["visible"], rng)
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": index + 1,
                    "category_id": CATEGORIES.index(obj["category"]) + 1,
                    "bbox": mask_bbox(obj["mask"]),
                    "area": int(obj["mask"].sum()),
                    "iscrowd": 0,
                    "points": points,
                    "scribbles": scribbles,
                    "segmentation": encode_rle(obj["mask"]),
                }
            )
    atomic_write_bytes(os.path.join(out, "annotations.json"), json.dumps(coco, indent=1).encode())
    return coco
