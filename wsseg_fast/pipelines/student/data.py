"""The student's training data: images with one label map per head (supervision source).

A source is a name (``pseudo``, ``gt``, ``cam``, ``box``, ...) and a directory of label maps
(see :mod:`wsseg_fast.pipelines.label_maps`); an image takes part when any source labels it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from wsseg_fast.data import DataError
from wsseg_fast.metrics import IGNORE_INDEX
from wsseg_fast.pipelines.label_maps import label_path, list_images, read_image, read_label

# ImageNet statistics: the usual input normalisation, kept in the checkpoint.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> normalised float ``[3, size, size]``."""

    x = image.permute(2, 0, 1)[None].float().div_(255)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (x - mean) / std


def resize_label(labels: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(labels[None, None].float(), size=(size, size), mode="nearest-exact")[0, 0].long()


class StudentDataset(Dataset):
    """Images with one label map per head (all-ignore where an image has none).

    Item: ``(image [3, S, S] float, targets [K, S, S] int64)``. Whether an image
    is flipped is drawn per epoch from (seed, epoch) by :meth:`set_epoch`, in the
    main process, so workers and resumed runs see the same augmentation."""

    def __init__(self, images: list[Path], labels: list[list[Path | None]], num_classes: int, size: int, flip: bool):
        self.images, self.labels = images, labels
        self.num_classes, self.size, self.flip = num_classes, size, flip
        self.flips = torch.zeros(len(images), dtype=torch.bool)

    def set_epoch(self, seed: int, epoch: int) -> None:
        if self.flip:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            self.flips = torch.rand(len(self.images), generator=g) < 0.5

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = read_image(self.images[index])
        h, w = image.shape[:2]
        x = resize_image(image, self.size)
        targets = torch.full((len(self.labels[index]), self.size, self.size), IGNORE_INDEX, dtype=torch.long)
        for k, path in enumerate(self.labels[index]):
            if path is None:
                continue
            labels = read_label(path)
            if labels.shape != (h, w):
                raise DataError(f"label map {str(path)!r} is {tuple(labels.shape)} but its image is {(h, w)}")
            bad = (labels >= self.num_classes) & (labels != IGNORE_INDEX)
            if bad.any():
                raise DataError(
                    f"label map {str(path)!r} has label {int(labels[bad].max())} outside "
                    f"[0, {self.num_classes}) (and not {IGNORE_INDEX} = ignore)"
                )
            targets[k] = resize_label(labels, self.size)
        if self.flips[index]:
            x, targets = x.flip(-1), targets.flip(-1)
        return x, targets


def gt_subset(stems: list[str], has_gt: list[bool], fraction: float, seed: int) -> list[str]:
    """``round(fraction * #images)`` (at least 1) of the images that have a gt
    label, chosen by a seeded permutation: the same subset on every rank and run."""

    candidates = [s for s, has in zip(stems, has_gt) if has]
    if not candidates:
        return []
    k = min(len(candidates), max(1, round(fraction * len(stems))))
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(candidates[i] for i in order[:k])


def largest_label(rows: list[list[Path | None]]) -> int:
    """The largest class index in the label maps (ignore excluded)."""
    largest = 0
    for row in rows:
        for path in row:
            if path is not None:
                labels = read_label(path)
                labels = labels[labels != IGNORE_INDEX]
                largest = max(largest, int(labels.max()) if labels.numel() else 0)
    return largest


def training_table(images_dir: str, sources: dict[str, str], gt_fraction: float | None, seed: int):
    """The training images, their label files per head (``None`` where a source has none), and
    the gt subset (``gt_fraction`` of the images keep their ``gt`` labels; ``None``: all)."""

    heads = list(sources)
    for name, directory in sources.items():
        if not Path(directory).is_dir():
            raise DataError(f"label directory {str(directory)!r} of source {name!r} does not exist")
    paths = list_images(images_dir)
    stems = [p.stem for p in paths]
    table = [[label_path(sources[h], s) for h in heads] for s in stems]
    table = [[p if p.is_file() else None for p in row] for row in table]
    subset = None
    if gt_fraction is not None:
        k = heads.index("gt")
        subset = gt_subset(stems, [row[k] is not None for row in table], gt_fraction, seed)
        keep = set(subset)
        for s, row in zip(stems, table):
            if s not in keep:
                row[k] = None
    kept = [(p, row) for p, row in zip(paths, table) if any(q is not None for q in row)]
    if not kept:
        raise DataError(f"no image of {images_dir!r} has a label map in {sorted(sources.values())}")
    return [p for p, _ in kept], [row for _, row in kept], subset
