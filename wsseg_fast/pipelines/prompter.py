"""``train-prompter``: WPS-SAM's query prompter, trained on cached SAM embeddings and the teacher
prompts of the weak boxes (inference: ``pseudo-label --method prompter``, in
:mod:`wsseg_fast.pipelines.methods.prompter`).

It trains on embeddings from the shared embedding cache (the same keys as the pseudo-label job
and ``finetune``), encoding only missing ones, once; never the image encoder per epoch. The run
lives in a :class:`~wsseg_fast.pipelines.training.RunDir`; the trained prompter is
``OUT/prompter.pt``. Under ``torchrun`` (``WORLD_SIZE`` > 1) it runs DDP (gloo on CPUs, NCCL on
GPUs): every rank takes its share of each epoch's batches (``batch_size`` per rank); only rank 0
writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from wsseg_fast.config import at_least, require
from wsseg_fast.data import CocoWeakDataset
from wsseg_fast.errors import CheckpointError, DataError
from wsseg_fast.matching import HungarianMatcher, PromptSetCriterion
from wsseg_fast.models.prompter import QueryPrompter
from wsseg_fast.pipelines.distributed import DistContext
from wsseg_fast.pipelines.training import Meter, RunDir, epoch_shard, fit
from wsseg_fast.pipelines.weak_training import WeakTrainingConfig, embed_items, load_weak_items
from wsseg_fast.sam.prompting import encode_boxes, input_frame_boxes
from wsseg_fast.sam.registry import build_model, model_weights_id

PROMPTER_NAME = "prompter.pt"
PROMPTER_FORMAT = "wsseg_fast.prompter/1"
LOSS_KEYS = ("loss", "loss_cls", "loss_reg")


@dataclass
class PrompterConfig(WeakTrainingConfig):
    """``out`` gets ``last.pt`` (resumable state), ``prompter.pt`` and ``log.jsonl``;
    ``cache`` is shared with pseudo-label / finetune; ``coco`` needs boxes."""

    epochs: int = 50
    """Passes over the images."""

    batch_size: int = 16
    """Images per step and process."""

    no_object_weight: float = 0.1
    """CE weight of the no-object class (DETR's eos_coef; the paper's loss: 1): with 1, the ~20
    unmatched queries of each image outweigh its few objects and no query passes the threshold."""

    normalize_prompts: bool = True
    """Standardise the prompt head's output by the teacher tokens' mean and std (the loss stays on
    SAM's tokens); --no-normalize-prompts regresses SAM's tokens directly."""

    num_queries: int = 25
    """Queries (the most objects an image can have)."""

    d_model: int = 256
    """Transformer width."""

    nhead: int = 8
    """Attention heads."""

    dim_feedforward: int = 1024
    """Transformer feed-forward width."""

    num_encoder_layers: int = 6
    """Transformer encoder layers."""

    num_decoder_layers: int = 6
    """Transformer decoder layers."""

    dropout: float = 0.1
    """Transformer dropout."""

    stride: int = 2
    """Of the two downsampling convs (1 keeps tiny's 16x16 grid)."""

    prompt_head: Literal["tokens", "box"] = "tokens"
    """tokens: the MLP gives SAM's prompt tokens (the paper's); box: it gives a box, encoded into
    tokens as SAM encodes boxes (its L1 to the weak box joins the loss)."""

    def validate(self) -> None:
        super().validate()
        at_least(1, batch_size=self.batch_size, num_queries=self.num_queries, stride=self.stride)
        require(0 < self.no_object_weight <= 1, f"no_object_weight must be in (0, 1], got {self.no_object_weight}")


def train_step(
    prompter: QueryPrompter,
    criterion: PromptSetCriterion,
    optimizer: torch.optim.Optimizer,
    embeddings: torch.Tensor,
    targets: list[dict[str, torch.Tensor]],
) -> dict[str, float]:
    """One step: forward on a batch of embeddings, ONE batched matcher call inside the
    criterion, backward, optimizer step. ``targets[b]``: ``labels [T_b]`` (0..C-1) and
    ``prompts [T_b, K, D]`` (teacher tokens)."""
    prompter.train()
    losses = criterion(prompter(embeddings), targets)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items() if k != "assignment"}


def load_prompter(path, *, model: str | None = None, num_classes: int | None = None) -> tuple[QueryPrompter, dict]:
    """A trained prompter and its metadata (``model``, ``class_names``); checks that it was
    trained for SAM variant ``model`` and ``num_classes`` foreground classes when given."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"prompter checkpoint {path} cannot be read ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != PROMPTER_FORMAT or "prompter" not in state:
        raise CheckpointError(f"{path} is not a prompter checkpoint (from wsseg-fast train-prompter)")
    if model is not None and state["model"] != model:
        raise CheckpointError(
            f"prompter checkpoint {path} was trained on SAM {state['model']!r} embeddings, not {model!r}"
        )
    cfg = state["prompter_config"]
    if num_classes is not None and cfg["num_classes"] != num_classes:
        raise CheckpointError(
            f"prompter checkpoint {path} predicts {cfg['num_classes']} classes, the dataset has {num_classes}"
        )
    prompter = QueryPrompter(**cfg)
    prompter.load_state_dict(state["prompter"])
    return prompter.eval(), {"model": state["model"], "class_names": state["class_names"]}


def _targets(cfg: PrompterConfig, model, items) -> list[dict[str, torch.Tensor]]:
    """Per image: its classes (0..C-1) and the teacher prompts of its boxes (and, for the box head,
    the boxes as fractions of the input frame, at the pixel centres SAM encodes: +0.5)."""
    img_size = model.img_size
    targets = []
    for item in items:
        original, resized = item.embedding.original_size, item.embedding.input_size
        target = {"labels": item.classes.long() - 1, "prompts": encode_boxes(model, item.boxes, original, resized)}
        if cfg.prompt_head == "box":
            boxes = input_frame_boxes(torch.as_tensor(item.boxes, dtype=torch.float32), original, resized)
            target["boxes"] = (boxes + 0.5) / img_size
        targets.append(target)
    return targets


class PrompterTrainer:
    """Build (embeddings, teacher prompts, prompter, matcher), one epoch, and the state of a run."""

    def __init__(self, cfg: PrompterConfig, ctx: DistContext, progress: bool, say):
        self.cfg, self.ctx, self.progress = cfg, ctx, progress
        self.dataset = CocoWeakDataset(cfg.coco, cfg.images)
        self.items = load_weak_items(self.dataset, say)
        if not self.items:
            raise DataError(f"{cfg.coco}: no readable image with a box: the prompter learns from boxes")
        # through the shared cache: rank 0 encodes the missing embeddings, once; the others read them
        if ctx.rank == 0:
            embed_items(cfg, self.items, say)
        ctx.barrier()
        if ctx.rank != 0:
            embed_items(cfg, self.items, lambda text: None)
        sam = build_model(cfg.model, cfg.checkpoint, with_encoder=False)
        self.embeddings = torch.stack([item.embedding.tensor.float() for item in self.items])
        self.targets = _targets(cfg, sam, self.items)
        self.device = torch.device(cfg.device)
        self._build_model(sam)
        self.meta = {
            "model": cfg.model,
            "weights": model_weights_id(cfg.model, cfg.checkpoint),
            "class_names": list(self.dataset.class_names),
        }

    def _build_model(self, sam) -> None:
        cfg = self.cfg
        num_classes = self.dataset.num_classes - 1
        torch.manual_seed(cfg.seed)
        prompter = QueryPrompter(
            num_classes,
            embed_size=self.embeddings.shape[-1],
            d_model=cfg.d_model,
            nhead=cfg.nhead,
            dim_feedforward=cfg.dim_feedforward,
            num_encoder_layers=cfg.num_encoder_layers,
            num_decoder_layers=cfg.num_decoder_layers,
            num_queries=cfg.num_queries,
            dropout=cfg.dropout,
            stride=cfg.stride,
            prompt_head=cfg.prompt_head,
        )
        if cfg.prompt_head == "box":
            prompter.set_box_encoder(sam.prompt_encoder)
        elif cfg.normalize_prompts:
            prompter.set_prompt_stats(torch.cat([t["prompts"] for t in self.targets]))
        self.prompter = prompter.to(self.device)
        if cfg.prompt_head == "box":  # boxes are matched and regressed as boxes: the tokens follow from them
            criterion = PromptSetCriterion(
                num_classes, HungarianMatcher(cost_prompt=0.0), reg_weight=0.0, no_object_weight=cfg.no_object_weight
            )
        else:
            criterion = PromptSetCriterion(num_classes, HungarianMatcher(), no_object_weight=cfg.no_object_weight)
        self.criterion = criterion.to(self.device)
        self.optimizer = torch.optim.Adam(self.prompter.parameters(), lr=cfg.lr)
        self.model = self.prompter
        if self.ctx.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.prompter, device_ids=device_ids)

    def train_epoch(self, epoch: int) -> dict:
        cfg, ctx = self.cfg, self.ctx
        order = epoch_shard(len(self.items), cfg.seed, epoch, ctx.rank, ctx.world).tolist()
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        meter = Meter(*LOSS_KEYS)  # means over the images of every rank
        bar = tqdm(
            batches,
            desc=f"train-prompter epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            disable=not (self.progress and ctx.rank == 0),
            leave=False,
        )
        for batch in bar:
            targets = [{k: v.to(self.device) for k, v in self.targets[i].items()} for i in batch]
            losses = train_step(
                self.model, self.criterion, self.optimizer, self.embeddings[batch].to(self.device), targets
            )
            meter.add(weight=len(batch), **{k: losses[k] for k in LOSS_KEYS})
            bar.set_postfix(loss=f"{losses['loss']:.4f}")
        return meter.means(ctx)

    def state_dict(self) -> dict:
        return {
            "meta": self.meta,
            "prompter": self.prompter.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.prompter.load_state_dict(state["prompter"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])

    def describe(self, record: dict) -> str:
        return f"loss {record['loss']:.4f} (cls {record['loss_cls']:.4f}, prompt {record['loss_reg']:.4f})"


def train_prompter(cfg: PrompterConfig, progress: bool = True) -> Path:
    """Train (or continue) the prompter on the weak boxes of ``cfg.coco``; returns the path of
    ``prompter.pt``. Under torchrun, DDP (see the module)."""
    return DistContext.run(lambda ctx: _train(cfg, ctx, progress))


def _train(cfg: PrompterConfig, ctx: DistContext, progress: bool) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    say = print if ctx.rank == 0 and progress else (lambda text: None)
    run = RunDir(cfg.out, "prompter", cfg, rank=ctx.rank)
    trainer = PrompterTrainer(cfg, ctx, progress, say)
    fit(trainer, run, cfg.epochs, say)
    return run.save_artifact(
        PROMPTER_NAME,
        {
            "format": PROMPTER_FORMAT,
            "model": cfg.model,
            "class_names": trainer.meta["class_names"],
            "prompter_config": trainer.prompter.config(),
            "prompter": trainer.prompter.state_dict(),
        },
    )
