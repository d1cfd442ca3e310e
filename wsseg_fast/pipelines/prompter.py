"""WPS-SAM prompter: teacher prompts from weak boxes, one training step on cached
embeddings, and prompt-free inference (one mask-decoder call per image, overlaps
resolved into one semantic map).

Not yet here (see docs/prompter.md): the ``train-prompter`` command, the
``prompter`` pseudo-label method and the experiment rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wsseg_fast.matching import PromptSetCriterion
from wsseg_fast.models.prompter import QueryPrompter
from wsseg_fast.sam.prompting import Embedding, MaskPrediction


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
    scale = torch.tensor([input_size[1] / original_size[1], input_size[0] / original_size[0]], device=param.device)
    with torch.no_grad():
        sparse, _ = sam.prompt_encoder(points=None, boxes=(boxes.view(-1, 2, 2) * scale).view(-1, 4), masks=None)
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


def resolve_overlaps(logits: torch.Tensor, labels: torch.Tensor, class_prob: torch.Tensor, iou: torch.Tensor,
                     *, background: int = 0) -> torch.Tensor:
    """One semantic map ``[H, W]`` from N masks ``logits [N, H, W]`` with class ``labels [N]``.

    A pixel goes to the mask, among those covering it (logit > 0), with the highest
    ``class_prob * iou * sigmoid(logit)`` (class probability x SAM's predicted IoU x pixel
    confidence); pixels no mask covers get ``background``.
    """
    if logits.ndim != 3:
        raise ValueError(f"resolve_overlaps: logits must be [N, H, W], got {tuple(logits.shape)}")
    n = logits.shape[0]
    for name, t in (("labels", labels), ("class_prob", class_prob), ("iou", iou)):
        if t.shape != (n,):
            raise ValueError(f"resolve_overlaps: {name} must be [{n}] (one per mask), got {tuple(t.shape)}")
    out = torch.full(logits.shape[1:], background, dtype=torch.long, device=logits.device)
    if n == 0:
        return out
    score = (class_prob * iou).float()[:, None, None] * torch.sigmoid(logits.float())
    score = torch.where(logits > 0, score, -1.0)
    best, index = score.max(dim=0)
    return torch.where(best >= 0, labels.long().to(logits.device)[index], out)


@torch.no_grad()
def predict_semantic(prompter: QueryPrompter, sam, embedding: Embedding, *, threshold: float = 0.5,
                     background: int = 0, label_values: Sequence[int] | None = None) -> torch.Tensor:
    """Prompt-free inference for one image: keep queries whose most probable class is not
    "no object" and whose probability is >= ``threshold``; decode their prompts in one
    mask-decoder call; resolve overlaps. ``label_values[c]`` is the map value of class c
    (default c + 1, so 0 stays background)."""
    emb = embedding.tensor
    out = prompter(emb[None] if emb.ndim == 3 else emb)
    prob = out["pred_logits"][0].softmax(-1)
    conf, cls = prob.max(-1)
    keep = (cls < prompter.num_classes) & (conf >= threshold)
    h, w = embedding.original_size
    if not bool(keep.any()):
        return torch.full((h, w), background, dtype=torch.long)
    pred = decode_prompts(sam, embedding, out["pred_prompts"][0][keep])
    values = torch.as_tensor(label_values if label_values is not None else range(1, prompter.num_classes + 1))
    return resolve_overlaps(pred.logits[:, 0], values[cls[keep]], conf[keep], pred.scores[:, 0],
                            background=background)


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
