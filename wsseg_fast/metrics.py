"""Semantic-segmentation metrics from one confusion matrix, as mmsegmentation
computes them: per-class IoU, accuracy (= recall), precision and Dice; their
means over the classes that occur (NaN-free ``nanmean``); pixel accuracy.

Used by the pseudo-labelling report, ``wsseg-fast evaluate`` and the experiment.
"""

from __future__ import annotations

import math

import torch

IGNORE_INDEX = 255


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """``[C, C]`` int64 counts, rows = target class, columns = predicted class.

    ``pred`` and ``target`` are integer label maps of the same shape; target
    pixels equal to ``ignore_index`` are skipped. A predicted label outside
    ``[0, C)`` on a counted pixel is an error, not silently dropped."""
    if pred.shape != target.shape:
        raise ValueError(
            f"confusion_matrix: pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape"
        )
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError("confusion_matrix: pred and target must be integer label maps")
    if num_classes < 1:
        raise ValueError(f"confusion_matrix: num_classes must be >= 1, got {num_classes}")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    for name, labels in (("target", target), ("pred", pred)):
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"confusion_matrix: {name} has labels outside [0, {num_classes}) "
                f"(min {labels.min().item()}, max {labels.max().item()}; ignore_index={ignore_index})"
            )
    return (
        torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
        .view(num_classes, num_classes)
        .cpu()
    )


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def scores(confusion: torch.Tensor, class_names: list[str] | None = None) -> dict:
    """Metrics of a confusion matrix: ``pixel_accuracy``, ``miou``, ``macc``
    (mean recall), ``mdice``, ``mprecision`` and ``per_class``. A class absent
    from both target and prediction gets NaN and is left out of the means."""
    cm = confusion.double()
    num_classes = cm.shape[0]
    names = class_names if class_names is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"scores: {len(names)} class names for {num_classes} classes")
    tp = cm.diag()
    in_target, in_pred = cm.sum(1), cm.sum(0)

    def ratio(num, den):
        return [float(n / d) if d > 0 else float("nan") for n, d in zip(num.tolist(), den.tolist())]

    iou = ratio(tp, in_target + in_pred - tp)
    recall = ratio(tp, in_target)
    precision = ratio(tp, in_pred)
    dice = ratio(2 * tp, in_target + in_pred)
    total = cm.sum().item()
    return {
        "pixel_accuracy": tp.sum().item() / total if total else float("nan"),
        "miou": _nanmean(iou),
        "macc": _nanmean(recall),
        "mdice": _nanmean(dice),
        "mprecision": _nanmean(precision),
        "per_class": {
            name: {
                "iou": iou[c],
                "acc": recall[c],
                "precision": precision[c],
                "dice": dice[c],
                "pixels": int(in_target[c].item()),
            }
            for c, name in enumerate(names)
        },
    }


class SegmentationMeter:
    """Accumulates one confusion matrix over many images; ``compute()`` gives :func:`scores`."""

    def __init__(self, num_classes: int, class_names: list[str] | None = None, ignore_index: int = IGNORE_INDEX):
        self.num_classes, self.class_names, self.ignore_index = num_classes, class_names, ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.confusion += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def compute(self) -> dict:
        return scores(self.confusion, self.class_names)


def markdown_table(results: dict, title: str = "") -> str:
    """A :func:`scores` result as Markdown: the means, then one row per class."""
    pct = lambda v: "n/a" if math.isnan(v) else f"{100 * v:.2f}"  # noqa: E731
    lines = [f"## {title}", ""] if title else []
    lines += ["| mIoU | mACC | mDice | pixel acc |", "|---|---|---|---|"]
    lines += [
        f"| {pct(results['miou'])} | {pct(results['macc'])} | {pct(results['mdice'])} "
        f"| {pct(results['pixel_accuracy'])} |",
        "",
    ]
    lines += ["| class | IoU | Acc | Dice | pixels |", "|---|---|---|---|---|"]
    for name, row in results["per_class"].items():
        lines.append(f"| {name} | {pct(row['iou'])} | {pct(row['acc'])} | {pct(row['dice'])} | {row['pixels']} |")
    return "\n".join(lines) + "\n"
