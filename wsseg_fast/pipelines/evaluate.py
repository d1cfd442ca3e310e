"""Score a directory of predicted label maps against ground truth: ``wsseg-fast evaluate``.

Both are directories of class-index PNGs matched by stem; every ground-truth
map needs a prediction of the same size. One confusion matrix over all images
(:mod:`wsseg_fast.metrics`): pixel accuracy, mIoU, mACC (mean recall), mDice and
the per-class figures.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from wsseg_fast.errors import DataError
from wsseg_fast.io import atomic_write_text
from wsseg_fast.metrics import IGNORE_INDEX, SegmentationMeter, markdown_table
from wsseg_fast.pipelines.label_maps import read_label


def evaluate(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> dict:
    """:func:`wsseg_fast.metrics.scores` over every ``gt_dir/*.png`` and its
    ``pred_dir/<stem>.png``, plus ``num_images`` and ``num_classes``.
    ``num_classes`` defaults to ``len(class_names)``, else 1 + the largest label seen."""
    pred_root, gt_root = Path(pred_dir), Path(gt_dir)
    for name, root in (("pred_dir", pred_root), ("gt_dir", gt_root)):
        if not root.is_dir():
            raise DataError(f"evaluate: `{name}` {str(root)!r} is not a directory")
    gt_paths = sorted(gt_root.glob("*.png"))
    if not gt_paths:
        raise DataError(f"evaluate: `gt_dir` {str(gt_root)!r} holds no .png label maps")
    missing = [p.stem for p in gt_paths if not (pred_root / p.name).is_file()]
    if missing:
        raise DataError(
            f"evaluate: {len(missing)} of {len(gt_paths)} ground-truth maps have no prediction in "
            f"{str(pred_root)!r}, e.g. {missing[:3]}"
        )
    pairs = []
    for path in gt_paths:
        gt, pred = read_label(path), read_label(pred_root / path.name)
        if gt.shape != pred.shape:
            raise DataError(
                f"evaluate: prediction {path.name} is {tuple(pred.shape)}, its ground truth {tuple(gt.shape)}"
            )
        pairs.append((pred, gt))
    if num_classes is None:
        if class_names is not None:
            num_classes = len(class_names)
        else:
            largest = 0
            for pred, gt in pairs:
                for labels in (pred[gt != ignore_index], gt[gt != ignore_index]):
                    if labels.numel():
                        largest = max(largest, int(labels.max()))
            num_classes = largest + 1
    if class_names is not None and len(class_names) != num_classes:
        raise DataError(f"evaluate: {len(class_names)} `class_names` for {num_classes} classes")
    meter = SegmentationMeter(num_classes, class_names, ignore_index)
    for pred, gt in pairs:
        meter.update(pred, gt)
    return {**meter.compute(), "num_images": len(pairs), "num_classes": num_classes}


def _json_safe(value):
    """NaN (a class absent from both maps) -> null: strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_report(result: dict, out_json: str | os.PathLike, title: str = "Evaluation") -> tuple[Path, Path]:
    """Write ``result`` as JSON and as Markdown beside it (same name, ``.md``)."""
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_json, json.dumps(_json_safe(result), indent=2) + "\n")
    out_md = out_json.with_suffix(".md")
    atomic_write_text(
        out_md, markdown_table(result, title) + f"\n{result['num_images']} images, {result['num_classes']} classes.\n"
    )
    return out_json, out_md
