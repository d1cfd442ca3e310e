"""WPS-SAM prompter: teacher prompts from weak boxes, one training step on cached
embeddings, and prompt-free inference (one mask-decoder call per image, overlaps
resolved into one semantic map).

:func:`train_prompter` trains on embeddings from the shared embedding cache (the
same keys as the pseudo-label job and ``finetune``), encoding only missing ones,
once; never the image encoder per epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from wsseg_fast.data import CocoWeakDataset
from wsseg_fast.io import append_jsonl, atomic_torch_save
from wsseg_fast.matching import HungarianMatcher, PromptSetCriterion
from wsseg_fast.models.prompter import PROMPT_HEADS, QueryPrompter
from wsseg_fast.pipelines.distributed import DistContext
from wsseg_fast.pipelines.methods import (
    Instances,
    MethodError,
    MethodInput,
    register_method,
    resolve,
)
from wsseg_fast.pipelines.weak_training import (
    WeakTrainingConfig,
    embed_items,
    load_weak_items,
    run_settings,
)
from wsseg_fast.sam.model import MODEL_CONFIGS, build_sam
from wsseg_fast.sam.prompting import Embedding, MaskPrediction, input_frame_boxes

CHECKPOINT_NAME = "last.pt"
PROMPTER_NAME = "prompter.pt"
LOSS_KEYS = ("loss", "loss_cls", "loss_reg")
CHECKPOINT_FORMAT = "wsseg_fast.prompter/1"


class PrompterError(MethodError):
    """A setting, dataset or checkpoint the prompter cannot use; the message says which
    (a :class:`MethodError`, so ``pseudo-label`` prints it as one line)."""


def _frame(sam, embedding: Embedding | torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    img_size = sam.prompt_encoder.input_image_size[0]
    if isinstance(embedding, Embedding):
        return embedding.tensor, tuple(embedding.original_size), tuple(embedding.input_size)
    return embedding, (img_size, img_size), (img_size, img_size)


def teacher_prompts(sam, boxes, original_size: tuple[int, int], input_size: tuple[int, int]) -> torch.Tensor:
    """``[N, 2, 256]``: SAM's prompt encoder on N boxes ``x0, y0, x1, y1`` in original pixels
    (the 2 corner tokens the prompter learns to predict)."""
    param = next(sam.prompt_encoder.parameters())
    boxes = torch.as_tensor(boxes, dtype=torch.float32, device=param.device)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"teacher_prompts: boxes must be [N, 4] (x0, y0, x1, y1), got shape {tuple(boxes.shape)}")
    with torch.no_grad():
        sparse, _ = sam.prompt_encoder(points=None, boxes=input_frame_boxes(boxes, original_size, input_size),
                                       masks=None)
    return sparse


def decode_prompts(sam, embedding: Embedding | torch.Tensor, tokens: torch.Tensor) -> MaskPrediction:
    """N predicted prompts ``[N, K, 256]`` of one image through SAM's mask decoder in ONE call
    (no prompt encoder: the tokens are already its output). Masks at the original size."""
    emb, original, resized = _frame(sam, embedding)
    if emb.ndim == 3:
        emb = emb[None]
    grid = tuple(sam.prompt_encoder.image_embedding_size)
    if emb.ndim != 4 or emb.shape[0] != 1 or tuple(emb.shape[1:]) != (256, *grid):
        raise ValueError(f"decode_prompts: embedding must be [256, {grid[0]}, {grid[1]}] for this model, "
                         f"got {tuple(emb.shape)}")
    if tokens.ndim != 3 or tokens.shape[2] != 256:
        raise ValueError(f"decode_prompts: tokens must be [N, K, 256], got {tuple(tokens.shape)}")
    param = next(sam.mask_decoder.parameters())
    emb, tokens = emb.to(param), tokens.to(param)
    n = tokens.shape[0]
    dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, *grid)
    low_res, scores = sam.mask_decoder(image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
                                       sparse_prompt_embeddings=tokens, dense_prompt_embeddings=dense,
                                       multimask_output=False)
    logits = sam.postprocess_masks(low_res, input_size=resized, original_size=original)
    return MaskPrediction(logits=logits, scores=scores, low_res_logits=low_res)


def prompter_instances(prompter: QueryPrompter, sam, embedding: Embedding, *, threshold: float = 0.5) -> Instances:
    """Prompt-free instances of one image: keep queries whose most probable class is not
    "no object" and has probability >= ``threshold``; decode all their prompts in ONE
    mask-decoder call. ``scores`` = class probability x SAM's predicted IoU and
    ``pixel_scores`` = sigmoid(logit), so :func:`~wsseg_fast.pipelines.methods.resolve`
    gives each overlapped pixel to the highest class prob x IoU x pixel confidence.
    Classes are 1..C (0 stays background)."""
    h, w = embedding.original_size
    with torch.no_grad():
        emb = embedding.tensor
        out = prompter(emb[None] if emb.ndim == 3 else emb)
        prob = out["pred_logits"][0].float().softmax(-1)
        conf, cls = prob.max(-1)
        keep = (cls < prompter.num_classes) & (conf >= threshold)
        if not bool(keep.any()):
            return Instances(np.zeros((0, h, w), bool), np.zeros(0, np.int64), np.zeros(0, np.float32))
        pred = decode_prompts(sam, embedding, out["pred_prompts"][0][keep])
        logits = pred.logits[:, 0].float()
        return Instances(masks=(logits > 0).cpu().numpy(), classes=(cls[keep] + 1).cpu().numpy(),
                         scores=(conf[keep] * pred.scores[:, 0].float()).cpu().numpy(),
                         pixel_scores=torch.sigmoid(logits).cpu().numpy())


def predict_semantic(prompter: QueryPrompter, sam, embedding: Embedding, *, threshold: float = 0.5) -> np.ndarray:
    """One semantic map ``[H, W]`` uint8 (0 background, c+1 for class c) of one image, prompt-free."""
    h, w = embedding.original_size
    label, _ = resolve(prompter_instances(prompter, sam, embedding, threshold=threshold), h, w)
    return label


_LOADED: dict = {}


@register_method("prompter", needs_sam=True, options={"checkpoint": "", "threshold": 0.5}, needs_boxes=False)
def prompter_method(ctx: MethodInput) -> Instances:
    """WPS-SAM: a trained query prompter (--prompter PROMPTER.pt from train-prompter) prompts SAM, no boxes used."""
    path = ctx.options["checkpoint"]
    if not path:
        raise PrompterError("method prompter needs --prompter PROMPTER.pt (from train-prompter)")
    num_classes = len(ctx.class_names) - 1 if ctx.class_names else None
    key = (path, ctx.engine.model, num_classes)
    if key not in _LOADED:
        _LOADED[key] = load_prompter(path, model=ctx.engine.model, num_classes=num_classes)[0]
    return prompter_instances(_LOADED[key], ctx.engine.sam, ctx.embedding, threshold=ctx.options["threshold"])


def train_step(prompter: QueryPrompter, criterion: PromptSetCriterion, optimizer: torch.optim.Optimizer,
               embeddings: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """One step: forward on a batch of embeddings, ONE batched matcher call inside the
    criterion, backward, optimizer step. ``targets[b]``: ``labels [T_b]`` (0..C-1) and
    ``prompts [T_b, K, D]`` (teacher tokens)."""
    prompter.train()
    losses = criterion(prompter(embeddings), targets)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items() if k != "assignment"}


@dataclass
class PrompterConfig(WeakTrainingConfig):
    """``out`` gets ``last.pt`` (resumable state), ``prompter.pt`` and ``log.jsonl``;
    ``cache`` is shared with pseudo-label / finetune; ``coco`` needs boxes."""

    epochs: int = 50
    batch_size: int = 16
    no_object_weight: float = 0.1
    """CE weight of the "no object" class (DETR's eos_coef): with 1, the ~20 unmatched
    queries of each image outweigh its few objects and no query passes the threshold."""
    normalize_prompts: bool = True
    """Standardise the prompt head's output by the teacher tokens' mean and std (see
    :meth:`QueryPrompter.set_prompt_stats`); the loss stays on SAM's tokens."""
    num_queries: int = 25
    d_model: int = 256
    nhead: int = 8
    dim_feedforward: int = 1024
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dropout: float = 0.1
    stride: int = 2
    """Of the two downsampling convs (see :class:`QueryPrompter`)."""
    prompt_head: str = "tokens"
    """``tokens`` (the paper's) or ``box``: a box per query, encoded as SAM encodes boxes
    (see :class:`QueryPrompter`); its L1 to the weak box joins the loss."""


def _validate(cfg: PrompterConfig) -> None:
    if cfg.model not in MODEL_CONFIGS:
        raise PrompterError(f"model must be one of {', '.join(MODEL_CONFIGS)}, got {cfg.model!r}")
    for name in ("epochs", "batch_size", "num_queries", "stride"):
        if getattr(cfg, name) < 1:
            raise PrompterError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise PrompterError(f"lr must be a positive number, got {cfg.lr}")
    if cfg.prompt_head not in PROMPT_HEADS:
        raise PrompterError(f"prompt_head must be one of {', '.join(PROMPT_HEADS)}, got {cfg.prompt_head!r}")
    if not (0 < cfg.no_object_weight <= 1):
        raise PrompterError(f"no_object_weight must be in (0, 1], got {cfg.no_object_weight}")


def load_prompter(path, *, model: str | None = None, num_classes: int | None = None) -> tuple[QueryPrompter, dict]:
    """A trained prompter and its metadata (``model``, ``class_names``); checks that it was
    trained for SAM variant ``model`` and ``num_classes`` foreground classes when given."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PrompterError(f"prompter checkpoint {path} cannot be read ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "prompter" not in state:
        raise PrompterError(f"{path} is not a prompter checkpoint (from wsseg-fast train-prompter)")
    if model is not None and state["model"] != model:
        raise PrompterError(f"prompter checkpoint {path} was trained on SAM {state['model']!r} embeddings, "
                            f"not {model!r}")
    cfg = state["prompter_config"]
    if num_classes is not None and cfg["num_classes"] != num_classes:
        raise PrompterError(f"prompter checkpoint {path} predicts {cfg['num_classes']} classes, "
                            f"the dataset has {num_classes}")
    prompter = QueryPrompter(**cfg)
    prompter.load_state_dict(state["prompter"])
    return prompter.eval(), {"model": state["model"], "class_names": state["class_names"]}


def train_prompter(cfg: PrompterConfig, progress: bool = True) -> Path:
    """Train the prompter on the weak boxes of ``cfg.coco``; returns the path of ``prompter.pt``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) it runs DDP (gloo on CPUs, NCCL on GPUs): every
    rank takes its share of each epoch's batches (``batch_size`` per rank); only rank 0 writes."""
    _validate(cfg)
    return DistContext.run(lambda ctx: _train(cfg, ctx, progress))


