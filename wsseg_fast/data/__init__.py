"""Datasets: COCO-style weak annotations, the built-in demo dataset, label PNGs."""

from wsseg_fast.data.coco import CocoWeakDataset, DataError, ImageLoadError, ImageRecord
from wsseg_fast.data.demo import make_demo
from wsseg_fast.data.labels import IGNORE, read_label_png, write_label_png

__all__ = [
    "IGNORE",
    "CocoWeakDataset",
    "DataError",
    "ImageLoadError",
    "ImageRecord",
    "make_demo",
    "read_label_png",
    "write_label_png",
]
