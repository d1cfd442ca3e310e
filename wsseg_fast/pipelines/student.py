"""Stage 2: train the prompt-free student on label maps, and predict with it.

``train_student(StudentConfig(...)) -> checkpoint path`` and
``predict(checkpoint, images_dir, out_dir)`` are what ``wsseg-fast train-student``
and ``wsseg-fast predict`` run, and what the experiment calls in-process.

Supervision comes in *sources*: a name (``pseudo``, ``gt``, ``cam``, ``box``, ...)
and a directory of label maps (see :mod:`wsseg_fast.pipelines.label_maps`).
``arch="unet"`` trains one U-Net on exactly one source. ``arch="multihead"``
(seed 003) trains one head per source on a shared trunk: each head's
cross-entropy counts only the images that have a label of its source, the
losses are summed with ``loss_weights``, the ``gt`` source can be cut to a
seeded ``gt_fraction`` of the images, and in the final ``final_fraction`` of the
epochs only the primary head (``gt`` when present) trains. Prediction uses the
primary head.

Training is reproducible and resumable exactly: the shuffling and the flips of
an epoch depend only on (seed, epoch), a checkpoint is written atomically after
every epoch, and training 2 epochs equals training 1 and resuming for 1. Under
``torchrun`` (``WORLD_SIZE`` > 1) it runs DDP (NCCL on GPUs, gloo on CPUs), each
rank on its own shard; only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from wsseg_fast.io import atomic_torch_save
from wsseg_fast.metrics import IGNORE_INDEX, SegmentationMeter
from wsseg_fast.models.student import MultiHeadUNet, build_student
from wsseg_fast.pipelines.distributed import DistContext
from wsseg_fast.pipelines.label_maps import (
    label_path,
    list_images,
    read_image,
    read_label,
    write_label,
)

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = "wsseg_fast.student/1"
# ImageNet statistics: the usual input normalisation, kept in the checkpoint.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass
class StudentConfig:
    images: str
    """Directory of training images."""

    sources: dict[str, str]
    """Head name -> directory of label maps (``{"pseudo": OUT/labels}``; multihead: several)."""

    out: str
    """Checkpoint directory; the checkpoint is ``out/last.pt``."""

    arch: str = "unet"
    gt_fraction: float | None = None
    """Multihead: keep the ``gt`` labels of only this fraction of the images (chosen by ``seed``)."""

    loss_weights: dict[str, float] = field(default_factory=dict)
    """Multihead: weight of each head's loss (default 1)."""

    final_fraction: float = 0.2
    """Multihead: the last ``final_fraction`` of the epochs train the primary head only."""

    class_balance: float = 0.0
    """Exponent a of class-balanced cross-entropy: class c weighs ``freq_c ** -a`` (freq from
    each head's own training labels, weights scaled so a pixel weighs 1 on average).
    0: plain cross-entropy; 0.5 keeps thin, rare classes (a rod) from being drowned by background."""

    num_classes: int | None = None
    """Classes including background; ``None``: 1 + the largest label found."""

    class_names: list[str] | None = None
    size: int = 128
    """Images and labels are resized to ``size`` x ``size`` for training."""

    widths: tuple[int, ...] = (16, 32, 64, 128)
    epochs: int = 20
    batch_size: int = 8
    """Per process."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    workers: int = 0
    amp: str = "auto"
    """``auto`` (bf16/fp16 on CUDA, fp32 on CPU), ``bf16``, ``fp16`` or ``off``."""

    flip: bool = True
    device: str | None = None
    resume: bool = False
    progress: bool = True
    val_images: str | None = None
    """Optional held-out images, scored after every epoch (rank 0) against ``val_labels``."""

    val_labels: str | None = None


# ---------------------------------------------------------------------------
# Data


def _resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> normalised float ``[3, size, size]``."""

    x = image.permute(2, 0, 1)[None].float().div_(255)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (x - mean) / std