def _train(cfg: PrompterConfig, ctx: DistContext, progress: bool) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    if ctx.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    progress = progress and ctx.rank == 0
    log = lambda message: print(message, flush=True) if progress else None  # noqa: E731
    dataset = CocoWeakDataset(cfg.coco, cfg.images)
    items = load_weak_items(dataset, log)
    if not items:
        raise PrompterError(f"{cfg.coco}: no readable image with a box: the prompter learns from boxes")
    # through the shared cache: rank 0 encodes the missing embeddings, once; the others read them
    if ctx.rank == 0:
        embed_items(cfg, items)
    ctx.barrier()
    if ctx.rank != 0:
        embed_items(cfg, items)
    sam = build_sam(cfg.model, cfg.checkpoint, with_encoder=False).eval()
    embeddings = torch.stack([item.embedding.tensor.float() for item in items])
    targets = [{"labels": item.classes.long() - 1,
                "prompts": teacher_prompts(sam, item.boxes, item.embedding.original_size, item.embedding.input_size)}
               for item in items]
    if cfg.prompt_head == "box":  # fractions of the input frame, at the pixel centres SAM encodes (+0.5)
        img_size = sam.prompt_encoder.input_image_size[0]
        for item, target in zip(items, targets):
            boxes = input_frame_boxes(torch.as_tensor(item.boxes, dtype=torch.float32), item.embedding.original_size,
                                      item.embedding.input_size)
            target["boxes"] = (boxes + 0.5) / img_size
    num_classes = dataset.num_classes - 1
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    prompter = QueryPrompter(num_classes, embed_size=embeddings.shape[-1], d_model=cfg.d_model, nhead=cfg.nhead,
                             dim_feedforward=cfg.dim_feedforward, num_encoder_layers=cfg.num_encoder_layers,
                             num_decoder_layers=cfg.num_decoder_layers, num_queries=cfg.num_queries,
                             dropout=cfg.dropout, stride=cfg.stride, prompt_head=cfg.prompt_head)
    if cfg.prompt_head == "box":
        prompter.set_box_encoder(sam.prompt_encoder)
    elif cfg.normalize_prompts:
        prompter.set_prompt_stats(torch.cat([t["prompts"] for t in targets]))
    prompter = prompter.to(device)
    if cfg.prompt_head == "box":  # boxes are matched and regressed as boxes: the tokens follow from them
        criterion = PromptSetCriterion(num_classes, HungarianMatcher(cost_prompt=0.0), reg_weight=0.0,
                                       no_object_weight=cfg.no_object_weight)
    else:
        criterion = PromptSetCriterion(num_classes, HungarianMatcher(), no_object_weight=cfg.no_object_weight)
    criterion = criterion.to(device)
    optimizer = torch.optim.Adam(prompter.parameters(), lr=cfg.lr)
    start = _resume(cfg, out, prompter, optimizer)
    model = prompter
    if ctx.world > 1:
        model = nn.parallel.DistributedDataParallel(prompter, device_ids=[device.index] if device.type == "cuda" else None)
    for epoch in range(start, cfg.epochs):
        began = time.perf_counter()
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)).tolist()
        # as DistributedSampler: the permutation wrapped to a multiple of the world, one stride per rank
        order = (order * ctx.world)[:math.ceil(len(order) / ctx.world) * ctx.world][ctx.rank::ctx.world]
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        sums = torch.zeros(4, dtype=torch.float64)  # loss, loss_cls, loss_reg sums over images; images
        bar = tqdm(batches, desc=f"train-prompter epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not progress, leave=False)
        for batch in bar:
            losses = train_step(model, criterion, optimizer, embeddings[batch].to(device),
                                [{k: v.to(device) for k, v in targets[i].items()} for i in batch])
            sums += torch.tensor([losses["loss"], losses["loss_cls"], losses["loss_reg"], 1.0],
                                 dtype=torch.float64) * len(batch)
            bar.set_postfix(loss=f"{losses['loss']:.4f}")
        sums = ctx.all_sum(sums)
        record = {"epoch": epoch + 1, **{k: (sums[n] / sums[3]).item() for n, k in enumerate(LOSS_KEYS)},
                  "seconds": round(time.perf_counter() - began, 3)}
        if ctx.rank == 0:
            append_jsonl(out / "log.jsonl", record)
            log(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['loss']:.4f} (cls {record['loss_cls']:.4f}, "
                f"prompt {record['loss_reg']:.4f})")
            atomic_torch_save({"format": CHECKPOINT_FORMAT, "config": run_settings(cfg), "epoch": epoch + 1,
                               "prompter": prompter.state_dict(), "optimizer": optimizer.state_dict(),
                               "rng": torch.get_rng_state()}, out / CHECKPOINT_NAME)
    if ctx.rank == 0:
        final = {"format": CHECKPOINT_FORMAT, "model": cfg.model, "class_names": list(dataset.class_names),
                 "prompter_config": prompter.config(), "prompter": prompter.state_dict()}
        atomic_torch_save(final, out / PROMPTER_NAME)
    return out / PROMPTER_NAME


def _resume(cfg: PrompterConfig, out: Path, prompter: QueryPrompter, optimizer) -> int:
    """The epoch to start from: 0, or where ``out/last.pt`` stopped (same settings only)."""
    path = out / CHECKPOINT_NAME
    if not path.exists():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PrompterError(f"{path} cannot be read ({exc}); delete it to start over") from None
    if state.get("format") != CHECKPOINT_FORMAT or state.get("config") != run_settings(cfg):
        raise PrompterError(f"{out} holds a prompter run with other settings; use another --out or delete {path}")
    prompter.load_state_dict(state["prompter"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return int(state["epoch"])
