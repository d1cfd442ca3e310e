"""Stage 2: train the prompt-free student on label maps (``wsseg-fast train-student``).

``arch="unet"`` trains one U-Net on exactly one source. ``arch="multihead"`` (one head per
supervision source on a shared trunk) counts each head's cross-entropy only on the images that
have a label of its source, sums the losses with ``loss_weights``, can cut the ``gt`` source to
a seeded ``gt_fraction`` of the images, and in the final ``final_fraction`` of the epochs trains
only the primary head (``gt`` when present), which is the one that predicts.

The run lives in a :class:`~wsseg_fast.pipelines.training.RunDir` (``OUT/last.pt`` after every
epoch; re-running resumes it bit-exactly). Under ``torchrun`` (``WORLD_SIZE`` > 1) it runs DDP
(NCCL on GPUs, gloo on CPUs), each rank on its own shard; only rank 0 writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from wsseg_fast.config import Config, at_least, require
from wsseg_fast.metrics import IGNORE_INDEX, SegmentationMeter
from wsseg_fast.models.student import build_student
from wsseg_fast.pipelines.distributed import DistContext
from wsseg_fast.pipelines.label_maps import label_path, list_images, read_image, read_label
from wsseg_fast.pipelines.student.data import MEAN, STD, StudentDataset, largest_label, training_table
from wsseg_fast.pipelines.student.predict import predict_logits
from wsseg_fast.pipelines.training import Amp, Meter, RunDir, autocast_dtype, fit


@dataclass
class StudentConfig(Config):
    images: str
    """Directory of training images."""

    sources: dict[str, str]
    """Head name -> directory of label maps <stem>.png, e.g. pseudo=DIR (multihead: several, e.g.
    gt=DIR box=DIR cam=DIR)."""

    out: str
    """Output directory: last.pt after every epoch (re-running resumes), log.jsonl, config.yaml."""

    arch: Literal["unet", "multihead"] = "unet"
    """unet: one U-Net on one source; multihead: one head per source on a shared trunk."""

    gt_fraction: float | None = None
    """Multihead: keep the gt labels of only this fraction of the images (chosen by the seed)."""

    loss_weights: dict[str, float] = field(default_factory=dict)
    """Multihead: a head's loss weight (default 1)."""

    final_fraction: float = 0.2
    """Multihead: the last fraction of the epochs trains only the primary head."""

    class_balance: float = 0.0
    """Class-balanced cross-entropy: class c weighs freq_c ** -A (frequencies from each head's own
    labels, a labelled pixel weighs 1 on average); 0: plain; 0.5 helps thin, rare classes."""

    num_classes: int | None = None
    """Classes including background (default: 1 + the largest label)."""

    class_names: list[str] | None = None
    """Class names, background first."""

    size: int = 128
    """Training resolution: images and labels are resized to size x size."""

    widths: tuple[int, ...] = (16, 32, 64, 128)
    """U-Net channel widths per level."""

    epochs: int = 20
    """Passes over the training images."""

    batch_size: int = 8
    """Images per step and process."""

    lr: float = 1e-3
    """AdamW learning rate at the start of the cosine schedule."""

    weight_decay: float = 1e-4
    """AdamW weight decay."""

    seed: int = 0
    """Seed of the weights, the shuffling, the flips and the gt subset."""

    workers: int = 0
    """DataLoader worker processes (0: load in the training process)."""

    amp: Amp = "auto"
    """Mixed precision (auto: bf16/fp16 on CUDA, fp32 on CPU)."""

    flip: bool = True
    """Horizontal-flip augmentation."""

    device: str | None = None
    """Default: the local GPU if any, else cpu."""

    val_images: str | None = None
    """Held-out images scored after every epoch (rank 0; needs val_labels)."""

    val_labels: str | None = None
    """Their label maps."""

    RUNTIME = ("out", "workers", "device", "epochs", "val_images", "val_labels")

    def validate(self) -> None:
        require(bool(self.sources), "sources is empty: give at least one directory of label maps")
        require(
            self.arch != "unet" or len(self.sources) == 1,
            f"arch 'unet' trains on exactly one source, got {sorted(self.sources)}; use arch 'multihead'",
        )
        if self.gt_fraction is not None:
            require(
                self.arch == "multihead" and "gt" in self.sources,
                "gt_fraction needs arch 'multihead' and a source named 'gt'",
            )
            require(0 < self.gt_fraction <= 1, f"gt_fraction must be in (0, 1], got {self.gt_fraction}")
        at_least(0, class_balance=self.class_balance, workers=self.workers)
        unknown = set(self.loss_weights) - set(self.sources)
        require(not unknown, f"loss_weights names heads that are not sources: {sorted(unknown)}")
        at_least(1, epochs=self.epochs, batch_size=self.batch_size, size=self.size)
        require(0 <= self.final_fraction < 1, f"final_fraction must be in [0, 1), got {self.final_fraction}")
        require((self.val_images is None) == (self.val_labels is None), "val_images and val_labels go together")
        multiple = 2 ** (len(self.widths) - 1)
        require(
            self.size % multiple == 0,
            f"size must be a multiple of {multiple} for {len(self.widths)} U-Net levels, got {self.size}",
        )

    @property
    def heads(self) -> list[str]:
        return list(self.sources)

    @property
    def primary(self) -> str:
        """The head that predicts: gt when it is a source, else the first."""
        return "gt" if "gt" in self.sources else self.heads[0]


