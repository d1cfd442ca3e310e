"""A trained student: load its checkpoint, label new images (``wsseg-fast predict``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from wsseg_fast.errors import CheckpointError, ConfigError
from wsseg_fast.models.student import MultiHeadUNet, build_student
from wsseg_fast.pipelines.label_maps import list_images, read_image, write_label
from wsseg_fast.pipelines.student.data import resize_image
from wsseg_fast.pipelines.training import CHECKPOINT_NAME, FORMAT

LEGACY_FORMAT = "wsseg_fast.student/1"  # checkpoints written before the shared run directory
_NOT_META = ("model", "optimizer", "scaler", "settings", "format", "trainer", "config")


def _meta(state, path: Path) -> dict:
    """The metadata of a student checkpoint of this version or the legacy one."""
    if isinstance(state, dict) and state.get("format") == FORMAT and state.get("trainer") == "student":
        return {**state["meta"], "epoch": state["epoch"], "history": state["history"]}
    if isinstance(state, dict) and state.get("format") == LEGACY_FORMAT:
        return {k: v for k, v in state.items() if k not in _NOT_META}
    raise CheckpointError(f"{str(path)!r} is not a student checkpoint written by train-student")


def load_student(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The network of a student checkpoint (in eval mode) and its metadata."""

    path = Path(checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"student checkpoint {str(path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    meta = _meta(state, path)
    model = build_student(
        meta["arch"],
        meta["num_classes"],
        widths=tuple(meta["widths"]),
        heads=tuple(meta["heads"]),
        primary=meta["primary"] if meta["arch"] == "multihead" else None,
    )
    model.load_state_dict(state["model"])
    return model.to(device).eval(), meta


@torch.no_grad()
def predict_logits(model: nn.Module, meta: dict, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """uint8 ``[H, W, 3]`` images (any sizes) -> ``[C, H, W]`` logits of each,
    computed at the training size and resized back bilinearly."""

    device = next(model.parameters()).device
    x = torch.stack([resize_image(im, meta["size"]) for im in images]).to(device)
    logits = model.predict(x) if isinstance(model, MultiHeadUNet) else model(x)
    return [
        F.interpolate(logits[i : i + 1].float(), size=im.shape[:2], mode="bilinear", align_corners=False)[0].cpu()
        for i, im in enumerate(images)
    ]


def predict(
    checkpoint: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    device: str | None = None,
    progress: bool = True,
) -> list[Path]:
    """Label every image of ``images_dir``; writes ``out_dir/<stem>.png`` (palette
    PNG of class indices, the image's size) and returns the written paths."""

    if batch_size < 1:
        raise ConfigError(f"`batch_size` must be >= 1, got {batch_size}")
    model, meta = load_student(checkpoint, device or ("cuda" if torch.cuda.is_available() else "cpu"))
    paths = list_images(images_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for start in tqdm(range(0, len(paths), batch_size), desc="predict", disable=not progress, leave=False):
        chunk = paths[start : start + batch_size]
        for path, logits in zip(chunk, predict_logits(model, meta, [read_image(p) for p in chunk])):
            target = out / f"{path.stem}.png"
            write_label(target, logits.argmax(0))
            written.append(target)
    return written
