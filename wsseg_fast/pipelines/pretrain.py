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

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from wsseg_fast.data import CocoWeakDataset, ImageLoadError
from wsseg_fast.data.weak import mask_bbox
from wsseg_fast.io import append_jsonl, atomic_torch_save
from wsseg_fast.pipelines.student import autocast_dtype
from wsseg_fast.pipelines.weak_training import run_settings
from wsseg_fast.sam.model import MODEL_CONFIGS, PATCH_SIZE, build_sam
from wsseg_fast.sam.prompting import predict_masks, preprocess, zoom_windows

CHECKPOINT_NAME = "last.pt"
WEIGHTS_NAME = "sam.pth"
CHECKPOINT_FORMAT = "wsseg_fast.pretrain/1"
MAX_JITTER_PX = 20 / 1024  # SAM's box noise cap, as a fraction of the input size
LOSS_RESOLUTIONS = ("input", "low")
LR_SCHEDULES = ("constant", "cosine")


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
    lr_schedule: str = "constant"
    """``constant``, or ``cosine``: per step from ``lr`` down to 0 at the end of ``epochs`` (so the
    run's epoch count becomes one of the settings a resume must repeat)."""

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

    hflip: bool = False
    """Mirror each image (and its masks and boxes) left-right with probability 1/2 per step."""

    zoom: float = 0.0
    """Share of images per step shown in the zoom window of one of their small instances (the
    window in which ``sam-box zoom=true`` decodes a small box), with the instances inside it."""

    loss_resolution: str = "input"
    """Where the mask losses are taken: ``input`` (the logits upsampled to the S x S input frame,
    binary masks) or ``low`` (the decoder's 4g x 4g logits, each mask's share of every pixel)."""

    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    amp: str = "auto"
    """Mixed precision: ``auto`` (bf16/fp16 on CUDA, fp32 on CPU), ``bf16``, ``fp16`` or ``off``;
    ``bf16`` pays on CPUs with AMX units (the decoder's matmuls; losses stay in fp32)."""

    seed: int = 0
    device: str = "cpu"
    threads: int | None = None


@dataclass
class _Sample:
    """One image, ready for the encoder, and its instances at the loss's resolution."""

    stem: str
    pixels: torch.Tensor   # [3, S, S] normalised input
    masks: torch.Tensor    # [N, S, S] bool (loss_resolution "input"), or [N, 4g, 4g] float: each
                           # instance's share of every low-res pixel ("low")
    boxes: torch.Tensor    # [N, 4] x0, y0, x1, y1 in the S x S input frame (exact, from the full-res mask)
    original: _Original | None = None  # kept for zoomed windows (``zoom`` > 0)


