"""Image and label-map files, as every stage exchanges them.

A dataset is a directory of RGB images (PNG/JPEG) plus directories of label
maps: one PNG of class indices per image, ``<dir>/<image stem>.png``, palette or
grayscale, 0 = background, 255 = ignore. Labels are matched to images by stem.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsseg_fast.data.labels import write_label_png
from wsseg_fast.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(images_dir: str | os.PathLike) -> list[Path]:
    """The image files of a directory, sorted by name; an error if there are none."""
    root = Path(images_dir)
    if not root.is_dir():
        raise DataError(f"images directory {str(root)!r} does not exist")
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DataError(f"images directory {str(root)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})
        raise DataError(f"images directory {str(root)!r} has several images with the same stem: {dup[:5]}")
    return paths


def label_path(labels_dir: str | os.PathLike, stem: str) -> Path:
    return Path(labels_dir) / f"{stem}.png"


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """``[H, W, 3]`` uint8 RGB."""
    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"), dtype=np.uint8))


def read_label(path: str | os.PathLike) -> torch.Tensor:
    """``[H, W]`` int64 class indices from a palette or grayscale PNG."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16", "1"):
            raise DataError(
                f"label map {str(path)!r} has PIL mode {im.mode!r}: expected class indices in a palette (P) "
                "or grayscale (L, I, I;16) PNG, not colours"
            )
        return torch.from_numpy(np.array(im).astype(np.int64))


def write_label(path: str | os.PathLike, labels: torch.Tensor) -> None:
    """Write ``[H, W]`` class indices in [0, 255] as the project's palette PNG, atomically."""
    if labels.dim() != 2:
        raise ValueError(f"write_label: `labels` must be [H, W], got {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > 255):
        raise ValueError("write_label: `labels` must lie in [0, 255] to fit a palette PNG")
    write_label_png(path, labels.to(torch.uint8).cpu().numpy())