def _resize_label(labels: torch.Tensor, size: int) -> torch.Tensor:
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
        x = _resize_image(image, self.size)
        targets = torch.full((len(self.labels[index]), self.size, self.size), IGNORE_INDEX, dtype=torch.long)
        for k, path in enumerate(self.labels[index]):
            if path is None:
                continue
            labels = read_label(path)
            if labels.shape != (h, w):
                raise ValueError(f"label map {str(path)!r} is {tuple(labels.shape)} but its image is {(h, w)}")
            bad = (labels >= self.num_classes) & (labels != IGNORE_INDEX)
            if bad.any():
                raise ValueError(f"label map {str(path)!r} has label {int(labels[bad].max())} outside "
                                 f"[0, {self.num_classes}) (and not {IGNORE_INDEX} = ignore)")
            targets[k] = _resize_label(labels, self.size)
        if self.flips[index]:
            x, targets = x.flip(-1), targets.flip(-1)
        return x, targets


def _primary_head(heads: list[str]) -> str:
    return "gt" if "gt" in heads else heads[0]


def _gt_subset(stems: list[str], has_gt: list[bool], fraction: float, seed: int) -> list[str]:
    """``round(fraction * #images)`` (at least 1) of the images that have a gt
    label, chosen by a seeded permutation: the same subset on every rank and run."""

    candidates = [s for s, has in zip(stems, has_gt) if has]
    if not candidates:
        return []
    k = min(len(candidates), max(1, round(fraction * len(stems))))
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(candidates[i] for i in order[:k])


def _training_table(config: StudentConfig):
    """Images, their label files per head, the gt subset, and the number of classes."""

    heads = list(config.sources)
    for name, directory in config.sources.items():
        if not Path(directory).is_dir():
            raise ValueError(f"label directory {str(directory)!r} of source {name!r} does not exist")
    paths = list_images(config.images)
    stems = [p.stem for p in paths]
    table = [[label_path(config.sources[h], s) for h in heads] for s in stems]
    table = [[p if p.is_file() else None for p in row] for row in table]
    gt_subset = None
    if config.gt_fraction is not None:
        k = heads.index("gt")
        gt_subset = _gt_subset(stems, [row[k] is not None for row in table], config.gt_fraction, config.seed)
        keep = set(gt_subset)
        for s, row in zip(stems, table):
            if s not in keep:
                row[k] = None
    kept = [(p, row) for p, row in zip(paths, table) if any(q is not None for q in row)]
    if not kept:
        raise ValueError(f"no image of {config.images!r} has a label map in {sorted(config.sources.values())}")
    num_classes = config.num_classes
    if num_classes is None:
        if config.class_names:
            num_classes = len(config.class_names)
        else:
            largest = 0
            for _, row in kept:
                for q in row:
                    if q is not None:
                        labels = read_label(q)
                        labels = labels[labels != IGNORE_INDEX]
                        largest = max(largest, int(labels.max()) if labels.numel() else 0)
            num_classes = max(2, largest + 1)
    return [p for p, _ in kept], [row for _, row in kept], gt_subset, num_classes


# ---------------------------------------------------------------------------
# Loss, precision, distribution


