"""Image and label-map files, as every stage exchanges them.

A dataset is a directory of RGB images (PNG/JPEG) plus directories of label
maps: one PNG of class indices per image, ``<dir>/<image stem>.png``, palette or
grayscale, 0 = background, 255 = ignore. Labels are matched to images by stem.

A directory of *soft maps* holds ``<stem>.npz`` instead: per-class scores in [0, 1] (``probs``,
``[num_classes, H, W]`` uint8 in 1/255 steps), as the CAM pseudo-label methods write them to
``OUT/soft`` for a student head trained with a sigmoid loss.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsseg_fast.data.labels import write_label_png
from wsseg_fast.errors import DataError
from wsseg_fast.io import atomic_write_bytes

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


def soft_path(soft_dir: str | os.PathLike, stem: str) -> Path:
    return Path(soft_dir) / f"{stem}.npz"


def encode_soft(scores: np.ndarray) -> bytes:
    """``[C, H, W]`` scores in [0, 1] as the bytes of a soft-map file (compressed, 1/255 steps)."""
    scores = np.asarray(scores, np.float32)
    if scores.ndim != 3 or not np.isfinite(scores).all():
        raise ValueError(f"encode_soft: `scores` must be finite [C, H, W], got shape {scores.shape}")
    buf = io.BytesIO()
    np.savez_compressed(buf, probs=np.rint(np.clip(scores, 0, 1) * 255).astype(np.uint8))
    return buf.getvalue()


def write_soft(path: str | os.PathLike, scores: np.ndarray) -> None:
    """Write a soft map (see :func:`encode_soft`) atomically."""
    atomic_write_bytes(os.fspath(path), encode_soft(scores))


def read_soft(path: str | os.PathLike) -> torch.Tensor:
    """``[C, H, W]`` float32 scores in [0, 1] of a soft-map file."""
    try:
        with np.load(path) as data:
            probs = data["probs"]
    except Exception as exc:
        raise DataError(f"soft map {str(path)!r} cannot be read ({type(exc).__name__}: {exc})") from None
    if probs.dtype != np.uint8 or probs.ndim != 3:
        raise DataError(f"soft map {str(path)!r}: expected uint8 probs [C, H, W], got {probs.dtype} {probs.shape}")
    return torch.from_numpy(probs.astype(np.float32) / 255)
