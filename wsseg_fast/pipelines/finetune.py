"""Stage 1: fine-tune SAM under fuzzy-logic constraints compiled from weak labels.

Every image's weak labels (boxes, points, scribbles, image tags) and the priors
of a small file (containment, exclusion, one class per pixel, the pairwise
colour prior) become one knowledge base (:mod:`wsseg_fast.logic`). SAM is
prompted with every box of the image in one decoder call; the instance masks
become per-class truth values (a pixel is of class c when any of its class-c
instances covers it: the product t-conorm; background when none does), and the
loss is the knowledge base's ``1 - SatAgg``. The fine-tuned weights then make
the ``sbr`` pseudo-labels (``wsseg-fast pseudo-label --method sbr --finetuned``).

What trains: ``decoder`` (SAM's mask decoder, on cached embeddings),
``decoder+prompt`` (and the prompt encoder), or ``all`` (the image encoder too,
so embeddings are recomputed every step: meant for the ``tiny`` config).

The run lives in a :class:`~wsseg_fast.pipelines.training.RunDir` (checkpoint after every epoch,
re-running resumes), is deterministic for a seed, and logs every constraint's satisfaction per
epoch to ``OUT/log.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from wsseg_fast.config import at_least, positive
from wsseg_fast.data import CocoWeakDataset
from wsseg_fast.errors import DataError
from wsseg_fast.io import file_digest
from wsseg_fast.logic import class_truths, compile_knowledge_base
from wsseg_fast.logic.priors import load_priors
from wsseg_fast.pipelines.training import Meter, RunDir, epoch_shard, fit
from wsseg_fast.pipelines.weak_training import WeakItem, WeakTrainingConfig, embed_items, load_weak_items
from wsseg_fast.sam.prompting import Embedding, predict_masks
from wsseg_fast.sam.registry import build_model, model_weights_id

FINETUNED_NAME = "finetuned.pth"
TRAINABLE = {
    "decoder": ("mask_decoder",),
    "decoder+prompt": ("mask_decoder", "prompt_encoder"),
    "all": ("mask_decoder", "prompt_encoder", "image_encoder"),
}


@dataclass
class FinetuneConfig(WeakTrainingConfig):
    priors: str | None = None
    """YAML priors: contains, excludes, one_class_per_pixel, pairwise, box_size (see docs/logic.md)."""

    train: Literal["decoder", "decoder+prompt", "all"] = "decoder"
    """What trains: the mask decoder (on cached embeddings), + the prompt encoder, or all (the image
    encoder too: embeddings recomputed every step, meant for tiny)."""

    weight_decay: float = 0.0
    """AdamW weight decay."""

    weights: dict[str, float] = field(default_factory=dict)
    """A constraint kind's weight in SatAgg (boxes, points, scribbles, tags_present, tags_absent,
    contains, excludes, one_class_per_pixel, box_size, pairwise; default 1)."""

    p_exists: float = 8.0
    """Exponent of the existential quantifier (pMean): large makes it close to max, so a box row or
    column is satisfied by one confident pixel rather than by filling it."""

    loss_scale: float = 0.5
    """Evaluate the constraints on the image scaled by this factor (masks, boxes, points and colours
    alike): 0.5 costs a quarter of full resolution."""

    distill: float = 0.0
    """Weight of a cross-entropy to the un-fine-tuned SAM's masks: keeps what it knows (0: off); the
    constraints alone pull a SAM whose masks beat the boxes back towards the boxes."""

    def validate(self) -> None:
        super().validate()
        at_least(0, distill=self.distill)
        positive(loss_scale=self.loss_scale, p_exists=self.p_exists)


class FinetuneTrainer:
    """Build (items and their knowledge bases, SAM, the teacher masks), one epoch, and the state
    of a stage-1 run."""

    def __init__(self, cfg: FinetuneConfig, progress: bool, say):
        self.cfg, self.progress = cfg, progress
        self.dataset = CocoWeakDataset(cfg.coco, cfg.images)
        priors = load_priors(cfg.priors, self.dataset.class_names)
        self.items = load_weak_items(self.dataset, say)
        if not self.items:
            raise DataError(f"{cfg.coco}: no readable image with a box to train on")
        train_encoder = cfg.train == "all"
        if not train_encoder:
            embed_items(cfg, self.items, say)
        self.device = torch.device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.sam = build_model(cfg.model, cfg.checkpoint, with_encoder=train_encoder).to(self.device)
        self.roles = set(TRAINABLE[cfg.train])
        self.sam.module.requires_grad_(False)
        params = [p for k, p in self.sam.module.named_parameters() if self.sam.role_of(k) in self.roles]
        for p in params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.kbs = [
            _knowledge_base(item, self.dataset, priors, cfg.weights, _loss_size(item, cfg.loss_scale), cfg.p_exists)
            for item in self.items
        ]
        self.names = sorted({c.name for kb in self.kbs for c in kb.constraints if c.weight > 0})
        self.teachers = [None] * len(self.items)
        if cfg.distill > 0:  # the starting SAM's masks, from the starting weights even when resuming
            teacher = build_model(cfg.model, cfg.checkpoint, with_encoder=train_encoder).to(self.device)
            with torch.no_grad():
                self.teachers = [
                    torch.sigmoid(mask_logits(teacher, item, kb, self.device)) for item, kb in zip(self.items, self.kbs)
                ]
        self.meta = {
            "weights": model_weights_id(cfg.model, cfg.checkpoint),
            "class_names": list(self.dataset.class_names),
            **({"priors": file_digest(cfg.priors)} if cfg.priors else {}),  # its content, not its path
        }

    def train_epoch(self, epoch: int) -> dict:
        cfg = self.cfg
        self.sam.module.train()
        order = epoch_shard(len(self.items), cfg.seed, epoch).tolist()
        meter = Meter("loss", *self.names)  # means over the images (a constraint an image lacks counts 0)
        bar = tqdm(
            order, desc=f"finetune epoch {epoch + 1}/{cfg.epochs}", unit="img", disable=not self.progress, leave=False
        )
        for i in bar:
            loss, satisfaction = image_loss(
                self.sam,
                self.items[i],
                self.kbs[i],
                self.dataset.num_classes,
                self.device,
                self.teachers[i],
                cfg.distill,
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            meter.add(loss=loss.item(), **{k: float(satisfaction.get(k, 0.0)) for k in self.names})
            bar.set_postfix(loss=f"{loss.item():.4f}")
        means = meter.means()
        return {"loss": means["loss"], "satisfaction": {k: means[k] for k in self.names}}

    def weights(self) -> dict[str, torch.Tensor]:
        """The trained parts' weights under the official keys; with the image encoder, the whole model."""
        state = self.sam.module.state_dict()
        if "image_encoder" in self.roles:
            return state
        return {k: v for k, v in state.items() if self.sam.role_of(k) in self.roles}

    def state_dict(self) -> dict:
        return {"meta": self.meta, "weights": self.weights(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sam.module.load_state_dict(state["weights"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])

    def describe(self, record: dict) -> str:
        return f"loss {record['loss']:.4f} " + " ".join(f"{k}={v:.3f}" for k, v in record["satisfaction"].items())


def finetune(cfg: FinetuneConfig, progress: bool = True) -> Path:
    """Run (or continue) stage 1; returns the path of ``finetuned.pth``: the trained parts' weights under
    the official keys (``mask_decoder.*``, ``prompt_encoder.*``; ``sam_`` ones for SAM 2.1), or the whole
    model when the image encoder trained too."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    say = print if progress else (lambda text: None)
    run = RunDir(cfg.out, "finetune", cfg)
    trainer = FinetuneTrainer(cfg, progress, say)
    fit(trainer, run, cfg.epochs, say)
    return run.save_artifact(FINETUNED_NAME, trainer.weights())


def _loss_size(item: WeakItem, scale: float) -> tuple[int, int]:
    h, w = item.image.shape[:2]
    return max(1, round(h * scale)), max(1, round(w * scale))


def mask_logits(model, item: WeakItem, kb, device) -> torch.Tensor:
    """``[N, h, w]`` SAM's mask logits for the image's boxes at the knowledge base's resolution."""
    embedding = item.embedding
    if embedding is None:  # the encoder trains: embed with autograd
        x, resized = model.preprocess(item.image)
        levels = model.encode(x[None].to(device))
        embedding = Embedding(levels[0][0], tuple(item.image.shape[:2]), resized, tuple(t[0] for t in levels[1:]))
    return predict_masks(model, embedding, boxes=item.boxes, output_size=kb.image_size).logits[:, 0].float()


def image_loss(
    sam, item: WeakItem, kb, num_classes: int, device, teacher: torch.Tensor | None = None, distill: float = 0.0
) -> tuple[torch.Tensor, dict]:
    """``1 - SatAgg`` of the image's knowledge base ``kb`` on SAM's masks for its boxes
    (at the knowledge base's resolution), and each constraint's satisfaction; plus ``distill``
    times the cross-entropy to the ``teacher`` mask probabilities, if given."""

    logits = mask_logits(sam, item, kb, device)
    loss, satisfaction = kb(class_truths(logits, item.classes.to(device), num_classes)[None])
    if teacher is not None and distill > 0:
        loss = loss + distill * F.binary_cross_entropy_with_logits(logits, teacher)
    return loss, satisfaction


def _knowledge_base(item: WeakItem, dataset, priors: dict, weights: dict, size: tuple[int, int], p_exists: float):
    """One image's knowledge base at the loss resolution ``size``: its boxes, points,
    scribbles and tags (COCO boxes are exhaustive: unmentioned classes are absent), the
    priors, and the pairwise colour prior on the resized image."""

    image = np.asarray(Image.fromarray(item.image).resize(size[::-1], Image.BILINEAR))
    return compile_knowledge_base(
        {"annotations": item.annotations, "tags": item.tags},
        dataset.num_classes,
        size,
        priors=priors,
        images=torch.from_numpy(image.copy()).permute(2, 0, 1)[None],
        class_names=dataset.class_names,
        weights=weights,
        category_map=dataset.class_index,
        annotation_size=tuple(item.image.shape[:2]),
        exhaustive=True,
        background=0,
        p_exists=p_exists,
    )
