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

Checkpoints after every epoch (atomic), resumes where it stopped, is
deterministic for a seed, and logs every constraint's satisfaction per epoch to
``OUT/log.jsonl``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from wsseg_fast.data import CocoWeakDataset
from wsseg_fast.io import append_jsonl, atomic_torch_save
from wsseg_fast.logic import class_truths, compile_knowledge_base
from wsseg_fast.logic.priors import load_priors
from wsseg_fast.pipelines.weak_training import (
    WeakItem,
    WeakTrainingConfig,
    embed_items,
    load_weak_items,
    run_settings,
)
from wsseg_fast.sam.model import MODEL_CONFIGS, build_sam
from wsseg_fast.sam.prompting import Embedding, predict_masks, preprocess

CHECKPOINT_NAME = "last.pt"
FINETUNED_NAME = "finetuned.pth"
CHECKPOINT_FORMAT = "wsseg_fast.finetune/1"
TRAINABLE = {
    "decoder": ("mask_decoder",),
    "decoder+prompt": ("mask_decoder", "prompt_encoder"),
    "all": ("mask_decoder", "prompt_encoder", "image_encoder"),
}


class FinetuneError(ValueError):
    """A setting or input file the fine-tuning cannot use; the message says which."""


@dataclass
class FinetuneConfig(WeakTrainingConfig):
    priors: str | None = None
    """YAML/JSON priors file (see :func:`load_priors`)."""

    train: str = "decoder"
    weight_decay: float = 0.0
    weights: dict[str, float] = field(default_factory=dict)
    """Weight of each constraint kind in SatAgg (see :func:`wsseg_fast.logic.compile_knowledge_base`)."""

    p_exists: float = 8.0
    """Exponent of the existential quantifier (pMean): large makes ∃ close to max, so a
    box row or column is satisfied by one confident pixel rather than by filling it
    (with p = 2, ∃ is a root-mean-square and rewards masks that fill their box)."""

    loss_scale: float = 0.5
    """The constraints are evaluated on the image scaled by this factor (masks, boxes,
    points and colours alike): 0.5 costs a quarter of full resolution."""

    distill: float = 0.0
    """Weight of a term that keeps what the SAM already knows: the binary cross-entropy between
    the masks and the un-fine-tuned SAM's mask probabilities (0: off). The constraints alone pull
    a SAM whose masks beat the boxes back towards the boxes."""