def head_losses(
    logits: dict[str, torch.Tensor],
    targets: torch.Tensor,
    heads: list[str],
    class_weights: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Cross-entropy of each head against its own label maps ``targets[:, k]``
    (weighted per class by ``class_weights[head]`` when given), averaged over the
    labelled pixels of the batch (0 when there are none, still part of the graph so
    DDP sees every parameter used)."""

    losses = {}
    for k, name in enumerate(heads):
        t = targets[:, k]
        count = (t != IGNORE_INDEX).sum().clamp(min=1)
        weight = None if class_weights is None else class_weights.get(name)
        losses[name] = (
            F.cross_entropy(logits[name].float(), t, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum") / count
        )
    return losses


def balanced_class_weights(dataset: StudentDataset, heads: list[str], exponent: float) -> dict[str, torch.Tensor]:
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


def validate_epoch(model: nn.Module, meta: dict, images_dir: str, labels_dir: str) -> dict:
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


class StudentTrainer:
    """Build (data, model, optimizer), one epoch, and the state of a student run."""

    def __init__(self, config: StudentConfig, ctx: DistContext, progress: bool):
        self.config, self.ctx, self.progress = config, ctx, progress
        self.device = _device(config, ctx)
        self.amp_dtype = autocast_dtype(config.amp, self.device)
        self.heads, self.primary = config.heads, config.primary
        images, labels, subset = training_table(config.images, config.sources, config.gt_fraction, config.seed)
        num_classes = config.num_classes or (
            len(config.class_names) if config.class_names else max(2, largest_label(labels) + 1)
        )
        require(
            config.class_names is None or len(config.class_names) == num_classes,
            f"{len(config.class_names or [])} class names for {num_classes} classes",
        )
        self.meta = {
            "arch": config.arch,
            "heads": self.heads,
            "primary": self.primary,
            "num_classes": num_classes,
            "class_names": config.class_names,
            "widths": list(config.widths),
            "size": config.size,
            "mean": list(MEAN),
            "std": list(STD),
            "gt_subset": subset,
        }
        self._build_model()
        self.dataset = StudentDataset(images, labels, num_classes, config.size, config.flip)
        self.sampler = DistributedSampler(
            self.dataset, num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=config.seed
        )
        self.loader = DataLoader(
            self.dataset,
            batch_size=config.batch_size,
            sampler=self.sampler,
            num_workers=config.workers,
            pin_memory=self.device.type == "cuda",
        )
        self.weights = {h: float(config.loss_weights.get(h, 1.0)) for h in self.heads}
        self.class_weights = None
        if config.class_balance:
            balanced = balanced_class_weights(self.dataset, self.heads, config.class_balance)
            self.class_weights = {h: w.to(self.device) for h, w in balanced.items()}
        self.final_epochs = (
            math.floor(config.final_fraction * config.epochs + 1e-9) if config.arch == "multihead" else 0
        )

    def _build_model(self) -> None:
        config = self.config
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.manual_seed(config.seed)
        self.model = build_student(
            config.arch,
            self.meta["num_classes"],
            widths=tuple(config.widths),
            heads=tuple(self.heads),
            primary=self.primary if config.arch == "multihead" else None,
        ).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.train_model = self.model
        if self.ctx.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        # In the final phase the other heads get no gradient at all (grad None: AdamW skips them).
        self.others = [
            p
            for name, head in getattr(self.model, "heads", {}).items()
            if name != self.primary
            for p in head.parameters()
        ]

    def lr_at(self, epoch: int) -> float:
        """Cosine decay per epoch: a function of the epoch, so resuming needs no scheduler state."""
        return self.config.lr * 0.5 * (1 + math.cos(math.pi * epoch / self.config.epochs))

    def train_epoch(self, epoch: int) -> dict:
        config = self.config
        self.dataset.set_epoch(config.seed, epoch)
        self.sampler.set_epoch(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(epoch)
        final = epoch >= config.epochs - self.final_epochs
        active = {h: (self.weights[h] if not final or h == self.primary else 0.0) for h in self.heads}
        self.train_model.train()
        meter = Meter("loss", *self.heads)
        bar = tqdm(
            self.loader,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            leave=False,
            disable=not (self.progress and self.ctx.rank == 0),
        )
        for x, targets in bar:
            total, losses = self._step(
                x.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True), active, final
            )
            meter.add(loss=total)
            for k, h in enumerate(self.heads):  # a head's mean over the batches that had labels of its source
                meter.add(weight=float((targets[:, k] != IGNORE_INDEX).any()), **{h: losses[h]})
            bar.set_postfix(loss=f"{total:.4f}")
        means = meter.means(self.ctx)
        record = {
            "loss": means["loss"],
            "lr": self.lr_at(epoch),
            "final_phase": final,
            "losses": {h: means[h] for h in self.heads},
        }
        if self.ctx.rank == 0 and config.val_images is not None:
            record["val"] = validate_epoch(self.model, self.meta, config.val_images, config.val_labels)
        return record

    def _step(self, x: torch.Tensor, targets: torch.Tensor, active: dict, final: bool) -> tuple[float, dict]:
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            logits = _forward(self.train_model, x, self.heads)
        losses = head_losses(logits, targets, self.heads, self.class_weights)
        total = sum(active[h] * losses[h] for h in self.heads)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if final:
            for p in self.others:
                p.grad = None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(total.detach()), {h: float(v.detach()) for h, v in losses.items()}

    def state_dict(self) -> dict:
        return {
            "meta": self.meta,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])

    def describe(self, record: dict) -> str:
        heads = " ".join(f"{h} {v:.4f}" for h, v in record["losses"].items()) if len(self.heads) > 1 else ""
        val = f" val mIoU {record['val']['miou']:.4f}" if "val" in record else ""
        return f"loss {record['loss']:.4f} {heads}{val}{' (primary head only)' if record['final_phase'] else ''}"


def train_student(
    config: StudentConfig, on_epoch_end: Callable[[int, nn.Module, dict], None] | None = None, progress: bool = True
) -> Path:
    """Train (or continue) the student; returns the checkpoint ``config.out/last.pt``.
    ``on_epoch_end(epoch, model, record)`` is called on every rank after each epoch (from 1)."""
    return DistContext.run(lambda ctx: _train(config, ctx, on_epoch_end, progress))


def _train(config: StudentConfig, ctx: DistContext, on_epoch_end, progress: bool) -> Path:
    trainer = StudentTrainer(config, ctx, progress)
    run = RunDir(config.out, "student", config, rank=ctx.rank)
    say = print if ctx.rank == 0 and progress else (lambda text: None)
    subset = trainer.meta["gt_subset"]
    say(
        f"train-student: {len(trainer.dataset)} images, {trainer.meta['num_classes']} classes, heads "
        f"{trainer.heads} (primary {trainer.primary!r})"
        + (f", gt subset {len(subset)} images" if subset is not None else "")
        + f", {ctx.world} process(es) on {trainer.device}, precision {trainer.amp_dtype or torch.float32}"
    )
    fit(
        trainer,
        run,
        config.epochs,
        say,
        None if on_epoch_end is None else lambda epoch, record: on_epoch_end(epoch, trainer.model, record),
    )
    return run.checkpoint