def head_losses(logits: dict[str, torch.Tensor], targets: torch.Tensor, heads: list[str],
                class_weights: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Cross-entropy of each head against its own label maps ``targets[:, k]``
    (weighted per class by ``class_weights[head]`` when given), averaged over the
    labelled pixels of the batch (0 when there are none, still part of the graph so
    DDP sees every parameter used)."""

    losses = {}
    for k, name in enumerate(heads):
        t = targets[:, k]
        count = (t != IGNORE_INDEX).sum().clamp(min=1)
        weight = None if class_weights is None else class_weights.get(name)
        losses[name] = F.cross_entropy(logits[name].float(), t, weight=weight, ignore_index=IGNORE_INDEX,
                                       reduction="sum") / count
    return losses


def balanced_class_weights(dataset: "StudentDataset", heads: list[str], exponent: float) -> dict[str, torch.Tensor]:
    """Per head, ``freq_c ** -exponent`` over the pixels of its labels (absent classes count
    as one pixel), scaled so that the mean weight of a labelled pixel is 1."""

    counts = torch.zeros(len(heads), dataset.num_classes, dtype=torch.float64)
    for index in range(len(dataset)):
        _, targets = dataset[index]
        for k in range(len(heads)):
            t = targets[k][targets[k] != IGNORE_INDEX]
            counts[k] += torch.bincount(t, minlength=dataset.num_classes)[: dataset.num_classes].double()
    weights = {}
    for k, head in enumerate(heads):
        total = counts[k].sum().clamp(min=1)
        w = (counts[k].clamp(min=1) / total) ** -exponent
        mean = (counts[k] / total * w).sum()
        weights[head] = (w / mean if mean > 0 else torch.ones_like(w)).float()
    return weights


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``; ``None`` = fp32. ``auto`` keeps
    fp32 on CPUs, where bf16 autocast is usually slower without AMX units."""
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"`amp` must be 'auto', 'bf16', 'fp16' or 'off', got {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _device(config: StudentConfig, ctx: DistContext) -> torch.device:
    if config.device is not None:
        return torch.device(config.device)
    if torch.cuda.is_available():
        torch.cuda.set_device(ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    return torch.device("cpu")


def _forward(model: nn.Module, x: torch.Tensor, heads: list[str]) -> dict[str, torch.Tensor]:
    out = model(x)
    return out if isinstance(out, dict) else {heads[0]: out}


def _lr_at(config: StudentConfig, epoch: int) -> float:
    """Cosine decay per epoch: a function of the epoch, so resuming needs no scheduler state."""
    return config.lr * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))


def _validate(config: StudentConfig) -> None:
    if config.arch not in ("unet", "multihead"):
        raise ValueError(f"`arch` must be 'unet' or 'multihead', got {config.arch!r}")
    if not config.sources:
        raise ValueError("`sources` is empty: give at least one directory of label maps")
    if config.arch == "unet" and len(config.sources) != 1:
        raise ValueError(f"arch 'unet' trains on exactly one source, got {sorted(config.sources)}; use arch 'multihead'")
    if config.gt_fraction is not None:
        if config.arch != "multihead" or "gt" not in config.sources:
            raise ValueError("`gt_fraction` needs arch 'multihead' and a source named 'gt'")
        if not 0 < config.gt_fraction <= 1:
            raise ValueError(f"`gt_fraction` must be in (0, 1], got {config.gt_fraction}")
    if not (config.class_balance >= 0 and math.isfinite(config.class_balance)):
        raise ValueError(f"`class_balance` must be a finite number >= 0, got {config.class_balance}")
    unknown = set(config.loss_weights) - set(config.sources)
    if unknown:
        raise ValueError(f"`loss_weights` names heads that are not sources: {sorted(unknown)}")
    for name, value in (("epochs", config.epochs), ("batch_size", config.batch_size), ("size", config.size)):
        if value < 1:
            raise ValueError(f"`{name}` must be >= 1, got {value}")
    if config.workers < 0:
        raise ValueError(f"`workers` must be >= 0, got {config.workers}")
    if not 0 <= config.final_fraction < 1:
        raise ValueError(f"`final_fraction` must be in [0, 1), got {config.final_fraction}")
    if (config.val_images is None) != (config.val_labels is None):
        raise ValueError("`val_images` and `val_labels` go together")
    multiple = 2 ** (len(config.widths) - 1)
    if config.size % multiple:
        raise ValueError(f"`size` must be a multiple of {multiple} for {len(config.widths)} U-Net levels, got {config.size}")


# ---------------------------------------------------------------------------
# Training


def train_student(config: StudentConfig, on_epoch_end: Callable[[int, nn.Module, dict], None] | None = None) -> Path:
    """Train (or, with ``config.resume``, continue) the student; returns the
    checkpoint path ``config.out/last.pt``. ``on_epoch_end(epoch, model, record)``
    is called on every rank after each epoch (``epoch`` counts from 1)."""
    _validate(config)
    return DistContext.run(lambda ctx: _train(config, ctx, on_epoch_end))


