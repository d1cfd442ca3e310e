"""WPS-SAM, prompt-free: a trained query prompter gives SAM's prompt tokens, no boxes used
(``--method prompter --prompter PROMPTER.pt``); one mask-decoder call per image, overlaps
resolved into one semantic map."""

from __future__ import annotations

import numpy as np
import torch

from wsseg_fast.models.prompter import QueryPrompter
from wsseg_fast.pipelines.methods.base import Instances, MethodError, MethodInput, register_method, resolve
from wsseg_fast.pipelines.prompter import load_prompter
from wsseg_fast.sam.prompting import Embedding, decode_tokens


def prompter_instances(prompter: QueryPrompter, model, embedding: Embedding, *, threshold: float = 0.5) -> Instances:
    """Prompt-free instances of one image: keep queries whose most probable class is not
    "no object" and has probability >= ``threshold``; decode all their prompts in ONE
    mask-decoder call of ``model`` (a :class:`~wsseg_fast.sam.registry.SamModel`). ``scores`` = class
    probability x SAM's predicted IoU and
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
        pred = decode_tokens(model, embedding, out["pred_prompts"][0][keep])
        logits = pred.logits[:, 0].float()
        return Instances(
            masks=(logits > 0).cpu().numpy(),
            classes=(cls[keep] + 1).cpu().numpy(),
            scores=(conf[keep] * pred.scores[:, 0].float()).cpu().numpy(),
            pixel_scores=torch.sigmoid(logits).cpu().numpy(),
        )


def predict_semantic(prompter: QueryPrompter, model, embedding: Embedding, *, threshold: float = 0.5) -> np.ndarray:
    """One semantic map ``[H, W]`` uint8 (0 background, c+1 for class c) of one image, prompt-free."""
    h, w = embedding.original_size
    label, _ = resolve(prompter_instances(prompter, model, embedding, threshold=threshold), h, w)
    return label


_LOADED: dict = {}


@register_method(
    "prompter", needs_sam=True, options={"checkpoint": "", "threshold": 0.5}, needs_boxes=False, files=("checkpoint",)
)
def prompter_method(ctx: MethodInput) -> Instances:
    """WPS-SAM: a trained query prompter (--prompter PROMPTER.pt from train-prompter) prompts SAM, no boxes used."""
    path = ctx.options["checkpoint"]
    if not path:
        raise MethodError("method prompter needs --prompter PROMPTER.pt (from train-prompter)")
    num_classes = len(ctx.class_names) - 1 if ctx.class_names else None
    key = (path, ctx.engine.name, num_classes)
    if key not in _LOADED:
        _LOADED[key] = load_prompter(path, model=ctx.engine.name, num_classes=num_classes)[0]
    return prompter_instances(_LOADED[key], ctx.engine.model, ctx.embedding, threshold=ctx.options["threshold"])
