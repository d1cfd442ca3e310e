"""A trained student: load its checkpoint, label new images (``wsseg-fast predict``).

A ``sam-head`` student reads SAM features: its images go through the same engine as every stage
(the embedding cache, ``--backend``, ``--encoder-file``, ``--precision``), with the SAM model and
weights it was trained on (checked by digest).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from wsseg_fast.config import at_least
from wsseg_fast.errors import CheckpointError, ConfigError
from wsseg_fast.models.sam_head import SamFeatureHead
from wsseg_fast.models.student import MultiHeadUNet, build_student
from wsseg_fast.pipelines.label_maps import list_images, read_image, write_label
from wsseg_fast.pipelines.student.data import Frame, resize_image
from wsseg_fast.pipelines.training import CHECKPOINT_NAME, FORMAT
from wsseg_fast.sam.engine import SamEngine
from wsseg_fast.sam.settings import EncoderSettings

LEGACY_FORMAT = "wsseg_fast.student/1"  # checkpoints written before the shared run directory
_NOT_META = ("model", "optimizer", "scaler", "settings", "format", "trainer", "config")


def _meta(state, path: Path) -> dict:
    """The metadata of a student checkpoint of this version or the legacy one."""
    if isinstance(state, dict) and state.get("format") == FORMAT and state.get("trainer") == "student":
        return {**state["meta"], "epoch": state["epoch"], "history": state["history"]}
    if isinstance(state, dict) and state.get("format") == LEGACY_FORMAT:
        return {k: v for k, v in state.items() if k not in _NOT_META}
    raise CheckpointError(f"{str(path)!r} is not a student checkpoint written by train-student")


def build_from_meta(meta: dict) -> nn.Module:
    """The (untrained) network a student checkpoint's metadata describes."""
    if meta["arch"] == "sam-head":
        return SamFeatureHead(
            meta["num_classes"],
            meta["sam"]["level_shapes"],
            heads=meta["heads"],
            primary=meta["primary"],
            size=meta["size"],
            image_branch=meta["image_branch"],
            width=meta["head_width"],
        )
    return build_student(
        meta["arch"],
        meta["num_classes"],
        widths=tuple(meta["widths"]),
        heads=tuple(meta["heads"]),
        primary=meta["primary"] if meta["arch"] == "multihead" else None,
        encoder=meta.get("encoder", "conv"),
    )