def _train(config: StudentConfig, ctx: DistContext, on_epoch_end) -> Path:
    device = _device(config, ctx)
    amp_dtype = autocast_dtype(config.amp, device)
    heads = list(config.sources)
    primary = _primary_head(heads)
    images, labels, gt_subset, num_classes = _training_table(config)
    if config.class_names is not None and len(config.class_names) != num_classes:
        raise ValueError(f"{len(config.class_names)} class names for {num_classes} classes")
    out = Path(config.out)
    checkpoint = out / CHECKPOINT_NAME
    if checkpoint.exists() and not config.resume:
        raise ValueError(f"{str(checkpoint)!r} exists: resume it (--resume) or choose another output directory")
    if ctx.rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.manual_seed(config.seed)
    model = build_student(config.arch, num_classes, widths=tuple(config.widths), heads=tuple(heads),
                          primary=primary if config.arch == "multihead" else None).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    meta = {
        "format": CHECKPOINT_FORMAT, "arch": config.arch, "heads": heads, "primary": primary,
        "num_classes": num_classes, "class_names": config.class_names, "widths": list(config.widths),
        "size": config.size, "mean": list(MEAN), "std": list(STD), "gt_subset": gt_subset,
    }
    start, history = 0, []
    if config.resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        for key in ("arch", "heads", "num_classes", "widths", "size", "gt_subset"):
            if state.get(key) != meta[key]:
                raise ValueError(f"cannot resume {str(checkpoint)!r}: its {key} is {state.get(key)!r}, this run's is {meta[key]!r}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start, history = state["epoch"], state["history"]

    train_model = model
    if ctx.world > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    dataset = StudentDataset(images, labels, num_classes, config.size, config.flip)
    sampler = DistributedSampler(dataset, num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=config.seed)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                        pin_memory=device.type == "cuda")
    weights = {h: float(config.loss_weights.get(h, 1.0)) for h in heads}
    class_weights = None
    if config.class_balance:
        class_weights = {h: w.to(device) for h, w in balanced_class_weights(dataset, heads, config.class_balance).items()}
    final_epochs = math.floor(config.final_fraction * config.epochs + 1e-9) if config.arch == "multihead" else 0
    # In the final phase the other heads get no gradient at all (grad None: AdamW skips them).
    others = [p for name, head in getattr(model, "heads", {}).items() if name != primary for p in head.parameters()]
    if ctx.rank == 0 and start < config.epochs:
        subset = f", gt subset {len(gt_subset)} images" if gt_subset is not None else ""
        print(f"train-student: {len(images)} images, {num_classes} classes, heads {heads} (primary {primary!r}){subset}, "
              f"epochs {start + 1}..{config.epochs}, {ctx.world} process(es) on {device}, "
              f"precision {amp_dtype or torch.float32}", flush=True)

    for epoch in range(start, config.epochs):
        began = time.perf_counter()
        dataset.set_epoch(config.seed, epoch)
        sampler.set_epoch(epoch)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(config, epoch)
        final = epoch >= config.epochs - final_epochs
        active = {h: (weights[h] if not final or h == primary else 0.0) for h in heads}
        train_model.train()
        # per head: loss sum and batches with labels of its source; then total loss and batches
        sums = torch.zeros(2 * len(heads) + 2, dtype=torch.float64)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=not (config.progress and ctx.rank == 0))
        for x, targets in bar:
            x = x.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = _forward(train_model, x, heads)
            losses = head_losses(logits, targets, heads, class_weights)
            total = sum(active[h] * losses[h] for h in heads)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if final:
                for p in others:
                    p.grad = None
            scaler.step(optimizer)
            scaler.update()
            labelled = [float((targets[:, k] != IGNORE_INDEX).any()) for k in range(len(heads))]
            values = [float(losses[h].detach()) for h in heads] + labelled + [float(total.detach()), 1.0]
            sums += torch.tensor(values, dtype=torch.float64)
            bar.set_postfix(loss=f"{values[-2]:.4f}")
        sums = ctx.all_sum(sums)
        batches = max(sums[-1].item(), 1.0)
        record = {"epoch": epoch + 1, "loss": sums[-2].item() / batches, "lr": _lr_at(config, epoch),
                  "final_phase": final, "seconds": time.perf_counter() - began,
                  # a head's mean over the batches that had labels of its source
                  "losses": {h: sums[k].item() / max(sums[len(heads) + k].item(), 1.0) for k, h in enumerate(heads)}}
        if ctx.rank == 0 and config.val_images is not None:
            record["val"] = _validate_epoch(model, meta, config.val_images, config.val_labels)
        history.append(record)
        if ctx.rank == 0:
            atomic_torch_save({**meta, "epoch": epoch + 1, "history": history, "config": _plain(config),
                               "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scaler": scaler.state_dict()}, checkpoint)
            heads_text = " ".join(f"{h} {v:.4f}" for h, v in record["losses"].items()) if len(heads) > 1 else ""
            val_text = f" val mIoU {record['val']['miou']:.4f}" if "val" in record else ""
            print(f"epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.4f} {heads_text}{val_text}"
                  f"{' (primary head only)' if final else ''} [{record['seconds']:.1f} s]", flush=True)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model, record)
    return checkpoint