def _validate(cfg: FinetuneConfig) -> None:
    if cfg.train not in TRAINABLE:
        raise FinetuneError(f"train must be one of {', '.join(TRAINABLE)}, got {cfg.train!r}")
    if cfg.model not in MODEL_CONFIGS:
        raise FinetuneError(f"model must be one of {', '.join(MODEL_CONFIGS)}, got {cfg.model!r}")
    if cfg.epochs < 1:
        raise FinetuneError(f"epochs must be >= 1, got {cfg.epochs}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise FinetuneError(f"lr must be a positive number, got {cfg.lr}")
    if not (cfg.distill >= 0 and math.isfinite(cfg.distill)):
        raise FinetuneError(f"distill must be a number >= 0, got {cfg.distill}")


def finetune(cfg: FinetuneConfig, progress: bool = True) -> Path:
    """Run stage 1; returns the path of ``finetuned.pth`` (SAM weights: the trained
    modules' ``mask_decoder.*`` / ``prompt_encoder.*`` / ``image_encoder.*`` entries)."""

    _validate(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda message: print(message, flush=True) if progress else None  # noqa: E731
    dataset = CocoWeakDataset(cfg.coco, cfg.images)
    priors = load_priors(cfg.priors, dataset.class_names)
    items = load_weak_items(dataset, log)
    if not items:
        raise FinetuneError(f"{cfg.coco}: no readable image with a box to train on")

    train_encoder = cfg.train == "all"
    if not train_encoder:
        embed_items(cfg, items)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    sam = build_sam(cfg.model, cfg.checkpoint, with_encoder=train_encoder).to(device)
    modules = TRAINABLE[cfg.train]
    sam.requires_grad_(False)
    params = []
    for name in modules:
        getattr(sam, name).requires_grad_(True)
        params += list(getattr(sam, name).parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    start = _resume(cfg, out, sam, optimizer, modules)
    kbs = [_knowledge_base(item, dataset, priors, cfg.weights, _loss_size(item, cfg.loss_scale), cfg.p_exists)
           for item in items]
    teachers = [None] * len(items)
    if cfg.distill > 0:  # the starting SAM's masks, from the starting weights even when resuming
        teacher = build_sam(cfg.model, cfg.checkpoint, with_encoder=train_encoder).to(device)
        with torch.no_grad():
            teachers = [torch.sigmoid(mask_logits(teacher, item, kb, device)) for item, kb in zip(items, kbs)]
        del teacher
    for epoch in range(start, cfg.epochs):
        sam.train()
        began = time.perf_counter()
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        loss_sum, sat_sums = 0.0, {}
        bar = tqdm(order.tolist(), desc=f"finetune epoch {epoch + 1}/{cfg.epochs}", unit="img", disable=not progress, leave=False)
        for i in bar:
            loss, satisfaction = image_loss(sam, items[i], kbs[i], dataset.num_classes, device, teachers[i], cfg.distill)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            for key, value in satisfaction.items():
                sat_sums[key] = sat_sums.get(key, 0.0) + float(value)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        record = {"epoch": epoch + 1, "loss": loss_sum / len(items), "seconds": round(time.perf_counter() - began, 3),
                  "satisfaction": {k: v / len(items) for k, v in sorted(sat_sums.items())}}
        append_jsonl(out / "log.jsonl", record)
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['loss']:.4f} "
            + " ".join(f"{k}={v:.3f}" for k, v in record["satisfaction"].items()))
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "config": run_settings(cfg), "epoch": epoch + 1,
                           "modules": {name: getattr(sam, name).state_dict() for name in modules},
                           "optimizer": optimizer.state_dict()}, out / CHECKPOINT_NAME)
    weights = {f"{name}.{k}": v for name in modules for k, v in getattr(sam, name).state_dict().items()}
    atomic_torch_save(weights, out / FINETUNED_NAME)
    return out / FINETUNED_NAME


def _resume(cfg: FinetuneConfig, out: Path, sam, optimizer, modules) -> int:
    """The epoch to start from: 0, or where ``out/last.pt`` stopped (same settings only)."""

    path = out / CHECKPOINT_NAME
    if not path.exists():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FinetuneError(f"{path} cannot be read ({exc}); delete it to start over") from None
    if state.get("format") != CHECKPOINT_FORMAT or state.get("config") != run_settings(cfg):
        raise FinetuneError(f"{out} holds a fine-tuning run with other settings; use another --out or delete {path}")
    for name in modules:
        getattr(sam, name).load_state_dict(state["modules"][name])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"])


def _loss_size(item: WeakItem, scale: float) -> tuple[int, int]:
    h, w = item.image.shape[:2]
    return max(1, round(h * scale)), max(1, round(w * scale))


def mask_logits(sam, item: WeakItem, kb, device) -> torch.Tensor:
    """``[N, h, w]`` SAM's mask logits for the image's boxes at the knowledge base's resolution."""
    embedding = item.embedding
    if embedding is None:  # the encoder trains: embed with autograd
        x, resized = preprocess(item.image, sam.image_encoder.img_size)
        embedding = Embedding(sam.image_encoder(x[None].to(device))[0], tuple(item.image.shape[:2]), resized)
    return predict_masks(sam, embedding, boxes=item.boxes, output_size=kb.image_size).logits[:, 0].float()


def image_loss(sam, item: WeakItem, kb, num_classes: int, device, teacher: torch.Tensor | None = None,
               distill: float = 0.0) -> tuple[torch.Tensor, dict]:
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
        {"annotations": item.annotations, "tags": item.tags}, dataset.num_classes, size, priors=priors,
        images=torch.from_numpy(image.copy()).permute(2, 0, 1)[None], class_names=dataset.class_names,
        weights=weights, category_map=dataset.class_index, annotation_size=tuple(item.image.shape[:2]),
        exhaustive=True, background=0, p_exists=p_exists)
