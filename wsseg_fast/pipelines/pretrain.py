"""Promptable pre-training of SAM from dense instance masks, class-agnostic, as SAM was trained.

Each step takes a batch of images; for each image, up to ``max_instances`` of its instances
are prompted — by their box (jittered: noise of ``box_jitter`` times the side, at most 20 px
of a 1024-px input) or by one point inside the mask — and then by ``clicks`` corrective
clicks: a point drawn from the error region of the previous prediction (positive where the
mask was missed, negative where it overflowed), given together with the previous low-res
mask logits. Losses as in the SAM paper: 20 · focal + 1 · dice on the mask logits, MSE between
the predicted IoU and the mask's real IoU; a point alone is ambiguous, so it gets three masks
and only the best one (lowest mask loss) is trained.

The mask losses are taken where every command reads the masks: the decoder's ``4g x 4g``
logits upsampled (bilinear, as SAM's post-processing) to the ``S x S`` input frame, against the
binary masks there. At the low resolution itself (``loss_resolution="low"``, against each
instance's share of every low-res pixel) a thing under half a low-res pixel wide -- a pole --
has no pixel of its own, and the model learns to answer its box with an empty mask.

The whole SAM trains (encoder, prompt encoder, decoder) from its random initialisation or
from ``--checkpoint`` (a real SAM fine-tuned on a user's fully labelled subset). The result
``sam.pth`` is a plain state dict: ``--model M --checkpoint OUT/sam.pth`` loads it in every
command. Images and masks are prepared once (resized to the model's input), so an epoch never
re-reads files.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from wsseg_fast.config import Config, at_least, choice, positive, within
from wsseg_fast.data import CocoWeakDataset, ImageLoadError
from wsseg_fast.data.weak import mask_bbox
from wsseg_fast.errors import DataError
from wsseg_fast.pipelines.training import Amp, Meter, RunDir, autocast_dtype, fit
from wsseg_fast.sam.prompting import predict_masks, zoom_windows
from wsseg_fast.sam.registry import MODELS, build_model, model_weights_id

WEIGHTS_NAME = "sam.pth"
MAX_JITTER_PX = 20 / 1024  # SAM's box noise cap, as a fraction of the input size


@dataclass
class PretrainConfig(Config):
    coco: str
    """COCO JSON whose annotations carry a `segmentation` (instances; classes are ignored)."""

    out: str
    """Output directory: sam.pth (SAM weights, after every epoch), last.pt (re-running resumes), log.jsonl."""

    images: str | None = None
    """Image directory (default: images/ beside the JSON)."""

    model: str = choice("tiny", MODELS)
    """SAM variant to train."""

    checkpoint: str | None = None
    """Weights to start from, e.g. an official SAM (none: the seeded random init)."""

    epochs: int = 10
    """Passes over the images."""

    lr: float = 3e-4
    """AdamW learning rate."""

    lr_schedule: Literal["constant", "cosine"] = "constant"
    """constant, or cosine: per step from lr down to 0 at the end of epochs (resuming then needs the
    same epochs)."""

    weight_decay: float = 0.01
    """AdamW weight decay."""

    batch_size: int = 4
    """Images per step (one encoder pass)."""

    max_instances: int = 8
    """Instances prompted per image and step (drawn at random)."""

    box_fraction: float = 0.5
    """Share of instances prompted by a jittered box; the others by one point."""

    box_jitter: float = 0.1
    """Box noise: this fraction of the box's side (at most 20 px of a 1024-px input)."""

    clicks: int = 1
    """Corrective clicks per instance after the first prompt (each one more decoder pass)."""

    hflip: bool = False
    """Mirror images (and their masks and boxes) left-right at random (augmentation)."""

    zoom: float = 0.0
    """Share of images per step shown in the zoom window of one of their small instances (the window
    in which `sam-box zoom=true` decodes a small box), with the instances inside it."""

    loss_resolution: Literal["input", "low"] = "input"
    """Mask losses on the logits upsampled to the input frame (binary masks), or at the decoder's
    low resolution against each mask's share of its pixels (thin things vanish there)."""

    focal_weight: float = 20.0
    """Weight of the focal mask loss."""

    dice_weight: float = 1.0
    """Weight of the dice mask loss."""

    iou_weight: float = 1.0
    """Weight of the predicted-IoU regression."""

    amp: Amp = "auto"
    """Mixed precision (auto: bf16/fp16 on CUDA, fp32 on CPU; bf16 pays on CPUs with AMX units: the
    decoder's matmuls; losses stay in fp32)."""

    seed: int = 0
    """Seed of the weights, the order and the prompts."""

    device: str = "cpu"
    """Where SAM trains."""

    threads: int | None = None
    """torch CPU threads."""

    RUNTIME = ("out", "threads", "device", "epochs")

    def validate(self) -> None:
        at_least(1, epochs=self.epochs, batch_size=self.batch_size, max_instances=self.max_instances)
        at_least(0, clicks=self.clicks)
        positive(lr=self.lr)
        within(0, 1, box_fraction=self.box_fraction, box_jitter=self.box_jitter, zoom=self.zoom)

    def run_settings(self) -> dict:
        """What a resumed run must repeat, and the epoch count a cosine schedule spans."""
        settings = super().run_settings()
        if self.lr_schedule == "cosine":
            settings["epochs"] = self.epochs
        return settings


