"""Promptable pre-training of SAM from dense instance masks, class-agnostic, as SAM was trained.

Each step takes a batch of images; for each image, up to ``max_instances`` of its instances
are prompted — by their box (jittered: noise of ``box_jitter`` times the side, at most 20 px
of a 1024-px input) or by one point inside the mask — and then by ``clicks`` corrective
clicks: a point drawn from the error region of the previous prediction (positive where the
mask was missed, negative where it overflowed), given together with the previous low-res
mask logits. Losses as in the SAM paper: 20 · focal + 1 · dice on the low-res mask logits,
MSE between the predicted IoU and the mask's real IoU; a point alone is ambiguous, so it gets
three masks and only the best one (lowest mask loss) is trained.

The whole SAM trains (encoder, prompt encoder, decoder) from its random initialisation or
from ``--checkpoint`` (a real SAM fine-tuned on a user's fully labelled subset). The result
``sam.pth`` is a plain state dict: ``--model M --checkpoint OUT/sam.pth`` loads it in every
command. Images and masks are prepared once (resized to the model's input, masks at the
decoder's low resolution), so an epoch never re-reads files.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from wsseg_fast.data import CocoWeakDataset, ImageLoadError
from wsseg_fast.data.weak import mask_bbox
from wsseg_fast.io import append_jsonl, atomic_torch_save
from wsseg_fast.pipelines.weak_training import run_settings
from wsseg_fast.sam.model import MODEL_CONFIGS, PATCH_SIZE, build_sam
from wsseg_fast.sam.prompting import predict_masks, preprocess

CHECKPOINT_NAME = "last.pt"
WEIGHTS_NAME = "sam.pth"
CHECKPOINT_FORMAT = "wsseg_fast.pretrain/1"
MAX_JITTER_PX = 20 / 1024  # SAM's box noise cap, as a fraction of the input size


class PretrainError(ValueError):
    """A setting or input the pre-training cannot use; the message says which."""


@dataclass
class PretrainConfig:
    coco: str
    """COCO JSON whose annotations carry ``segmentation`` (instances; classes are ignored)."""

    out: str
    """Output directory: ``last.pt`` (resumable state), ``sam.pth`` (SAM weights), ``log.jsonl``."""

    images: str | None = None
    model: str = "tiny"
    checkpoint: str | None = None
    """Weights to start from (e.g. an official SAM checkpoint); ``None``: the seeded random init."""

    epochs: int = 10
    lr: float = 3e-4
    weight_decay: float = 0.01
    batch_size: int = 4
    """Images per step (one encoder pass)."""

    max_instances: int = 8
    """Instances prompted per image and step (drawn at random)."""

    box_fraction: float = 0.5
    """Share of instances prompted by their box; the others by one point."""

    box_jitter: float = 0.1
    clicks: int = 1
    """Corrective clicks after the first prompt (each one more decoder pass)."""

    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None


@dataclass
class _Sample:
    """One image, ready for the encoder, and its instances at the decoder's resolution."""

    stem: str
    pixels: torch.Tensor   # [3, S, S] normalised input
    masks: torch.Tensor    # [N, 4g, 4g] float: each instance's share of every low-res pixel
    boxes: torch.Tensor    # [N, 4] x0, y0, x1, y1 in the S x S input frame (exact, from the full-res mask)


