"""``train-cam``: a multi-label CAM classifier from image tags, for the ``cam``, ``cam-rw`` and
``cam-sam-rw`` pseudo-label methods.

It reads only the images' ``tags`` (boxes, points and masks are ignored). With the default
``sam`` backbone it embeds the images once through :meth:`SamEngine.embed` with the shared
:class:`~wsseg_fast.cache.EmbeddingCache` (same keys as the pseudo-label job: only missing
embeddings are encoded); with ``resnet50`` it trains torchvision's ResNet-50 with the heads on
the images resized as SAM resizes them. Then it trains
:class:`~wsseg_fast.models.cam.CamClassifier` with the switchable terms: BCE, WeakMedSAM's
sub-class BCE, SSC's superpixel alignment (beta_a) and CAM-driven reconstruction with a VGG16
perceptual loss (beta_p). The run lives in a :class:`~wsseg_fast.pipelines.training.RunDir`.
Under ``torchrun`` (``WORLD_SIZE`` > 1) it runs DDP like ``train-student`` (gloo on CPUs): each
epoch's seeded order is padded to a multiple of the world size and sharded, every rank takes
``batch_size`` of its shard per step, the logged losses are averaged over the ranks, rank 0 writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm import tqdm

from wsseg_fast.config import at_least, positive, require
from wsseg_fast.data import CocoWeakDataset
from wsseg_fast.io import file_digest
from wsseg_fast.models.cam import (
    RESNET_STRIDE,
    CamClassifier,
    CamDecoder,
    cam_loss,
    perceptual_loss,
    resnet50_body,
    vgg16_features,
)
from wsseg_fast.ops import ssc_alignment_loss
from wsseg_fast.pipelines.cam.data import (
    embed_dataset,
    image_superpixels,
    letterboxed,
    pixel_mask,
    resnet_input,
    subclass_targets,
    tagged_images,
)
from wsseg_fast.pipelines.distributed import DistContext
from wsseg_fast.pipelines.training import Meter, RunDir, epoch_shard, fit
from wsseg_fast.sam.settings import EncoderSettings

RESNET_CHANNELS = 2048
LOSS_NAMES = ("bce", "sub_bce", "ssc", "recon", "total")


@dataclass
class CamConfig(EncoderSettings):
    coco: str
    """COCO JSON whose images carry 'tags' (only tags are read)."""

    out: str
    """Output directory: last.pt after every epoch (re-running resumes), log.jsonl, config.yaml."""

    images: str | None = None
    """Image directory (default: images/ beside the JSON)."""

    backbone: Literal["sam", "resnet50"] = "sam"
    """sam: the frozen SAM encoder's cached embeddings; resnet50: torchvision's ResNet-50 trained end to end."""

    backbone_weights: str | None = None
    """resnet50: a torchvision resnet50 state dict (default: random init)."""

    image_size: int = 256
    """resnet50: longest image side it sees (a multiple of 32)."""

    hidden: int = 256
    """Adapter channels."""

    epochs: int = 10
    """Passes over the tagged images."""

    batch_size: int = 8
    """Images per step and process."""

    lr: float = 1e-3
    """Adam learning rate."""

    seed: int = 0
    """Seed of the weights and the shuffling."""

    ssc_weight: float = 0.0
    """SSC activation self-modulation: weight of the superpixel alignment loss (paper: 1; 0 = off)."""

    ssc_segments: int = 64
    """SLIC superpixels per image (computed once, at 4x the feature grid)."""

    ssc_erode: int = 2
    """Erosion of the modulation target, pixels at 4x the feature grid."""

    recon_weight: float = 0.0
    """SSC CAM-driven reconstruction: weight of the VGG16 perceptual loss (paper: 1; 0 = off)."""

    vgg_weights: str | None = None
    """torchvision vgg16 state dict for the perceptual loss (without it: random weights, for tests
    only; the run says so)."""

    subclasses: int = 0
    """WeakMedSAM sub-classes: k-means clusters per class (paper: 8; 0 = off; needs scikit-learn)."""

    RUNTIME = (*EncoderSettings.RUNTIME, "out", "epochs")

    def validate(self) -> None:
        super().validate()
        at_least(1, epochs=self.epochs, batch_size=self.batch_size)
        positive(lr=self.lr)
        at_least(0, ssc_weight=self.ssc_weight, recon_weight=self.recon_weight, subclasses=self.subclasses)
        require(
            self.backbone != "resnet50" or (self.image_size >= RESNET_STRIDE and self.image_size % RESNET_STRIDE == 0),
            f"image_size must be a positive multiple of {RESNET_STRIDE}, got {self.image_size}",
        )
        require(
            not self.backbone_weights or self.backbone == "resnet50",
            "backbone_weights is for backbone resnet50 (the sam backbone's weights are the checkpoint)",
        )
        require(
            not self.vgg_weights or bool(self.recon_weight),
            "vgg_weights is for the reconstruction branch: give recon_weight too",
        )


def _inputs(cfg: CamConfig, dataset, indices: list[int], say) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The classifier's inputs (SAM embeddings or ResNet images), their valid cells and the
    backbone's identity for the checkpoint."""
    if cfg.backbone == "sam":
        engine = cfg.engine()
        inputs, valid = embed_dataset(engine, dataset, indices)
        say(str(engine.stats))
        return inputs, valid, {"model": cfg.model, "weights": engine.identity["weights"], "image_size": engine.img_size}
    pairs = [resnet_input(dataset.load_image(dataset.images[i]), cfg.image_size) for i in indices]
    weights = "blake2b:" + file_digest(cfg.backbone_weights) if cfg.backbone_weights else "random"
    return (
        torch.stack([p[0] for p in pairs]),
        torch.stack([p[1] for p in pairs]),
        {"model": "resnet50", "weights": weights, "image_size": cfg.image_size},
    )