def _validate_epoch(model: nn.Module, meta: dict, images_dir: str, labels_dir: str) -> dict:
    """Pixel accuracy, mIoU, mACC and mDice of the images of ``images_dir`` that have a label map."""

    was_training = model.training
    model.eval()
    meter = SegmentationMeter(meta["num_classes"])
    for path in list_images(images_dir):
        target = label_path(labels_dir, path.stem)
        if target.is_file():
            meter.update(predict_logits(model, meta, [read_image(path)])[0].argmax(0), read_label(target))
    model.train(was_training)
    result = meter.compute()
    return {k: result[k] for k in ("pixel_accuracy", "miou", "macc", "mdice")}


def _plain(config: StudentConfig) -> dict:
    """The config as builtins only, so checkpoints load with ``weights_only=True``."""

    d = dataclasses.asdict(config)
    d["widths"] = list(d["widths"])
    return d


# ---------------------------------------------------------------------------
# Prediction


def load_student(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The network of a student checkpoint (in eval mode) and its metadata."""

    path = Path(checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise ValueError(f"student checkpoint {str(path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a student checkpoint written by train_student")
    model = build_student(state["arch"], state["num_classes"], widths=tuple(state["widths"]),
                          heads=tuple(state["heads"]), primary=state["primary"] if state["arch"] == "multihead" else None)
    model.load_state_dict(state["model"])
    meta = {k: v for k, v in state.items() if k not in ("model", "optimizer", "scaler")}
    return model.to(device).eval(), meta


@torch.no_grad()
def predict_logits(model: nn.Module, meta: dict, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """uint8 ``[H, W, 3]`` images (any sizes) -> ``[C, H, W]`` logits of each,
    computed at the training size and resized back bilinearly."""

    device = next(model.parameters()).device
    x = torch.stack([_resize_image(im, meta["size"]) for im in images]).to(device)
    logits = model.predict(x) if isinstance(model, MultiHeadUNet) else model(x)
    return [F.interpolate(logits[i : i + 1].float(), size=im.shape[:2], mode="bilinear", align_corners=False)[0].cpu()
            for i, im in enumerate(images)]


def predict(checkpoint: str | os.PathLike, images_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
            batch_size: int = 8, device: str | None = None, progress: bool = True) -> list[Path]:
    """Label every image of ``images_dir``; writes ``out_dir/<stem>.png`` (palette
    PNG of class indices, the image's size) and returns the written paths."""

    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
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
