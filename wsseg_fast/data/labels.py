"""Class-index label PNGs: one palette (``P`` mode) PNG per image, 0 = background,
255 = ignore. The format of the demo's ground truth and of the pseudo-labels."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from wsseg_fast.errors import DataError
from wsseg_fast.io import atomic_write_bytes

IGNORE = 255


def palette() -> list[int]:
    """768 palette entries: 0 black, 255 white, the others well separated colours."""

    colours = [(0, 0, 0)]
    for i in range(1, 255):  # golden-ratio hue walk, alternating brightness
        h = (i * 0.618033988749895) % 1.0
        v = 1.0 if i % 2 else 0.7
        ks = [(n + h * 6) % 6 for n in (5, 3, 1)]
        rgb = [v * (1 - max(0.0, min(k, 4 - k, 1.0)) * 0.85) for k in ks]
        colours.append(tuple(int(255 * c) for c in rgb))
    colours.append((255, 255, 255))
    return [c for rgb in colours for c in rgb]


def encode_label_png(label: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8`` ``[H, W]`` class-index map (deterministic for equal input)."""
    if label.dtype != np.uint8 or label.ndim != 2:
        raise TypeError(f"label must be a uint8 [H, W] array, got {label.dtype} {label.shape}")
    image = Image.frombytes("P", (label.shape[1], label.shape[0]), np.ascontiguousarray(label).tobytes())
    image.putpalette(palette())
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def encode_image_png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8`` RGB ``[H, W, 3]`` image."""

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def write_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write atomically (temporary file + rename)."""
    atomic_write_bytes(os.fspath(path), encode_label_png(label))


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """The class indices of a label PNG (palette or greyscale) as ``uint8`` ``[H, W]``."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise DataError(f"{path}: a label PNG must be palette (P) or greyscale (L) mode, got {im.mode}")
        return np.array(im, dtype=np.uint8)
