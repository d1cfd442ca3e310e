"""A tiny synthetic segmentation dataset: noisy backgrounds with a red
rectangle (class 1) and a blue disc (class 2), written as the stages exchange
data: ``images/*.png``, ``gt/*.png`` (exact masks) and ``box/*.png`` (each
shape's bounding box filled: a coarse weak label)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsseg_fast.pipelines.label_maps import write_label


def make_shapes_dataset(root: Path, n: int = 12, size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for sub in ("images", "gt", "box"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        image = rng.integers(60, 160, size=(size, size, 3)).astype(np.float64)
        gt = np.zeros((size, size), np.uint8)
        box = np.zeros((size, size), np.uint8)
        # rectangle, class 1
        h, w = rng.integers(size // 5, size // 2, 2)
        y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
        gt[y0 : y0 + h, x0 : x0 + w] = 1
        box[y0 : y0 + h, x0 : x0 + w] = 1
        # disc, class 2 (drawn over the rectangle)
        r = rng.integers(size // 8, size // 4)
        cy, cx = rng.integers(r, size - r, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        gt[disc] = 2
        box[cy - r : cy + r + 1, cx - r : cx + r + 1] = 2
        image[gt == 1] = (200, 40, 40)
        image[gt == 2] = (40, 40, 200)
        image += rng.normal(0, 20, image.shape)
        stem = f"img{i:03d}"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"{stem}.png")
        write_label(root / "gt" / f"{stem}.png", torch.from_numpy(gt))
        write_label(root / "box" / f"{stem}.png", torch.from_numpy(box))
    return root
