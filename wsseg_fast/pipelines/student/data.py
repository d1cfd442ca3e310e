"""The student's training data: images (or their cached SAM features) with one target per head.

A source is a name (``pseudo``, ``gt``, ``cam``, ``box``, ...) and a directory of label maps, or of
soft maps (see :mod:`wsseg_fast.pipelines.label_maps`); an image takes part when any source labels
it. Pixel students (``unet``, ``multihead``) see the image resized to ``size x size``; a ``sam-head``
student sees the image's SAM features, read from the embedding cache, and its targets lie on SAM's
square input frame at ``size x size`` (the image top-left, the padding ignored).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from wsseg_fast.data import DataError
from wsseg_fast.metrics import IGNORE_INDEX
from wsseg_fast.pipelines.label_maps import label_path, list_images, read_image, read_label, read_soft, soft_path
from wsseg_fast.sam.model import input_size

# ImageNet statistics: the usual input normalisation, kept in the checkpoint.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NO_SOFT = -1.0  # a soft target where an image has no soft map


def normalize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> normalised float ``[3, *size]``."""
    x = image.permute(2, 0, 1)[None].float().div_(255)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> normalised float ``[3, size, size]``."""
    return normalize(image, (size, size))


def resize_label(labels: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(labels[None, None].float(), size=(size, size), mode="nearest-exact")[0, 0].long()


class Frame:
    """Where an image lies on SAM's square input frame drawn at ``size x size``: its top-left
    ``rows x cols`` (SAM resizes the longest side to ``img_size`` and pads below and right)."""

    def __init__(self, original: tuple[int, int], img_size: int, size: int):
        h, w = input_size(original, img_size)
        self.size = size
        self.rows, self.cols = max(1, round(h * size / img_size)), max(1, round(w * size / img_size))

    def place(self, x: torch.Tensor, fill: float, mode: str) -> torch.Tensor:
        """``[C, H, W]`` -> ``[C, size, size]``: resized into the image's cells, ``fill`` elsewhere."""
        inside = F.interpolate(x[None].float(), size=(self.rows, self.cols), mode=mode)[0]
        out = torch.full((x.shape[0], self.size, self.size), fill, dtype=torch.float32)
        out[:, : self.rows, : self.cols] = inside
        return out

    def image(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``[H, W, 3]`` -> normalised ``[3, size, size]``, zeros (the mean colour) outside."""
        out = torch.zeros(3, self.size, self.size)
        out[:, : self.rows, : self.cols] = normalize(image, (self.rows, self.cols))
        return out

    def crop(self, logits: torch.Tensor, original: tuple[int, int]) -> torch.Tensor:
        """``[..., C, size, size]`` logits -> the image's cells resized to ``original`` (bilinear)."""
        inside = logits[..., : self.rows, : self.cols]
        return F.interpolate(inside.reshape(-1, *inside.shape[-3:]).float(), size=original, mode="bilinear")


class StudentDataset(Dataset):
    """Images with one target per head: a label map (int64, ignore where the image has none) or
    a soft map (``[C, S, S]`` float, :data:`NO_SOFT` where the image has none).

    Item: ``(inputs, targets)``, ``inputs`` a tuple of tensors the model takes (``(image,)``, or
    the SAM feature levels and, with ``image_branch``, the letterboxed image) and ``targets`` a dict
    head -> target. Whether an image is flipped is drawn per epoch from (seed, epoch) by
    :meth:`set_epoch`, in the main process, so workers and resumed runs see the same augmentation.

    Args:
        images: the image files.
        labels: per image, one target file (or ``None``) per head.
        heads: the head names, in the order of ``labels``' rows.
        num_classes: classes including background.
        size: the side of the model's input (pixel students) or of its targets' frame (``sam-head``).
        flip: horizontal-flip augmentation.
        features: a ``sam-head`` student's :class:`~wsseg_fast.pipelines.student.features.SamFeatures`.
        image_branch: ``sam-head``: the letterboxed image is an input too.
    """

    def __init__(
        self,
        images: list[Path],
        labels: list[list[Path | None]],
        heads: list[str],
        num_classes: int,
        size: int,
        flip: bool,
        features=None,
        image_branch: bool = False,
    ):
        self.images, self.labels, self.heads = images, labels, heads
        self.num_classes, self.size, self.flip = num_classes, size, flip
        self.features, self.image_branch = features, image_branch
        self.soft = soft_heads(heads, labels)
        self.flips = torch.zeros(len(images), dtype=torch.bool)

    def set_epoch(self, seed: int, epoch: int) -> None:
        if self.flip:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            self.flips = torch.rand(len(self.images), generator=g) < 0.5

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        if self.features is None:
            image = read_image(self.images[index])
            original, frame = tuple(image.shape[:2]), None
            inputs = (resize_image(image, self.size),)
        else:
            original = self.features.original_size(index)
            frame = Frame(original, self.features.img_size, self.size)
            inputs = tuple(self.features.levels(index))
            if self.image_branch:
                inputs += (frame.image(read_image(self.images[index])),)
        targets = self.targets(index, original, frame)
        if self.flips[index]:
            inputs = tuple(x.flip(-1) for x in inputs)
            targets = {h: t.flip(-1) for h, t in targets.items()}
        return inputs, targets

    def targets(self, index: int, original: tuple[int, int], frame: Frame | None = None) -> dict[str, torch.Tensor]:
        """Each head's target for image ``index`` of size ``original``, on ``frame`` (``None``: resized
        to ``size x size``); all ignored where the image has none of the head."""
        out = {}
        for head, path in zip(self.heads, self.labels[index]):
            if path is not None:
                out[head] = (
                    self._soft(path, original, frame) if head in self.soft else self._hard(path, original, frame)
                )
            elif head in self.soft:
                out[head] = torch.full((self.num_classes, self.size, self.size), NO_SOFT)
            else:
                out[head] = torch.full((self.size, self.size), IGNORE_INDEX, dtype=torch.long)
        return out

    def _hard(self, path: Path, original: tuple[int, int], frame: Frame | None) -> torch.Tensor:
        labels = read_label(path)
        if tuple(labels.shape) != original:
            raise DataError(f"label map {str(path)!r} is {tuple(labels.shape)} but its image is {original}")
        bad = (labels >= self.num_classes) & (labels != IGNORE_INDEX)
        if bad.any():
            raise DataError(
                f"label map {str(path)!r} has label {int(labels[bad].max())} outside "
                f"[0, {self.num_classes}) (and not {IGNORE_INDEX} = ignore)"
            )
        if frame is None:
            return resize_label(labels, self.size)
        return frame.place(labels[None], IGNORE_INDEX, "nearest-exact")[0].long()

    def _soft(self, path: Path, original: tuple[int, int], frame: Frame | None) -> torch.Tensor:
        scores = read_soft(path)
        if scores.shape[0] != self.num_classes or tuple(scores.shape[1:]) != original:
            raise DataError(
                f"soft map {str(path)!r} is {tuple(scores.shape)}; expected [{self.num_classes}, "
                f"{original[0]}, {original[1]}] (classes, the image's size)"
            )
        if frame is None:
            return F.interpolate(scores[None], size=(self.size, self.size), mode="bilinear")[0]
        return frame.place(scores, NO_SOFT, "bilinear")


def soft_heads(heads: list[str], labels: list[list[Path | None]]) -> set[str]:
    """The heads whose targets are soft maps."""
    return {h for k, h in enumerate(heads) if any(row[k] is not None and row[k].suffix == ".npz" for row in labels)}


def has_target(target: torch.Tensor) -> torch.Tensor:
    """``[B, S, S]`` bool: the pixels a batch's target (label map or soft map) labels."""
    return target[:, 0] >= 0 if target.is_floating_point() else target != IGNORE_INDEX


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
    """The largest class index in the label maps (ignore excluded; soft maps count their channels)."""
    largest = 0
    for row in rows:
        for path in row:
            if path is None:
                continue
            if path.suffix == ".npz":
                largest = max(largest, read_soft(path).shape[0] - 1)
                continue
            labels = read_label(path)
            labels = labels[labels != IGNORE_INDEX]
            largest = max(largest, int(labels.max()) if labels.numel() else 0)
    return largest


def _source_files(name: str, directory: str, stems: list[str]) -> list[Path | None]:
    """Each image's target file in a source directory: label maps (``.png``) or soft maps (``.npz``),
    not both."""
    if not Path(directory).is_dir():
        raise DataError(f"label directory {str(directory)!r} of source {name!r} does not exist")
    hard = [label_path(directory, s) for s in stems]
    soft = [soft_path(directory, s) for s in stems]
    n_hard, n_soft = sum(p.is_file() for p in hard), sum(p.is_file() for p in soft)
    if n_hard and n_soft:
        raise DataError(
            f"source {name!r}: {directory!r} holds both label maps (.png) and soft maps (.npz) of the images; "
            "give each kind its own source"
        )
    files = soft if n_soft else hard
    return [p if p.is_file() else None for p in files]


def training_table(images_dir: str, sources: dict[str, str], gt_fraction: float | None, seed: int):
    """The training images, their target files per head (``None`` where a source has none), and
    the gt subset (``gt_fraction`` of the images keep their ``gt`` labels; ``None``: all)."""

    heads = list(sources)
    paths = list_images(images_dir)
    stems = [p.stem for p in paths]
    columns = [_source_files(h, sources[h], stems) for h in heads]
    table = [list(row) for row in zip(*columns)]
    subset = None
    if gt_fraction is not None:
        k = heads.index("gt")
        if table and any(row[k] is not None and row[k].suffix == ".npz" for row in table):
            raise DataError("the gt source must hold label maps (.png), not soft maps")
        subset = gt_subset(stems, [row[k] is not None for row in table], gt_fraction, seed)
        keep = set(subset)
        for s, row in zip(stems, table):
            if s not in keep:
                row[k] = None
    kept = [(p, row) for p, row in zip(paths, table) if any(q is not None for q in row)]
    if not kept:
        raise DataError(f"no image of {images_dir!r} has a label map in {sorted(sources.values())}")
    return [p for p, _ in kept], [row for _, row in kept], subset