class CamTrainer:
    """Build (inputs, classifier and its optional terms), one epoch, and the state of a train-cam run."""

    def __init__(self, cfg: CamConfig, ctx: DistContext, say):
        self.cfg, self.ctx = cfg, ctx
        dataset = CocoWeakDataset(cfg.coco, cfg.images)
        self.indices, self.targets = tagged_images(dataset)
        say(
            f"train-cam: {len(self.indices)} of {len(dataset)} images have tags (boxes, points and masks are ignored)"
            + (f"; DDP over {ctx.world} processes" if ctx.world > 1 else "")
        )
        self.inputs, self.valid, identity = _inputs(cfg, dataset, self.indices, say)
        torch.manual_seed(cfg.seed)
        backbone = resnet50_body(cfg.backbone_weights) if cfg.backbone == "resnet50" else None
        in_channels = RESNET_CHANNELS if backbone is not None else self.inputs.shape[1]
        self.model = CamClassifier(
            in_channels, dataset.num_classes - 1, cfg.hidden, self.targets.shape[1] * cfg.subclasses, backbone
        )
        self.decoder = CamDecoder(self.model.num_classes) if cfg.recon_weight else None
        self.vgg = vgg16_features(cfg.vgg_weights) if cfg.recon_weight else None
        vgg_identity = None
        if cfg.recon_weight:
            vgg_identity = "blake2b:" + file_digest(cfg.vgg_weights) if cfg.vgg_weights else "random"
            if not cfg.vgg_weights:
                say(
                    "train-cam: WARNING: the perceptual loss runs on a VGG16 with RANDOM weights (no --vgg-weights); "
                    "fine for tests, not for real training"
                )
        self._prepare_terms(dataset)
        params = list(self.model.parameters()) + (list(self.decoder.parameters()) if self.decoder is not None else [])
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr)
        self.meta = {
            "backbone": cfg.backbone,
            **identity,
            "in_channels": in_channels,
            "hidden": cfg.hidden,
            "num_classes": dataset.num_classes - 1,
            "num_subclasses": self.model.num_subclasses,
            "ssc_weight": cfg.ssc_weight,
            "ssc_segments": cfg.ssc_segments,
            "ssc_erode": cfg.ssc_erode,
            "recon_weight": cfg.recon_weight,
            "vgg_weights": vgg_identity,
            "class_names": dataset.class_names,
            "coco": file_digest(cfg.coco),
        }
        self.train_model, self.train_decoder = self.model, self.decoder
        if ctx.world > 1:  # gradients all-reduced; both start from the same seeded weights on every rank
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.model)
            if self.decoder is not None:
                self.train_decoder = torch.nn.parallel.DistributedDataParallel(self.decoder)

    def _prepare_terms(self, dataset) -> None:
        """What the optional terms need, computed once per run: sub-class labels from the backbone's
        features before training (the cached embedding for sam), the images at 4x the feature grid,
        their superpixels."""
        cfg, grid = self.cfg, self.valid.shape[-1]
        self.sub_targets = self.superpixels = self.images = self.pixels = None
        if cfg.subclasses:
            with torch.no_grad():
                feats = torch.cat([self.model.eval().backbone_features(x) for x in self.inputs.split(cfg.batch_size)])
            cells = F.interpolate(self.valid, size=feats.shape[2:], mode="nearest")
            pooled = (feats * cells).sum((2, 3)) / cells.sum((2, 3))
            self.sub_targets = subclass_targets(pooled, self.targets, cfg.subclasses, cfg.seed)
        if cfg.ssc_weight or cfg.recon_weight:
            self.images, sizes = letterboxed(dataset, self.indices, 4 * grid)
            self.pixels = pixel_mask(sizes, 4 * grid)
            if cfg.ssc_weight:
                self.superpixels = image_superpixels(self.images, sizes, cfg.ssc_segments)

    def _terms(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        logits, sub_logits, cams = self.train_model(self.inputs[batch], self.valid[batch])
        sub_targets = self.sub_targets[batch] if self.sub_targets is not None else None
        terms = cam_loss(logits, self.targets[batch], sub_logits, sub_targets)
        if self.superpixels is not None:
            terms["ssc"] = cfg.ssc_weight * ssc_alignment_loss(
                F.interpolate(cams, size=self.superpixels.shape[1:], mode="bilinear", align_corners=False),
                self.superpixels[batch],
                present=self.targets[batch],
                erode=cfg.ssc_erode,
            )
        if self.decoder is not None:  # the padding is not the image's: both are zero there
            reconstruction = self.train_decoder(cams) * self.pixels[batch]
            terms["recon"] = cfg.recon_weight * perceptual_loss(self.vgg, reconstruction, self.images[batch])
        terms["total"] = terms["total"] + sum(terms[k] for k in ("ssc", "recon") if k in terms)
        return terms

    def train_epoch(self, epoch: int) -> dict:
        cfg, ctx = self.cfg, self.ctx
        self.model.train()
        shard = epoch_shard(len(self.indices), cfg.seed, epoch, ctx.rank, ctx.world)
        meter = Meter(*LOSS_NAMES)  # per-term means over the images of every rank
        bar = tqdm(
            shard.split(cfg.batch_size),
            desc=f"train-cam epoch {epoch + 1}/{cfg.epochs}",
            disable=not (self.progress and ctx.rank == 0),
            dynamic_ncols=True,
        )
        for batch in bar:
            terms = self._terms(batch)
            self.optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            self.optimizer.step()
            meter.add(weight=len(batch), **{k: float(v.detach()) for k, v in terms.items() if k in LOSS_NAMES})
            bar.set_postfix(loss=f"{float(terms['total'].detach()):.4f}")
        means = meter.means(ctx)
        record = {k: means[k] for k in LOSS_NAMES if k in terms}
        if self.meta["vgg_weights"] == "random":
            record["vgg_weights"] = "random"
        return record

    def state_dict(self) -> dict:
        state = {"meta": self.meta, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.decoder is not None:
            state["decoder"] = self.decoder.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.decoder is not None:
            self.decoder.load_state_dict(state["decoder"])
        self.optimizer.load_state_dict(state["optimizer"])

    def describe(self, record: dict) -> str:
        return " ".join(f"{k} {record[k]:.4f}" for k in LOSS_NAMES if k in record)


def train_cam(cfg: CamConfig, progress: bool = True) -> str:
    """Train (or continue) the classifier; returns the path of ``last.pt``. Under torchrun, DDP
    (see the module)."""
    return DistContext.run(lambda ctx: _train(cfg, ctx, progress))


def _train(cfg: CamConfig, ctx: DistContext, progress: bool) -> str:
    say = print if ctx.rank == 0 and progress else (lambda text: None)
    trainer = CamTrainer(cfg, ctx, say)
    trainer.progress = progress
    run = RunDir(cfg.out, "cam", cfg, rank=ctx.rank)
    fit(trainer, run, cfg.epochs, say)
    return str(run.checkpoint)