def _validate(cfg: PretrainConfig) -> None:
    if cfg.model not in MODEL_CONFIGS:
        raise PretrainError(f"model must be one of {', '.join(MODEL_CONFIGS)}, got {cfg.model!r}")
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "max_instances": cfg.max_instances}
    for name, value in positive.items():
        if not (isinstance(value, int) and value >= 1):
            raise PretrainError(f"{name} must be an integer >= 1, got {value!r}")
    if not (isinstance(cfg.clicks, int) and cfg.clicks >= 0):
        raise PretrainError(f"clicks must be an integer >= 0, got {cfg.clicks!r}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise PretrainError(f"lr must be a positive number, got {cfg.lr!r}")
    for name in ("box_fraction", "box_jitter"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise PretrainError(f"{name} must lie in [0, 1], got {getattr(cfg, name)!r}")


def prepare_samples(dataset: CocoWeakDataset, img_size: int, log) -> list[_Sample]:
    """Every readable image with at least one instance mask, at the model's input size."""
    if not dataset.has_segmentation():
        raise PretrainError(f"{dataset.annotation_file}: no annotation has a `segmentation`; pre-training needs "
                            "instance masks (write them with `wsseg-fast make-weak`)")
    low = 4 * (img_size // PATCH_SIZE)
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
        pixels, (rh, rw) = preprocess(image, img_size)
        full = torch.from_numpy(np.stack(masks)).float()[:, None]
        resized = F.interpolate(full, size=(rh, rw), mode="area")[:, 0]  # share of each resized pixel
        framed = F.pad(resized, (0, img_size - rw, 0, img_size - rh))
        low_res = F.adaptive_avg_pool2d(framed[:, None], low)[:, 0]
        boxes = torch.tensor([mask_bbox(m) for m in masks], dtype=torch.float32)  # x, y, w, h
        boxes = torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1) * torch.tensor([rw / w, rh / h, rw / w, rh / h])
        samples.append(_Sample(record.stem, pixels, low_res, boxes))
    if not samples:
        raise PretrainError(f"{dataset.annotation_file}: no readable image has a non-empty instance mask")
    return samples


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
    return torch.where(union > 0, (predicted & truth).sum((-2, -1)) / union.clamp(min=1), torch.ones_like(union, dtype=torch.float32))


def sample_prompts(masks: torch.Tensor, boxes: torch.Tensor, img_size: int, box_fraction: float, box_jitter: float,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ``N`` instances: whether each is box-prompted ``[N]``, jittered boxes ``[N, 4]`` and one
    point inside each mask ``[N, 1, 2]`` (input-frame pixels; drawn among the low-res pixels the
    instance covers most, at a random place inside that pixel)."""
    n, low = masks.shape[0], masks.shape[-1]
    use_box = torch.rand(n, generator=generator) < box_fraction
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).repeat(1, 2)
    noise = torch.randn(n, 4, generator=generator) * box_jitter * side
    noise = noise.clamp(-MAX_JITTER_PX * img_size, MAX_JITTER_PX * img_size)
    jittered = (boxes + noise).clamp(0, img_size)
    jittered = torch.cat([torch.minimum(jittered[:, :2], jittered[:, 2:] - 1), torch.maximum(jittered[:, 2:], jittered[:, :2] + 1)], 1)
    flat = masks.reshape(n, -1)
    inside = flat >= flat.max(1, keepdim=True).values.clamp(max=0.5)  # the mask's pixels (its best ones if thin)
    weights = inside.float() + 1e-12
    cell = torch.multinomial(weights, 1, generator=generator)[:, 0]
    scale = img_size / low
    offset = torch.rand(n, 2, generator=generator)
    points = torch.stack([(cell % low).float(), (cell // low).float()], 1).add(offset).mul(scale)
    return use_box, jittered, points[:, None]


def corrective_click(logits: torch.Tensor, target: torch.Tensor, img_size: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per mask from its error region: ``[N, 1, 2]`` points (input frame) and ``[N, 1]``
    labels (1 where the mask was missed, 0 where it overflowed); a mask without error gets a
    positive click inside the object."""
    n, low = logits.shape[0], logits.shape[-1]
    predicted, truth = logits > 0, target >= 0.5
    missed, extra = (truth & ~predicted).reshape(n, -1), (predicted & ~truth).reshape(n, -1)
    error = missed | extra
    fallback = truth.reshape(n, -1) | (target.reshape(n, -1) >= target.reshape(n, -1).max(1, keepdim=True).values)
    weights = torch.where(error.any(1, keepdim=True), error, fallback).float() + 1e-12
    cell = torch.multinomial(weights, 1, generator=generator)[:, 0]
    labels = ~extra.gather(1, cell[:, None])  # a click on an overflow is negative
    scale = img_size / low
    offset = torch.rand(n, 2, generator=generator)
    points = torch.stack([(cell % low).float(), (cell // low).float()], 1).add(offset).mul(scale)
    return points[:, None], labels.long()


def instance_losses(sam, embedding: torch.Tensor, sample: _Sample, chosen: torch.Tensor, cfg: PretrainConfig,
                    generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """The summed losses of the ``chosen`` instances of one image (first prompt, then the clicks)."""
    img_size = sam.prompt_encoder.input_image_size[0]
    target = sample.masks[chosen]
    low = target.shape[-2:]
    use_box, boxes, points = sample_prompts(target, sample.boxes[chosen], img_size, cfg.box_fraction, cfg.box_jitter,
                                            generator)
    total, parts = embedding.new_zeros(()), {"focal": 0.0, "dice": 0.0, "iou": 0.0}
    previous = torch.zeros(len(chosen), 1, *low)
    click_points = torch.zeros(len(chosen), 0, 2)
    click_labels = torch.zeros(len(chosen), 0, dtype=torch.long)
    for round_ in range(cfg.clicks + 1):
        logits = torch.zeros(len(chosen), 1, *low)
        for by_box in (True, False):
            idx = torch.nonzero(use_box == by_box)[:, 0]
            if len(idx) == 0:
                continue
            pts = click_points[idx] if by_box else torch.cat([points[idx], click_points[idx]], 1)
            lbl = click_labels[idx] if by_box else torch.cat([torch.ones(len(idx), 1, dtype=torch.long), click_labels[idx]], 1)
            multimask = not by_box and round_ == 0  # a lone point is ambiguous
            prediction = predict_masks(sam, embedding, boxes=boxes[idx] if by_box else None,
                                       points=pts if pts.shape[1] else None, point_labels=lbl if pts.shape[1] else None,
                                       mask_inputs=previous[idx] if round_ else None, multimask_output=multimask,
                                       output_size=tuple(low))
            masks, scores = prediction.low_res_logits, prediction.scores  # [n, M, 4g, 4g], [n, M]
            truth = target[idx, None].expand_as(masks)
            mask_loss = cfg.focal_weight * _focal(masks, truth) + cfg.dice_weight * _dice(masks, truth)
            best = mask_loss.argmin(1)  # the best of the candidates is trained, as SAM does
            rows = torch.arange(len(idx))
            iou_loss = F.mse_loss(scores, _iou(masks.detach(), truth), reduction="none").mean(1)
            total = total + (mask_loss[rows, best] + cfg.iou_weight * iou_loss).sum()
            with torch.no_grad():  # per prompt round, for the log
                parts["focal"] += float(_focal(masks[rows, best], truth[rows, best]).sum()) / (cfg.clicks + 1)
                parts["dice"] += float(_dice(masks[rows, best], truth[rows, best]).sum()) / (cfg.clicks + 1)
                parts["iou"] += float(iou_loss.sum()) / (cfg.clicks + 1)
            logits[idx] = masks[rows, best][:, None].detach()
        if round_ < cfg.clicks:
            new_points, new_labels = corrective_click(logits[:, 0], target, img_size, generator)
            click_points, click_labels = torch.cat([click_points, new_points], 1), torch.cat([click_labels, new_labels], 1)
            previous = logits
    return total, parts


def _resume(cfg: PretrainConfig, out: Path, sam, optimizer) -> int:
    path = out / CHECKPOINT_NAME
    if not path.exists():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainError(f"{path} cannot be read ({exc}); delete it to start over") from None
    if state.get("format") != CHECKPOINT_FORMAT or state.get("config") != run_settings(cfg):
        raise PretrainError(f"{out} holds a pre-training run with other settings; use another --out or delete {path}")
    sam.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"])


def pretrain_sam(cfg: PretrainConfig, progress: bool = True) -> Path:
    """Run (or resume) the pre-training; returns the path of ``sam.pth``."""
    _validate(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log = (lambda message: print(message, flush=True)) if progress else (lambda message: None)
    img_size = MODEL_CONFIGS[cfg.model].img_size
    samples = prepare_samples(CocoWeakDataset(cfg.coco, cfg.images), img_size, log)
    log(f"pre-training SAM {cfg.model} on {len(samples)} images, {sum(len(s.masks) for s in samples)} instances")

    device = torch.device(cfg.device)
    sam = build_sam(cfg.model, cfg.checkpoint).to(device)
    optimizer = torch.optim.AdamW(sam.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = _resume(cfg, out, sam, optimizer)
    steps = math.ceil(len(samples) / cfg.batch_size)
    for epoch in range(start, cfg.epochs):
        sam.train()
        began = time.perf_counter()
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(samples), generator=generator).tolist()
        sums = {"loss": 0.0, "focal": 0.0, "dice": 0.0, "iou": 0.0, "instances": 0}
        bar = tqdm(range(steps), desc=f"pretrain-sam epoch {epoch + 1}/{cfg.epochs}", unit="step",
                   disable=not progress, leave=False)
        for step in bar:
            batch = [samples[i] for i in order[step * cfg.batch_size:(step + 1) * cfg.batch_size]]
            embeddings = sam.image_encoder(torch.stack([s.pixels for s in batch]).to(device))
            loss = embeddings.new_zeros(())
            count = 0
            for sample, embedding in zip(batch, embeddings):
                n = len(sample.masks)
                chosen = torch.randperm(n, generator=generator)[: cfg.max_instances]
                image_loss, parts = instance_losses(sam, embedding, sample, chosen, cfg, generator)
                loss = loss + image_loss
                count += len(chosen)
                for key, value in parts.items():
                    sums[key] += value
            loss = loss / count
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums["loss"] += float(loss.detach()) * count
            sums["instances"] += count
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        n = max(1, sums.pop("instances"))
        record = {"epoch": epoch + 1, **{k: v / n for k, v in sums.items()}, "seconds": round(time.perf_counter() - began, 3),
                  "seconds_per_step": round((time.perf_counter() - began) / steps, 4)}
        append_jsonl(out / "log.jsonl", record)
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['loss']:.4f} focal {record['focal']:.4f} "
            f"dice {record['dice']:.4f} iou-mse {record['iou']:.4f} ({record['seconds']:.0f} s)")
        weights = {k: v.detach().cpu() for k, v in sam.state_dict().items()}
        atomic_torch_save(weights, out / WEIGHTS_NAME)  # usable weights after every epoch
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "config": run_settings(cfg), "epoch": epoch + 1,
                           "model": weights, "optimizer": optimizer.state_dict()}, out / CHECKPOINT_NAME)
    if start >= cfg.epochs and not (out / WEIGHTS_NAME).exists():
        atomic_torch_save(sam.state_dict(), out / WEIGHTS_NAME)
    return out / WEIGHTS_NAME