def load_student(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The network of a student checkpoint (in eval mode) and its metadata."""

    path = Path(checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"student checkpoint {str(path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    meta = _meta(state, path)
    model = build_from_meta(meta)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), meta


def student_engine(meta: dict, settings: EncoderSettings | None = None, device: str = "cpu") -> SamEngine:
    """The engine that gives a ``sam-head`` student its features: ``settings`` (backend, exported file,
    precision, cache; default: every setting's default) with the student's SAM model, and its SAM
    checkpoint unless ``settings`` names one. Weights other than those it was trained on are refused."""
    sam = meta["sam"]
    settings = settings or EncoderSettings()
    settings = dataclasses.replace(settings, model=sam["model"], checkpoint=settings.checkpoint or sam["checkpoint"])
    engine = settings.engine(device)
    if engine.identity["weights"] != sam["weights"]:
        raise CheckpointError(
            f"the student was trained on the features of SAM {sam['model']} weights {sam['weights']} "
            f"({sam['checkpoint'] or 'seeded random weights'}); these SAM weights are {engine.identity['weights']}: "
            "give the SAM checkpoint it was trained with (--sam-checkpoint)"
        )
    return engine


class StudentPredictor:
    """A trained student ready to label images: uint8 ``[H, W, 3]`` images in, each head's logits
    ``[C, H, W]`` at each image's own size out (computed at the student's size, resized bilinearly).

    ``engine``: a ``sam-head`` student's :func:`student_engine`."""

    def __init__(self, model: nn.Module, meta: dict, engine: SamEngine | None = None):
        if meta["arch"] == "sam-head" and engine is None:
            raise ValueError("StudentPredictor: a sam-head student needs the engine of its SAM features")
        self.model, self.meta, self.engine = model, meta, engine
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def __call__(self, images: list[torch.Tensor], heads: list[str] | None = None) -> list[dict[str, torch.Tensor]]:
        """Per image, ``{head: logits}`` of ``heads`` (default: the primary head)."""
        heads = heads or [self.meta["primary"]]
        if self.meta["arch"] == "sam-head":
            out, frames = self._sam_head(images)
            return [
                {h: frame.crop(out[h][i], tuple(im.shape[:2]))[0] for h in heads}
                for i, (im, frame) in enumerate(zip(images, frames))
            ]
        x = torch.stack([resize_image(im, self.meta["size"]) for im in images]).to(self.device)
        if isinstance(self.model, MultiHeadUNet):
            out = self.model.predict(x) if heads == [self.meta["primary"]] else self.model(x)
            out = out if isinstance(out, dict) else {self.meta["primary"]: out}
        else:
            out = {self.meta["heads"][0]: self.model(x)}
        return [{h: _resize(out[h][i], tuple(im.shape[:2])) for h in heads} for i, im in enumerate(images)]

    def _sam_head(self, images: list[torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[Frame]]:
        embeddings = self.engine.embed([im.numpy() for im in images])
        frames = [Frame(tuple(im.shape[:2]), self.engine.img_size, self.meta["size"]) for im in images]
        inputs = [
            torch.stack([e.levels[k] for e in embeddings]).to(self.device) for k in range(len(embeddings[0].levels))
        ]
        if self.meta["image_branch"]:
            inputs.append(torch.stack([f.image(im) for f, im in zip(frames, images)]).to(self.device))
        return self.model(*inputs), frames


def _resize(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)[0].cpu()


def predict_logits(model: nn.Module, meta: dict, images: list[torch.Tensor], engine=None) -> list[torch.Tensor]:
    """uint8 ``[H, W, 3]`` images (any sizes) -> the primary head's ``[C, H, W]`` logits of each."""
    return [out[meta["primary"]] for out in StudentPredictor(model, meta, engine)(images)]


@dataclass
class PredictConfig(EncoderSettings):
    """``wsseg-fast predict``'s settings; the SAM ones are for ``sam-head`` students (the SAM model
    is the student's; its checkpoint too unless given)."""

    student: str
    """last.pt (or its directory) from train-student."""

    images: str
    """Directory of images to label."""

    out: str
    """Directory for <stem>.png label maps (with heads: OUT/<head>/<stem>.png)."""

    heads: list[str] | None = None
    """Write these heads' maps, or 'all' (default: the primary head's, as OUT/<stem>.png)."""

    batch_size: int = 8
    """Images per forward pass."""

    device: str | None = None
    """Default: cuda if available, else cpu."""

    def validate(self) -> None:
        super().validate()
        at_least(1, batch_size=self.batch_size)


def predict(
    checkpoint: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    device: str | None = None,
    progress: bool = True,
    heads: list[str] | None = None,
    encoder: EncoderSettings | None = None,
) -> list[Path]:
    """Label every image of ``images_dir``: ``out_dir/<stem>.png`` (palette PNG of class indices, the
    image's size) from the primary head, or with ``heads`` (names, or ``["all"]``) each head's map as
    ``out_dir/<head>/<stem>.png``; returns the written paths. ``encoder``: the SAM settings of a
    ``sam-head`` student (see :func:`student_engine`)."""

    if batch_size < 1:
        raise ConfigError(f"`batch_size` must be >= 1, got {batch_size}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, meta = load_student(checkpoint, device)
    if heads == ["all"]:
        heads = list(meta["heads"])
    unknown = sorted(set(heads or ()) - set(meta["heads"]))
    if unknown:
        raise ConfigError(
            f"heads {unknown} are not heads of the student; its heads: {', '.join(meta['heads'])}, or all"
        )
    engine = student_engine(meta, encoder, device) if meta["arch"] == "sam-head" else None
    predictor = StudentPredictor(model, meta, engine)
    paths = list_images(images_dir)
    out = Path(out_dir)
    targets = {h: out / h for h in heads} if heads else {meta["primary"]: out}
    for directory in targets.values():
        directory.mkdir(parents=True, exist_ok=True)
    written = []
    for start in tqdm(range(0, len(paths), batch_size), desc="predict", disable=not progress, leave=False):
        chunk = paths[start : start + batch_size]
        for path, logits in zip(chunk, predictor([read_image(p) for p in chunk], list(targets))):
            for head, directory in targets.items():
                write_label(directory / f"{path.stem}.png", logits[head].argmax(0))
                written.append(directory / f"{path.stem}.png")
    return written
