"""Seconds per image of ``logic-refine``'s ``refine`` alone (no I/O, one thread) on the photos of a
``wsseg-fast make-weak`` directory with the most boxes, for a few option sets:

    OMP_NUM_THREADS=1 python benchmarks/refine_seconds.py camvid-weak/train --top 10 \\
        defaults colour_model=gmm finish=graphcut colour_model=gmm,finish=graphcut

Each option set is ``key=value`` pairs joined by commas (``defaults``: none). Prints the mean and the
slowest image's seconds; one untimed warm-up run first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsseg_fast.pipelines.methods import parse_options
from wsseg_fast.pipelines.methods.logic_refine import refine


def load(data: Path, top: int) -> list[tuple[np.ndarray, np.ndarray, list[dict]]]:
    """The ``top`` images with the most annotations: (RGB image, xyxy boxes, annotations)."""
    coco = json.loads((data / "annotations.json").read_text())
    count = Counter(a["image_id"] for a in coco["annotations"])
    loaded = []
    for im in sorted(coco["images"], key=lambda im: -count[im["id"]])[:top]:
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32)
        image = np.asarray(Image.open(data / "images" / im["file_name"]).convert("RGB"))
        loaded.append((image, boxes.reshape(-1, 4), anns))
    return loaded


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a dataset written by `wsseg-fast make-weak`")
    parser.add_argument("options", nargs="*", default=["defaults"], help="option sets: k=v,k=v (defaults: none)")
    parser.add_argument("--top", type=int, default=10, help="the N images with the most boxes")
    args = parser.parse_intermixed_args(argv)
    torch.set_num_threads(1)
    images = load(Path(args.data), args.top)
    if not images:
        print(f"{args.data}: no images", file=sys.stderr)
        return 2
    refine(*images[0], parse_options("logic-refine"))  # warm-up
    counts = [len(boxes) for _, boxes, _ in images]
    print(f"{len(images)} images {images[0][0].shape[1]}x{images[0][0].shape[0]}, {min(counts)}-{max(counts)} boxes")
    for text in args.options:
        options = parse_options("logic-refine", [pair for pair in text.split(",") if pair and text != "defaults"])
        seconds = []
        for image, boxes, anns in images:
            start = time.perf_counter()
            refine(image, boxes, anns, options)
            seconds.append(time.perf_counter() - start)
        print(f"{text:40s} mean {np.mean(seconds):.3f} s, slowest {np.max(seconds):.3f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