@dataclass
class _Sample:
    """One image, ready for the encoder, and its instances at the loss's resolution."""

    stem: str
    pixels: torch.Tensor  # [3, S, S] normalised input
    masks: torch.Tensor  # [N, S, S] bool (loss_resolution "input"), or [N, 4g, 4g] float: each
    # instance's share of every low-res pixel ("low")
    boxes: torch.Tensor  # [N, 4] x0, y0, x1, y1 in the S x S input frame (exact, from the full-res mask)
    original: _Original | None = None  # kept for zoomed windows (``zoom`` > 0)


@dataclass
class _Original:
    """An image as read and its instances (COCO RLE, compact), for cutting zoomed windows."""

    image: np.ndarray  # [H, W, 3] uint8
    rles: list  # N pycocotools RLEs
    boxes: np.ndarray  # [N, 4] x0, y0, x1, y1 pixels


def _framed(stem: str, image: np.ndarray, masks: np.ndarray, model, loss_resolution: str) -> _Sample:
    """An image and its ``[N, H, W]`` bool instance masks in the model's ``S x S`` input frame."""
    h, w = image.shape[:2]
    img_size = model.img_size
    pixels, (rh, rw) = model.preprocess(image)
    full = torch.from_numpy(masks).float()[:, None]
    resized = F.interpolate(full, size=(rh, rw), mode="area")[:, 0]  # share of each resized pixel
    framed = F.pad(resized, (0, img_size - rw, 0, img_size - rh))
    if loss_resolution == "low":
        targets = F.adaptive_avg_pool2d(framed[:, None], 4 * model.grid)[:, 0]
    else:
        targets = framed >= 0.5
    boxes = torch.tensor([mask_bbox(m) for m in masks], dtype=torch.float32)  # x, y, w, h
    boxes = torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1) * torch.tensor([rw / w, rh / h, rw / w, rh / h])
    return _Sample(stem, pixels, targets, boxes)


def prepare_samples(
    dataset: CocoWeakDataset, model, log, loss_resolution: str = "input", keep_originals: bool = False
) -> list[_Sample]:
    """Every readable image with at least one instance mask, at the model's input size; masks
    binary in the input frame, or as shares of the low-res pixels (``loss_resolution="low"``);
    with ``keep_originals`` the image as read and its masks too (for :func:`zoomed`)."""
    if not dataset.has_segmentation():
        raise DataError(
            f"{dataset.annotation_file}: no annotation has a `segmentation`; pre-training needs "
            "instance masks (write them with `wsseg-fast make-weak`)"
        )
    samples = []
    for record in dataset.images:
        try:
            image = dataset.load_image(record)
        except ImageLoadError as exc:
            log(f"skipped: {exc}")
            continue
        h, w = image.shape[:2]
        masks = [m for m in dataset.instance_masks(record, h, w) if m.any()]
        if not masks:
            continue
        sample = _framed(record.stem, image, np.stack(masks), model, loss_resolution)
        if keep_originals:
            boxes = np.array([mask_bbox(m) for m in masks], np.float32)
            boxes[:, 2:] += boxes[:, :2]
            sample.original = _Original(
                image, mask_utils.encode(np.asfortranarray(np.stack(masks, -1).astype(np.uint8))), boxes
            )
        samples.append(sample)
    if not samples:
        raise DataError(f"{dataset.annotation_file}: no readable image has a non-empty instance mask")
    return samples