@dataclass
class _Original:
    """An image as read and its instances (COCO RLE, compact), for cutting zoomed windows."""

    image: np.ndarray      # [H, W, 3] uint8
    rles: list             # N pycocotools RLEs
    boxes: np.ndarray      # [N, 4] x0, y0, x1, y1 pixels


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
    try:
        autocast_dtype(cfg.amp, torch.device(cfg.device))
    except ValueError as exc:
        raise PretrainError(str(exc)) from None
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise PretrainError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {cfg.lr_schedule!r}")
    if cfg.loss_resolution not in LOSS_RESOLUTIONS:
        raise PretrainError(f"loss_resolution must be one of {', '.join(LOSS_RESOLUTIONS)}, got {cfg.loss_resolution!r}")
    for name in ("box_fraction", "box_jitter", "zoom"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise PretrainError(f"{name} must lie in [0, 1], got {getattr(cfg, name)!r}")


def _framed(stem: str, image: np.ndarray, masks: np.ndarray, img_size: int, loss_resolution: str) -> _Sample:
    """An image and its ``[N, H, W]`` bool instance masks in the model's ``S x S`` input frame."""
    h, w = image.shape[:2]
    pixels, (rh, rw) = preprocess(image, img_size)
    full = torch.from_numpy(masks).float()[:, None]
    resized = F.interpolate(full, size=(rh, rw), mode="area")[:, 0]  # share of each resized pixel
    framed = F.pad(resized, (0, img_size - rw, 0, img_size - rh))
    if loss_resolution == "low":
        targets = F.adaptive_avg_pool2d(framed[:, None], 4 * (img_size // PATCH_SIZE))[:, 0]
    else:
        targets = framed >= 0.5
    boxes = torch.tensor([mask_bbox(m) for m in masks], dtype=torch.float32)  # x, y, w, h
    boxes = torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1) * torch.tensor([rw / w, rh / h, rw / w, rh / h])
    return _Sample(stem, pixels, targets, boxes)


def prepare_samples(dataset: CocoWeakDataset, img_size: int, log, loss_resolution: str = "input",
                    keep_originals: bool = False) -> list[_Sample]:
    """Every readable image with at least one instance mask, at the model's input size; masks
    binary in the input frame, or as shares of the low-res pixels (``loss_resolution="low"``);
    with ``keep_originals`` the image as read and its masks too (for :func:`zoomed`)."""
    if not dataset.has_segmentation():
        raise PretrainError(f"{dataset.annotation_file}: no annotation has a `segmentation`; pre-training needs "
                            "instance masks (write them with `wsseg-fast make-weak`)")
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
        sample = _framed(record.stem, image, np.stack(masks), img_size, loss_resolution)
        if keep_originals:
            boxes = np.array([mask_bbox(m) for m in masks], np.float32)
            boxes[:, 2:] += boxes[:, :2]
            sample.original = _Original(image, mask_utils.encode(np.asfortranarray(np.stack(masks, -1).astype(np.uint8))),
                                        boxes)
        samples.append(sample)
    if not samples:
        raise PretrainError(f"{dataset.annotation_file}: no readable image has a non-empty instance mask")
    return samples


def zoomed(sample: _Sample, img_size: int, loss_resolution: str, generator: torch.Generator) -> _Sample:
    """The sample shown in the zoom window of one of its small instances (drawn at random; the
    window ``sam-box zoom=true`` decodes that box in), with the instances lying wholly inside it;
    the sample itself if no instance is small enough to be zoomed."""
    original = sample.original
    windows = list(zoom_windows(original.boxes, *original.image.shape[:2]).values())
    if not windows:
        return sample
    x0, y0, x1, y1 = windows[int(torch.randint(len(windows), (1,), generator=generator))]
    inside = np.nonzero((original.boxes[:, 0] >= x0) & (original.boxes[:, 1] >= y0)
                        & (original.boxes[:, 2] <= x1) & (original.boxes[:, 3] <= y1))[0]
    masks = mask_utils.decode([original.rles[i] for i in inside]).transpose(2, 0, 1)[:, y0:y1, x0:x1].astype(bool)
    return _framed(sample.stem, np.ascontiguousarray(original.image[y0:y1, x0:x1]), masks, img_size, loss_resolution)


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
    point inside each mask ``[N, 1, 2]`` (input-frame pixels; drawn among the mask's pixels -- the
    ones it covers most, if given as shares -- at a random place inside that pixel)."""
    n, res = masks.shape[0], masks.shape[-1]
    use_box = torch.rand(n, generator=generator) < box_fraction
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).repeat(1, 2)
    noise = torch.randn(n, 4, generator=generator) * box_jitter * side
    noise = noise.clamp(-MAX_JITTER_PX * img_size, MAX_JITTER_PX * img_size)
    jittered = (boxes + noise).clamp(0, img_size)
    jittered = torch.cat([torch.minimum(jittered[:, :2], jittered[:, 2:] - 1), torch.maximum(jittered[:, 2:], jittered[:, :2] + 1)], 1)
    flat = masks.reshape(n, -1).float()
    inside = flat >= flat.max(1, keepdim=True).values.clamp(max=0.5)  # the mask's pixels (its best ones if thin)
    weights = inside.float() + 1e-12
    cell = torch.multinomial(weights, 1, generator=generator)[:, 0]
    scale = img_size / res
    offset = torch.rand(n, 2, generator=generator)
    points = torch.stack([(cell % res).float(), (cell // res).float()], 1).add(offset).mul(scale)
    return use_box, jittered, points[:, None]


def corrective_click(logits: torch.Tensor, target: torch.Tensor, img_size: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
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


def instance_losses(sam, embedding: torch.Tensor, sample: _Sample, chosen: torch.Tensor, cfg: PretrainConfig,
                    generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """The summed losses of the ``chosen`` instances of one image (first prompt, then the clicks).
    Prompts and clicks are drawn on the CPU (the seeded generator), losses taken on the model's device."""
    img_size, device = sam.prompt_encoder.input_image_size[0], embedding.device
    target = sample.masks[chosen].float()
    target_on_device = target.to(device)
    size = target.shape[-2:]  # where the losses are taken
    low = tuple(4 * g for g in sam.prompt_encoder.image_embedding_size)
    use_box, boxes, points = sample_prompts(target, sample.boxes[chosen], img_size, cfg.box_fraction, cfg.box_jitter,
                                            generator)
    total, parts = embedding.new_zeros((), dtype=torch.float32), {"focal": 0.0, "dice": 0.0, "iou": 0.0}
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
            lbl = click_labels[idx] if by_box else torch.cat([torch.ones(len(idx), 1, dtype=torch.long), click_labels[idx]], 1)
            multimask = not by_box and round_ == 0  # a lone point is ambiguous
            prediction = predict_masks(sam, embedding, boxes=boxes[idx] if by_box else None,
                                       points=pts if pts.shape[1] else None, point_labels=lbl if pts.shape[1] else None,
                                       mask_inputs=previous[idx] if round_ else None, multimask_output=multimask,
                                       output_size=tuple(size))
            masks = (prediction.low_res_logits if cfg.loss_resolution == "low" else prediction.logits).float()  # [n, M, *size]
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
            click_points, click_labels = torch.cat([click_points, new_points], 1), torch.cat([click_labels, new_labels], 1)
            previous = low_logits
    return total, parts


def mirrored(sample: _Sample) -> _Sample:
    """The sample mirrored left-right in the ``S x S`` input frame (padding included)."""
    size = sample.pixels.shape[-1]
    boxes = torch.stack([size - sample.boxes[:, 2], sample.boxes[:, 1], size - sample.boxes[:, 0], sample.boxes[:, 3]], 1)
    return _Sample(sample.stem, sample.pixels.flip(-1), sample.masks.flip(-1), boxes)


def _settings(cfg: PretrainConfig) -> dict:
    """What a resumed run must repeat: :func:`run_settings`, and the epoch count a cosine schedule spans."""
    settings = run_settings(cfg)
    if cfg.lr_schedule == "cosine":
        settings["epochs"] = cfg.epochs
    return settings


def _lr_at(cfg: PretrainConfig, step: int, total: int) -> float:
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
    return cfg.lr


def _resume(cfg: PretrainConfig, out: Path, sam, optimizer, scaler) -> int:
    path = out / CHECKPOINT_NAME
    if not path.exists():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainError(f"{path} cannot be read ({exc}); delete it to start over") from None
    if state.get("format") != CHECKPOINT_FORMAT or state.get("config") != _settings(cfg):
        raise PretrainError(f"{out} holds a pre-training run with other settings; use another --out or delete {path}")
    sam.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state.get("scaler", {}))
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
    samples = prepare_samples(CocoWeakDataset(cfg.coco, cfg.images), img_size, log, cfg.loss_resolution,
                              keep_originals=cfg.zoom > 0)
    log(f"pre-training SAM {cfg.model} on {len(samples)} images, {sum(len(s.masks) for s in samples)} instances")

    device = torch.device(cfg.device)
    sam = build_sam(cfg.model, cfg.checkpoint).to(device)
    optimizer = torch.optim.AdamW(sam.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp_dtype = autocast_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    start = _resume(cfg, out, sam, optimizer, scaler)
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
            if cfg.zoom > 0:
                zooms = torch.rand(len(batch), generator=generator) < cfg.zoom
                batch = [zoomed(s, img_size, cfg.loss_resolution, generator) if z else s
                         for s, z in zip(batch, zooms.tolist())]
            if cfg.hflip:
                flips = torch.rand(len(batch), generator=generator) < 0.5
                batch = [mirrored(s) if flip else s for s, flip in zip(batch, flips.tolist())]
            loss, count = torch.zeros((), device=device), 0
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                embeddings = sam.image_encoder(torch.stack([s.pixels for s in batch]).to(device))
                for sample, embedding in zip(batch, embeddings):
                    n = len(sample.masks)
                    chosen = torch.randperm(n, generator=generator)[: cfg.max_instances]
                    image_loss, parts = instance_losses(sam, embedding, sample, chosen, cfg, generator)
                    loss = loss + image_loss
                    count += len(chosen)
                    for key, value in parts.items():
                        sums[key] += value
            loss = loss / count
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(cfg, epoch * steps + step, cfg.epochs * steps)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            sums["loss"] += float(loss.detach()) * count
            sums["instances"] += count
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        n = max(1, sums.pop("instances"))
        record = {"epoch": epoch + 1, **{k: v / n for k, v in sums.items()}, "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - began, 3),
                  "seconds_per_step": round((time.perf_counter() - began) / steps, 4)}
        append_jsonl(out / "log.jsonl", record)
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['loss']:.4f} focal {record['focal']:.4f} "
            f"dice {record['dice']:.4f} iou-mse {record['iou']:.4f} ({record['seconds']:.0f} s)")
        weights = {k: v.detach().cpu() for k, v in sam.state_dict().items()}
        atomic_torch_save(weights, out / WEIGHTS_NAME)  # usable weights after every epoch
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "config": _settings(cfg), "epoch": epoch + 1,
                           "model": weights, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()},
                          out / CHECKPOINT_NAME)
    if start >= cfg.epochs and not (out / WEIGHTS_NAME).exists():
        atomic_torch_save(sam.state_dict(), out / WEIGHTS_NAME)
    return out / WEIGHTS_NAME
