"""Stage 2: train the prompt-free student on label maps (``wsseg-fast train-student``).

``arch="unet"`` trains one U-Net on exactly one source. ``arch="multihead"`` (one head per
supervision source on a shared trunk) and ``arch="sam-head"`` (one head per source on a light
decoder over the frozen SAM features of the embedding cache: no encoder in the training loop)
count each head's loss only on the images that have a target of its source (cross-entropy on label
maps, a per-class sigmoid on soft maps), sum the losses with ``loss_weights``, can cut the ``gt``
source to a seeded ``gt_fraction`` of the images, and in the final ``final_fraction`` of the epochs
train only the primary head (``gt`` when present), which is the one that predicts.

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

from wsseg_fast.config import at_least, require
from wsseg_fast.io import file_digest
from wsseg_fast.metrics import IGNORE_INDEX, SegmentationMeter
from wsseg_fast.pipelines.distributed import DistContext
from wsseg_fast.pipelines.label_maps import label_path, list_images, read_image, read_label
from wsseg_fast.pipelines.student.data import (
    MEAN,
    STD,
    StudentDataset,
    has_target,
    largest_label,
    training_table,
)
from wsseg_fast.pipelines.student.features import SamFeatures
from wsseg_fast.pipelines.student.predict import StudentPredictor, build_from_meta
from wsseg_fast.pipelines.training import Amp, Meter, RunDir, autocast_dtype, fit
from wsseg_fast.sam.settings import EncoderSettings


@dataclass
class StudentConfig(EncoderSettings):
    images: str
    """Directory of training images."""

    sources: dict[str, str]
    """Head name -> directory of label maps <stem>.png, or of soft maps <stem>.npz (OUT/soft of a cam
    pseudo-label job: that head learns them with a sigmoid loss), e.g. pseudo=DIR (multihead,
    sam-head: several, e.g. gt=DIR box=DIR cam=DIR)."""

    out: str
    """Output directory: last.pt after every epoch (re-running resumes), log.jsonl, config.yaml."""

    arch: Literal["unet", "multihead", "sam-head"] = "unet"
    """unet: one U-Net on one source; multihead: one head per source on a shared U-Net; sam-head: one
    head per source on a light decoder over the frozen SAM features of the embedding cache (the SAM
    flags below)."""

    encoder: Literal["conv", "resnet34"] = "conv"
    """unet, multihead: the U-Net's encoder: conv (compact, sized by widths) or resnet34 (torchvision's)."""

    encoder_weights: str | None = None
    """resnet34: torchvision resnet34 weights to start from (e.g. ImageNet's; default: random init)."""

    image_branch: bool = True
    """sam-head: a shallow branch on the image at full resolution, for boundaries finer than a feature cell."""

    head_width: int = 64
    """sam-head: decoder channels at the feature grid (halved at 2x, quartered at 4x)."""

    gt_fraction: float | None = None
    """multihead, sam-head: keep the gt labels of only this fraction of the images (chosen by the seed)."""

    loss_weights: dict[str, float] = field(default_factory=dict)
    """A head's loss weight (default 1)."""

    final_fraction: float = 0.2
    """With several heads: the last fraction of the epochs trains only the primary head."""

    class_balance: float = 0.0
    """Class-balanced cross-entropy: class c weighs freq_c ** -A (frequencies from each head's own
    labels, a labelled pixel weighs 1 on average); 0: plain; 0.5 helps thin, rare classes."""

    num_classes: int | None = None
    """Classes including background (default: 1 + the largest label)."""

    class_names: list[str] | None = None
    """Class names, background first."""

    size: int | None = None
    """unet, multihead: images and labels are resized to size x size (default 128); sam-head: the side
    of its output on SAM's square input frame (default 4x the feature grid: 256 for vit_b)."""

    widths: tuple[int, ...] = (16, 32, 64, 128)
    """conv U-Net: channel widths per level."""

    epochs: int = 20
    """Passes over the training images."""

    batch_size: int = 8
    """Images per step and process."""

    optimizer: Literal["adamw", "adam"] = "adamw"
    """adamw (decoupled weight decay) or adam (weight decay as L2)."""

    lr: float = 1e-3
    """Learning rate at the start."""

    weight_decay: float = 1e-4
    """Weight decay."""

    schedule: Literal["cosine", "plateau"] = "cosine"
    """cosine: decay to 0 over the epochs; plateau: halve the rate when the monitored loss (the
    validation loss with val_images, else the training loss) has not improved for plateau_patience epochs."""

    plateau_patience: int = 2
    """plateau: epochs without improvement before the rate halves."""

    seed: int = 0
    """Seed of the weights, the shuffling, the flips and the gt subset."""

    workers: int = 0
    """DataLoader worker processes (0: load in the training process)."""

    amp: Amp = "auto"
    """Mixed precision (auto: bf16/fp16 on CUDA, fp32 on CPU)."""

    flip: bool | None = None
    """Horizontal-flip augmentation (default: on, off for sam-head, whose features of a flipped image
    are not its features flipped)."""

    device: str | None = None
    """Default: the local GPU if any, else cpu."""

    val_images: str | None = None
    """Held-out images scored after every epoch (rank 0; needs val_labels)."""

    val_labels: str | None = None
    """Their label maps."""

    RUNTIME = (*EncoderSettings.RUNTIME, "out", "workers", "device", "epochs", "val_images", "val_labels")

    def validate(self) -> None:
        super().validate()
        require(bool(self.sources), "sources is empty: give at least one directory of label maps")
        require(
            self.arch != "unet" or len(self.sources) == 1,
            f"arch 'unet' trains on exactly one source, got {sorted(self.sources)}; use arch 'multihead'",
        )
        if self.gt_fraction is not None:
            require(
                self.arch != "unet" and "gt" in self.sources,
                "gt_fraction needs arch 'multihead' or 'sam-head' and a source named 'gt'",
            )
            require(0 < self.gt_fraction <= 1, f"gt_fraction must be in (0, 1], got {self.gt_fraction}")
        require(self.encoder == "conv" or self.arch != "sam-head", "encoder is the U-Net's (arch unet or multihead)")
        require(self.encoder_weights is None or self.encoder == "resnet34", "encoder_weights needs encoder resnet34")
        at_least(0, class_balance=self.class_balance, workers=self.workers, plateau_patience=self.plateau_patience)
        unknown = set(self.loss_weights) - set(self.sources)
        require(not unknown, f"loss_weights names heads that are not sources: {sorted(unknown)}")
        at_least(1, epochs=self.epochs, batch_size=self.batch_size)
        at_least(8, head_width=self.head_width)
        require(self.head_width % 4 == 0, f"head_width must be a multiple of 4, got {self.head_width}")
        require(0 <= self.final_fraction < 1, f"final_fraction must be in [0, 1), got {self.final_fraction}")
        require((self.val_images is None) == (self.val_labels is None), "val_images and val_labels go together")
        if self.arch != "sam-head" and self.size is None:
            self.size = 128
        if self.flip is None:
            self.flip = self.arch != "sam-head"
        if self.size is not None:
            at_least(1, size=self.size)
            # checked here, not when the head is built after an hour of encoding
            require(self.arch != "sam-head" or self.size % 2 == 0, f"sam-head: size must be even, got {self.size}")
        multiple = 2 ** (len(self.widths) - 1)
        require(
            self.arch == "sam-head" or self.encoder != "conv" or self.size % multiple == 0,
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
    targets: dict[str, torch.Tensor],
    heads: list[str],
    class_weights: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Each head's loss against its own targets, averaged over the pixels the batch labels (0 when
    there are none, still part of the graph so DDP sees every parameter used): cross-entropy on a
    label map (weighted per class by ``class_weights[head]`` when given), or on a soft map
    (``[B, C, S, S]`` scores in [0, 1]) the mean binary cross-entropy of each class's sigmoid."""

    losses = {}
    for name in heads:
        t, x = targets[name], logits[name].float()
        labelled = has_target(t)
        count = labelled.sum().clamp(min=1)
        if t.is_floating_point():
            bce = F.binary_cross_entropy_with_logits(x, t.clamp(min=0), reduction="none").mean(1)
            losses[name] = (bce * labelled).sum() / count
        else:
            weight = None if class_weights is None else class_weights.get(name)
            losses[name] = F.cross_entropy(x, t, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum") / count
    return losses


def balanced_class_weights(dataset: StudentDataset, heads: list[str], exponent: float) -> dict[str, torch.Tensor]:
    """Per head with label maps, ``freq_c ** -exponent`` over the pixels of its labels (absent classes
    count as one pixel), scaled so that the mean weight of a labelled pixel is 1."""

    hard = [h for h in heads if h not in dataset.soft]
    counts = torch.zeros(len(hard), dataset.num_classes, dtype=torch.float64)
    for index in range(len(dataset)):
        row = dict(zip(dataset.heads, dataset.labels[index]))
        for k, head in enumerate(hard):
            if row[head] is not None:
                t = read_label(row[head])
                t = t[t != IGNORE_INDEX]
                counts[k] += torch.bincount(t, minlength=dataset.num_classes)[: dataset.num_classes].double()
    weights = {}
    for k, head in enumerate(hard):
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


def _forward(model: nn.Module, inputs: tuple[torch.Tensor, ...], heads: list[str]) -> dict[str, torch.Tensor]:
    out = model(*inputs)
    return out if isinstance(out, dict) else {heads[0]: out}


def validate_epoch(predictor: StudentPredictor, images_dir: str, labels_dir: str) -> dict:
    """Pixel accuracy, mIoU, mACC, mDice and the primary head's cross-entropy (``loss``) on the images
    of ``images_dir`` that have a label map."""

    model, meta = predictor.model, predictor.meta
    was_training = model.training
    model.eval()
    meter = SegmentationMeter(meta["num_classes"])
    loss, pixels = 0.0, 0
    for path in list_images(images_dir):
        target = label_path(labels_dir, path.stem)
        if target.is_file():
            logits, labels = predictor([read_image(path)])[0][meta["primary"]], read_label(target)
            meter.update(logits.argmax(0), labels)
            labelled = int((labels != IGNORE_INDEX).sum())
            if labelled:
                ce = F.cross_entropy(logits[None], labels[None], ignore_index=IGNORE_INDEX, reduction="sum")
                loss, pixels = loss + float(ce), pixels + labelled
    model.train(was_training)
    result = meter.compute()
    return {**{k: result[k] for k in ("pixel_accuracy", "miou", "macc", "mdice")}, "loss": loss / max(pixels, 1)}


class StudentTrainer:
    """Build (data, model, optimizer), one epoch, and the state of a student run."""

    def __init__(self, config: StudentConfig, ctx: DistContext, progress: bool, say):
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
            "size": config.size,
            "mean": list(MEAN),
            "std": list(STD),
            "gt_subset": subset,
        }
        self.engine = features = None
        if config.arch == "sam-head":
            self.engine = config.engine(str(self.device))
            features = self._features(images, say)
            self.meta.update(
                size=config.size or 4 * self.engine.model.grid,
                image_branch=config.image_branch,
                head_width=config.head_width,
                sam={
                    "model": config.model,
                    "weights": self.engine.identity["weights"],
                    "checkpoint": config.checkpoint,
                    "level_shapes": [list(s) for s in self.engine.model.level_shapes],
                },
            )
        else:
            self.meta.update(widths=list(config.widths), encoder=config.encoder)
            if config.encoder_weights:
                self.meta["encoder_weights"] = "blake2b:" + file_digest(config.encoder_weights)
        self._build_model()
        self.dataset = StudentDataset(
            images, labels, self.heads, num_classes, self.meta["size"], config.flip, features, config.image_branch
        )
        self.meta["soft_heads"] = sorted(self.dataset.soft)
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
        self.final_epochs = math.floor(config.final_fraction * config.epochs + 1e-9) if len(self.heads) > 1 else 0
        self.predictor = StudentPredictor(self.model, self.meta, self.engine)

    def _features(self, images: list[Path], say) -> SamFeatures:
        """The training images' SAM features (and the validation images' in the cache): rank 0 encodes
        what the cache lacks, once; the others then read it."""
        cfg, ctx = self.config, self.ctx
        if ctx.rank == 0:
            features = SamFeatures(self.engine, images)
            if cfg.val_images is not None:
                SamFeatures(self.engine, list_images(cfg.val_images))
            say(str(self.engine.stats))
        ctx.barrier()
        if ctx.rank != 0:
            features = SamFeatures(self.engine, images)
        return features

    def _build_model(self) -> None:
        config = self.config
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.manual_seed(config.seed)
        model = build_from_meta(self.meta)
        if config.encoder_weights:
            model.trunk.load_encoder_weights(config.encoder_weights)
        self.model = model.to(self.device)
        parameters = self.model.parameters()
        if config.optimizer == "adam":
            self.optimizer = torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
        self.plateau = None
        if config.schedule == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="min", factor=0.5, patience=config.plateau_patience
            )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.train_model = self.model
        if self.ctx.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        # In the final phase the other heads get no gradient at all (grad None: the optimizer skips them).
        self.others = [
            p
            for name, head in getattr(self.model, "heads", {}).items()
            if name != self.primary
            for p in head.parameters()
        ]

    def lr_at(self, epoch: int) -> float:
        """The cosine schedule: a function of the epoch, so resuming needs no scheduler state."""
        return self.config.lr * 0.5 * (1 + math.cos(math.pi * epoch / self.config.epochs))

    def train_epoch(self, epoch: int) -> dict:
        config = self.config
        self.dataset.set_epoch(config.seed, epoch)
        self.sampler.set_epoch(epoch)
        if self.plateau is None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
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
        for inputs, targets in bar:
            inputs = tuple(x.to(self.device, non_blocking=True) for x in inputs)
            targets = {h: t.to(self.device, non_blocking=True) for h, t in targets.items()}
            total, losses = self._step(inputs, targets, active, final)
            meter.add(loss=total)
            for h in self.heads:  # a head's mean over the batches that had targets of its source
                meter.add(weight=float(has_target(targets[h]).any()), **{h: losses[h]})
            bar.set_postfix(loss=f"{total:.4f}")
        means = meter.means(self.ctx)
        record = {"loss": means["loss"], "lr": lr, "final_phase": final, "losses": {h: means[h] for h in self.heads}}
        if self.ctx.rank == 0 and config.val_images is not None:
            record["val"] = validate_epoch(self.predictor, config.val_images, config.val_labels)
        if self.plateau is not None:  # every rank steps on rank 0's validation loss
            monitored = record["val"]["loss"] if "val" in record else 0.0
            if config.val_images is not None:
                monitored = float(self.ctx.all_sum(torch.tensor([monitored], dtype=torch.float64))[0])
            self.plateau.step(monitored if config.val_images is not None else record["loss"])
        return record

    def _step(self, inputs: tuple, targets: dict, active: dict, final: bool) -> tuple[float, dict]:
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            logits = _forward(self.train_model, inputs, self.heads)
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
        state = {
            "meta": self.meta,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        if self.plateau is not None:
            state["plateau"] = self.plateau.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])

    def describe(self, record: dict) -> str:
        heads = "".join(f" {h} {v:.4f}" for h, v in record["losses"].items()) if len(self.heads) > 1 else ""
        val = f" val mIoU {record['val']['miou']:.4f}" if "val" in record else ""
        final = " (primary head only)" if record["final_phase"] else ""
        return f"loss {record['loss']:.4f}{heads}{val} lr {record['lr']:.2e}{final}"


def train_student(
    config: StudentConfig, on_epoch_end: Callable[[int, nn.Module, dict], None] | None = None, progress: bool = True
) -> Path:
    """Train (or continue) the student; returns the checkpoint ``config.out/last.pt``.
    ``on_epoch_end(epoch, model, record)`` is called on every rank after each epoch (from 1)."""
    return DistContext.run(lambda ctx: _train(config, ctx, on_epoch_end, progress))


def _train(config: StudentConfig, ctx: DistContext, on_epoch_end, progress: bool) -> Path:
    say = print if ctx.rank == 0 and progress else (lambda text: None)
    trainer = StudentTrainer(config, ctx, progress, say)
    run = RunDir(config.out, "student", config, rank=ctx.rank)
    subset = trainer.meta["gt_subset"]
    say(
        f"train-student: {len(trainer.dataset)} images, {trainer.meta['num_classes']} classes, {config.arch} "
        f"with heads {trainer.heads} (primary {trainer.primary!r})"
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