def zoomed(sample: _Sample, model, loss_resolution: str, generator: torch.Generator) -> _Sample:
    """The sample shown in the zoom window of one of its small instances (drawn at random; the
    window ``sam-box zoom=true`` decodes that box in), with the instances lying wholly inside it;
    the sample itself if no instance is small enough to be zoomed."""
    original = sample.original
    windows = list(zoom_windows(original.boxes, *original.image.shape[:2]).values())
    if not windows:
        return sample
    x0, y0, x1, y1 = windows[int(torch.randint(len(windows), (1,), generator=generator))]
    inside = np.nonzero(
        (original.boxes[:, 0] >= x0)
        & (original.boxes[:, 1] >= y0)
        & (original.boxes[:, 2] <= x1)
        & (original.boxes[:, 3] <= y1)
    )[0]
    masks = mask_utils.decode([original.rles[i] for i in inside]).transpose(2, 0, 1)[:, y0:y1, x0:x1].astype(bool)
    return _framed(sample.stem, np.ascontiguousarray(original.image[y0:y1, x0:x1]), masks, model, loss_resolution)


def _focal(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss, mean over the pixels of each mask: ``[..., H, W] -> [...]``."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    weight = alpha * target + (1 - alpha) * (1 - target)
    return (weight * ce * (1 - p_t) ** gamma).mean((-2, -1))


def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    return 1 - (2 * (p * target).sum((-2, -1)) + 1) / (p.sum((-2, -1)) + target.sum((-2, -1)) + 1)


def _iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    predicted, truth = logits > 0, target >= 0.5
    union = (predicted | truth).sum((-2, -1))
    return torch.where(
        union > 0, (predicted & truth).sum((-2, -1)) / union.clamp(min=1), torch.ones_like(union, dtype=torch.float32)
    )


def sample_prompts(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    img_size: int,
    box_fraction: float,
    box_jitter: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ``N`` instances: whether each is box-prompted ``[N]``, jittered boxes ``[N, 4]`` and one
    point inside each mask ``[N, 1, 2]`` (input-frame pixels; drawn among the mask's pixels -- the
    ones it covers most, if given as shares -- at a random place inside that pixel)."""
    n, res = masks.shape[0], masks.shape[-1]
    use_box = torch.rand(n, generator=generator) < box_fraction
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).repeat(1, 2)
    noise = torch.randn(n, 4, generator=generator) * box_jitter * side
    noise = noise.clamp(-MAX_JITTER_PX * img_size, MAX_JITTER_PX * img_size)
    jittered = (boxes + noise).clamp(0, img_size)
    jittered = torch.cat(
        [torch.minimum(jittered[:, :2], jittered[:, 2:] - 1), torch.maximum(jittered[:, 2:], jittered[:, :2] + 1)], 1
    )
    flat = masks.reshape(n, -1).float()
    inside = flat >= flat.max(1, keepdim=True).values.clamp(max=0.5)  # the mask's pixels (its best ones if thin)
    weights = inside.float() + 1e-12
    cell = torch.multinomial(weights, 1, generator=generator)[:, 0]
    scale = img_size / res
    offset = torch.rand(n, 2, generator=generator)
    points = torch.stack([(cell % res).float(), (cell // res).float()], 1).add(offset).mul(scale)
    return use_box, jittered, points[:, None]


def corrective_click(
    logits: torch.Tensor, target: torch.Tensor, img_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per mask from its error region: ``[N, 1, 2]`` points (input frame) and ``[N, 1]``
    labels (1 where the mask was missed, 0 where it overflowed); a mask without error gets a
    positive click inside the object."""
    n, res = logits.shape[0], logits.shape[-1]
    target = target.float()
    predicted, truth = logits > 0, target >= 0.5
    missed, extra = (truth & ~predicted).reshape(n, -1), (predicted & ~truth).reshape(n, -1)
    error = missed | extra
    fallback = truth.reshape(n, -1) | (target.reshape(n, -1) >= target.reshape(n, -1).max(1, keepdim=True).values)
    weights = torch.where(error.any(1, keepdim=True), error, fallback).float() + 1e-12
    cell = torch.multinomial(weights, 1, generator=generator)[:, 0]
    labels = ~extra.gather(1, cell[:, None])  # a click on an overflow is negative
    scale = img_size / res
    offset = torch.rand(n, 2, generator=generator)
    points = torch.stack([(cell % res).float(), (cell // res).float()], 1).add(offset).mul(scale)
    return points[:, None], labels.long()


def instance_losses(
    sam,
    embedding: list[torch.Tensor],
    sample: _Sample,
    chosen: torch.Tensor,
    cfg: PretrainConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict]:
    """The summed losses of the ``chosen`` instances of one image (its feature levels in the input
    frame; first prompt, then the clicks).
    Prompts and clicks are drawn on the CPU (the seeded generator), losses taken on the model's device."""
    img_size, device = sam.img_size, embedding[0].device
    target = sample.masks[chosen].float()
    target_on_device = target.to(device)
    size = target.shape[-2:]  # where the losses are taken
    low = (4 * sam.grid, 4 * sam.grid)
    use_box, boxes, points = sample_prompts(
        target, sample.boxes[chosen], img_size, cfg.box_fraction, cfg.box_jitter, generator
    )
    total, parts = embedding[0].new_zeros((), dtype=torch.float32), {"focal": 0.0, "dice": 0.0, "iou": 0.0}
    previous = torch.zeros(len(chosen), 1, *low, device=device)
    click_points = torch.zeros(len(chosen), 0, 2)
    click_labels = torch.zeros(len(chosen), 0, dtype=torch.long)
    for round_ in range(cfg.clicks + 1):
        logits, low_logits = torch.zeros(len(chosen), 1, *size), torch.zeros(len(chosen), 1, *low, device=device)
        for by_box in (True, False):
            idx = torch.nonzero(use_box == by_box)[:, 0]
            if len(idx) == 0:
                continue
            pts = click_points[idx] if by_box else torch.cat([points[idx], click_points[idx]], 1)
            lbl = (
                click_labels[idx]
                if by_box
                else torch.cat([torch.ones(len(idx), 1, dtype=torch.long), click_labels[idx]], 1)
            )
            multimask = not by_box and round_ == 0  # a lone point is ambiguous
            prediction = predict_masks(
                sam,
                embedding,
                boxes=boxes[idx] if by_box else None,
                points=pts if pts.shape[1] else None,
                point_labels=lbl if pts.shape[1] else None,
                mask_inputs=previous[idx] if round_ else None,
                multimask_output=multimask,
                output_size=tuple(size),
            )
            masks = (
                prediction.low_res_logits if cfg.loss_resolution == "low" else prediction.logits
            ).float()  # [n, M, *size]
            scores = prediction.scores.float()  # [n, M]
            truth = target_on_device[idx, None].expand_as(masks)
            mask_loss = cfg.focal_weight * _focal(masks, truth) + cfg.dice_weight * _dice(masks, truth)
            best = mask_loss.argmin(1)  # the best of the candidates is trained, as SAM does
            rows = torch.arange(len(idx), device=device)
            iou_loss = F.mse_loss(scores, _iou(masks.detach(), truth), reduction="none").mean(1)
            total = total + (mask_loss[rows, best] + cfg.iou_weight * iou_loss).sum()
            with torch.no_grad():  # per prompt round, for the log
                parts["focal"] += float(_focal(masks[rows, best], truth[rows, best]).sum()) / (cfg.clicks + 1)
                parts["dice"] += float(_dice(masks[rows, best], truth[rows, best]).sum()) / (cfg.clicks + 1)
                parts["iou"] += float(iou_loss.sum()) / (cfg.clicks + 1)
            logits[idx] = masks[rows, best][:, None].detach().cpu()
            low_logits[idx] = prediction.low_res_logits[rows, best][:, None].detach().float()
        if round_ < cfg.clicks:
            new_points, new_labels = corrective_click(logits[:, 0], target, img_size, generator)
            click_points, click_labels = (
                torch.cat([click_points, new_points], 1),
                torch.cat([click_labels, new_labels], 1),
            )
            previous = low_logits
    return total, parts


def mirrored(sample: _Sample) -> _Sample:
    """The sample mirrored left-right in the ``S x S`` input frame (padding included)."""
    size = sample.pixels.shape[-1]
    boxes = torch.stack(
        [size - sample.boxes[:, 2], sample.boxes[:, 1], size - sample.boxes[:, 0], sample.boxes[:, 3]], 1
    )
    return _Sample(sample.stem, sample.pixels.flip(-1), sample.masks.flip(-1), boxes)


def _lr_at(cfg: PretrainConfig, step: int, total: int) -> float:
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
    return cfg.lr


class PretrainTrainer:
    """Build (the samples, SAM, its optimizer), one epoch, and the state of a pre-training run."""

    def __init__(self, cfg: PretrainConfig, progress: bool, say):
        self.cfg, self.progress = cfg, progress
        self.device = torch.device(cfg.device)
        self.sam = build_model(cfg.model, cfg.checkpoint).to(self.device)
        self.samples = prepare_samples(
            CocoWeakDataset(cfg.coco, cfg.images), self.sam, say, cfg.loss_resolution, keep_originals=cfg.zoom > 0
        )
        say(
            f"pre-training SAM {cfg.model} on {len(self.samples)} images, "
            f"{sum(len(s.masks) for s in self.samples)} instances"
        )
        self.optimizer = torch.optim.AdamW(self.sam.module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.amp_dtype = autocast_dtype(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.steps = math.ceil(len(self.samples) / cfg.batch_size)
        self.meta = {"weights": model_weights_id(cfg.model, cfg.checkpoint)}

    def _batch(self, order: list[int], step: int, generator: torch.Generator) -> list[_Sample]:
        """The step's samples, zoomed and mirrored at random as the settings ask."""
        cfg = self.cfg
        batch = [self.samples[i] for i in order[step * cfg.batch_size : (step + 1) * cfg.batch_size]]
        if cfg.zoom > 0:
            zooms = torch.rand(len(batch), generator=generator) < cfg.zoom
            batch = [
                zoomed(s, self.sam, cfg.loss_resolution, generator) if z else s for s, z in zip(batch, zooms.tolist())
            ]
        if cfg.hflip:
            flips = torch.rand(len(batch), generator=generator) < 0.5
            batch = [mirrored(s) if flip else s for s, flip in zip(batch, flips.tolist())]
        return batch

    def _step(self, batch: list[_Sample], generator: torch.Generator, meter: Meter) -> float:
        cfg, device = self.cfg, self.device
        loss, count = torch.zeros((), device=device), 0
        with torch.autocast(device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            levels = self.sam.encode(torch.stack([s.pixels for s in batch]).to(device))
            for j, sample in enumerate(batch):
                embedding = [t[j] for t in levels]
                chosen = torch.randperm(len(sample.masks), generator=generator)[: cfg.max_instances]
                image_loss, parts = instance_losses(self.sam, embedding, sample, chosen, cfg, generator)
                loss = loss + image_loss
                count += len(chosen)
                meter.add_sums(len(chosen), **parts)  # summed over the image's instances
        loss = loss / count
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        meter.add(weight=count, loss=float(loss.detach()))
        return float(loss.detach())

    def train_epoch(self, epoch: int) -> dict:
        cfg = self.cfg
        self.sam.module.train()
        began = time.perf_counter()
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.samples), generator=generator).tolist()
        meter = Meter("loss", "focal", "dice", "iou")  # per instance
        bar = tqdm(
            range(self.steps),
            desc=f"pretrain-sam epoch {epoch + 1}/{cfg.epochs}",
            unit="step",
            disable=not self.progress,
            leave=False,
        )
        for step in bar:
            batch = self._batch(order, step, generator)
            for group in self.optimizer.param_groups:
                group["lr"] = _lr_at(cfg, epoch * self.steps + step, cfg.epochs * self.steps)
            loss = self._step(batch, generator, meter)
            bar.set_postfix(loss=f"{loss:.4f}")
        seconds = time.perf_counter() - began
        return {
            **meter.means(),
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 3),
            "seconds_per_step": round(seconds / self.steps, 4),
        }

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.sam.module.state_dict().items()}

    def state_dict(self) -> dict:
        return {
            "meta": self.meta,
            "model": self.weights(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.sam.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])

    def describe(self, record: dict) -> str:
        return (
            f"loss {record['loss']:.4f} focal {record['focal']:.4f} dice {record['dice']:.4f} "
            f"iou-mse {record['iou']:.4f}"
        )


def pretrain_sam(cfg: PretrainConfig, progress: bool = True) -> Path:
    """Run (or resume) the pre-training; returns the path of ``sam.pth`` (written after every
    epoch, so the weights are usable while it runs)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    say = print if progress else (lambda text: None)
    run = RunDir(cfg.out, "pretrain", cfg)
    trainer = PretrainTrainer(cfg, progress, say)
    save = lambda *_: run.save_artifact(WEIGHTS_NAME, trainer.weights())  # noqa: E731
    if fit(trainer, run, cfg.epochs, say, on_epoch_end=save) >= cfg.epochs:  # nothing left to train:
        save()  # the weights of the checkpoint it resumed (a kill may have come before their sam.pth)
    return run.path / WEIGHTS_NAME
