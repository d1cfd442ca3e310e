"""What the trainers on a weakly labelled COCO set with a frozen SAM image encoder share
(``finetune`` and ``train-prompter``): the common settings, the training images with their
boxes, and their embeddings through the shared cache."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from wsseg_fast.config import at_least, positive
from wsseg_fast.data import ImageLoadError
from wsseg_fast.sam.settings import EncoderSettings


@dataclass
class WeakTrainingConfig(EncoderSettings):
    coco: str
    """COCO JSON with the weak annotations."""

    out: str
    """Output directory: last.pt after every epoch (re-running resumes), log.jsonl, config.yaml, the
    trained weights."""

    images: str | None = None
    """Image directory (default: images/ beside the JSON)."""

    epochs: int = 10
    """Passes over the images."""

    lr: float = 1e-4
    """Learning rate."""

    seed: int = 0
    """Seed of the weights and the shuffling."""

    device: str = "cpu"
    """Where the models run."""

    threads: int | None = None
    """torch CPU threads."""

    RUNTIME = (*EncoderSettings.RUNTIME, "out", "threads", "device", "epochs")

    def validate(self) -> None:
        super().validate()
        at_least(1, epochs=self.epochs)
        positive(lr=self.lr)


@dataclass
class WeakItem:
    """One training image and its weak labels."""

    stem: str
    image: np.ndarray
    boxes: torch.Tensor  # [N, 4] x0, y0, x1, y1 pixels
    classes: torch.Tensor  # [N] class indices 1..C-1
    annotations: list[dict]  # COCO annotations (points, scribbles), same order as boxes
    tags: list[int]  # COCO category ids the image is tagged with
    embedding: object = None  # the cached Embedding when the encoder is frozen


def load_weak_items(dataset, log) -> list[WeakItem]:
    """The readable images of ``dataset`` that have at least one box (the others are logged and skipped)."""
    items = []
    for record in dataset.images:
        try:
            image = dataset.load_image(record)
        except ImageLoadError as exc:
            log(f"skipped: {exc}")
            continue
        boxes, classes = dataset.boxes(record)
        if len(boxes) == 0:
            log(f"skipped: {record.file_name} has no box to prompt SAM with")
            continue
        anns = [a for a in record.annotations if "bbox" in a]
        items.append(
            WeakItem(record.stem, image, torch.from_numpy(boxes), torch.from_numpy(classes), anns, record.tags)
        )
    return items


def embed_items(cfg: WeakTrainingConfig, items: list[WeakItem], log) -> None:
    """Sets every item's embedding from the frozen encoder, through the cache when one is given
    (encodes only the missing ones), and logs how many were encoded."""
    engine = cfg.engine(cfg.device)
    for item, embedding in zip(items, engine.embed([item.image for item in items])):
        item.embedding = embedding
    log(str(engine.stats))
