"""Prompting many objects of one image in one decoder call, for every SAM family, and the zoom
windows in which small objects are shown to SAM."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from wsseg_fast.cache import Embedding


def input_frame_boxes(boxes: torch.Tensor, original_size: tuple[int, int], input_size: tuple[int, int]) -> torch.Tensor:
    """``[N, 4]`` boxes in original pixels -> the same boxes in SAM's input frame (resized image)."""
    scale = torch.tensor([input_size[1] / original_size[1], input_size[0] / original_size[0]], device=boxes.device)
    return (boxes.view(-1, 2, 2) * scale).view(-1, 4)


# Small objects are shown to SAM zoomed (pretrain-sam --zoom, sam-box zoom=true): a square
# window ZOOM_CONTEXT times the box's longer side, at least the image's longer side / MAX_ZOOM,
# used for a box when it enlarges the image at least MIN_ZOOM times.
ZOOM_CONTEXT = 2.0
MAX_ZOOM = 8.0
MIN_ZOOM = 1.5


def zoom_window(box, height: int, width: int) -> tuple[int, int, int, int]:
    """The window ``(x0, y0, x1, y1)`` (whole pixels, inside the image, holding the box) in which
    a box ``x0, y0, x1, y1`` is shown zoomed: a square centred on the box, shifted inside the
    image, clipped where the image is narrower."""
    bx0, by0, bx1, by1 = (float(v) for v in box)
    side = int(np.ceil(max(ZOOM_CONTEXT * max(bx1 - bx0, by1 - by0), max(height, width) / MAX_ZOOM)))

    def place(lo: float, hi: float, size: int) -> tuple[int, int]:
        span = min(side, size)
        start = min(max(int(round((lo + hi - span) / 2)), 0), size - span)
        return min(start, int(np.floor(lo))), max(start + span, int(np.ceil(hi)))

    (x0, x1), (y0, y1) = place(bx0, bx1, width), place(by0, by1, height)
    return max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)


def zoom_factor(window: tuple[int, int, int, int], height: int, width: int) -> float:
    """How much larger the window shows things than the whole image does."""
    x0, y0, x1, y1 = window
    return max(height, width) / max(x1 - x0, y1 - y0, 1)


def zoom_windows(boxes, height: int, width: int, least: float = MIN_ZOOM) -> dict[int, tuple[int, int, int, int]]:
    """The boxes their :func:`zoom_window` enlarges at least ``least`` times: index -> window."""
    windows = {i: zoom_window(box, height, width) for i, box in enumerate(boxes)}
    return {i: window for i, window in windows.items() if zoom_factor(window, height, width) >= least}


@dataclass
class MaskPrediction:
    """``logits`` ``[N, M, H, W]`` at the output size, ``scores`` ``[N, M]`` (predicted IoU),
    ``low_res_logits`` ``[N, M, 4g, 4g]`` (SAM's mask-input format); ``masks`` = logits > 0."""

    logits: torch.Tensor
    scores: torch.Tensor
    low_res_logits: torch.Tensor

    @property
    def masks(self) -> torch.Tensor:
        return self.logits > 0


def _as_float(name: str, value, shape_tail: tuple, device, expected: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    if t.ndim != len(shape_tail) + 1 or any(s is not None and t.shape[i + 1] != s for i, s in enumerate(shape_tail)):
        raise ValueError(f"predict_masks: {name} must be {expected}, got shape {tuple(t.shape)}")
    return t


def _prompts(model, boxes, points, point_labels, mask_inputs, original: tuple[int, int], resized: tuple[int, int]):
    """The prompts of :func:`predict_masks` checked, on the decoder's device, in the model's input frame:
    ``boxes [N, 4]``, ``points [N, K, 2]``, ``labels [N, K]`` and ``mask_inputs [N, 1, 4g, 4g]``
    (``None`` where not given)."""
    param = next(model.mask_decoder.parameters())
    device = param.device
    n = labels = None
    if boxes is not None:
        boxes = input_frame_boxes(_as_float("boxes", boxes, (4,), device, "[N, 4] (x0, y0, x1, y1)"), original, resized)
        n = boxes.shape[0]
    if points is not None or point_labels is not None:
        if points is None or point_labels is None:
            raise ValueError("predict_masks: points and point_labels go together")
        scale = torch.tensor([resized[1] / original[1], resized[0] / original[0]], device=device)
        points = _as_float("points", points, (None, 2), device, "[N, K, 2] (x, y)") * scale
        labels = torch.as_tensor(point_labels, device=device)
        if labels.shape != points.shape[:2]:
            raise ValueError(
                f"predict_masks: point_labels must be [N, K] = {tuple(points.shape[:2])}, got {tuple(labels.shape)}"
            )
        if n is not None and points.shape[0] != n:
            raise ValueError(f"predict_masks: {points.shape[0]} point sets for {n} boxes")
        labels, n = labels.to(torch.int64), points.shape[0]
    if mask_inputs is not None:
        low = (4 * model.grid, 4 * model.grid)
        mask_inputs = torch.as_tensor(mask_inputs, device=device, dtype=param.dtype)
        if (
            mask_inputs.ndim != 4
            or tuple(mask_inputs.shape[1:]) != (1, *low)
            or (n is not None and mask_inputs.shape[0] != n)
        ):
            raise ValueError(
                f"predict_masks: mask_inputs must be [N, 1, {low[0]}, {low[1]}], got {tuple(mask_inputs.shape)}"
            )
        n = mask_inputs.shape[0]
    if n is None:
        raise ValueError("predict_masks: give boxes, points (with point_labels) or mask_inputs")
    return boxes, points, labels, mask_inputs


def frame(model, embedding) -> tuple[list[torch.Tensor], tuple[int, int], tuple[int, int]]:
    """An image's feature levels, its original size and its size in the model's input frame, from an
    :class:`Embedding`, or from raw levels (a tensor of the image embedding, or a list of levels) in the
    input frame itself."""
    if isinstance(embedding, Embedding):
        return embedding.levels, tuple(embedding.original_size), tuple(embedding.input_size)
    levels = list(embedding) if isinstance(embedding, (list, tuple)) else [embedding]
    side = (model.img_size, model.img_size)
    return levels, side, side


def predict_masks(
    model,
    embedding: Embedding | torch.Tensor | list[torch.Tensor],
    boxes=None,
    points=None,
    point_labels=None,
    mask_inputs=None,
    multimask_output: bool = False,
    output_size: tuple[int, int] | None = None,
) -> MaskPrediction:
    """N prompts of one image through the prompt encoder and mask decoder in ONE call.

    Args:
        model: a :class:`~wsseg_fast.sam.registry.SamModel` of either family (``build_model``, with or
            without its encoder).
        embedding: an :class:`Embedding` (prompts are then in original image pixels and masks come back
            at the original size), or the image's raw feature levels (the image embedding ``[256, g, g]``
            or a list of levels) in the model's ``S x S`` input frame (prompts and masks in that frame).
        boxes: ``[N, 4]`` ``x0, y0, x1, y1``.
        points: ``[N, K, 2]`` ``x, y``; ``point_labels``: ``[N, K]`` (1 foreground, 0 background).
        mask_inputs: ``[N, 1, 4g, 4g]`` low-resolution logits (e.g. a previous ``low_res_logits``).
        multimask_output: 3 candidate masks per prompt instead of 1.
        output_size: ``(H, W)`` of ``logits`` (default: the original size); e.g. a loss at
            a lower resolution, without upsampling to full size first.

    Gradients flow to the model's parameters (no ``no_grad`` here): callers that only infer wrap the
    call in ``torch.inference_mode()``.
    """
    levels, original, resized = frame(model, embedding)
    boxes, points, labels, mask_inputs = _prompts(model, boxes, points, point_labels, mask_inputs, original, resized)
    sparse, dense = model.prompt(boxes=boxes, points=points, labels=labels, masks=mask_inputs)
    low_res, scores = model.decode(levels, sparse, dense, multimask_output)
    out_size = original if output_size is None else tuple(int(v) for v in output_size)
    return MaskPrediction(logits=model.upsample(low_res, resized, out_size), scores=scores, low_res_logits=low_res)


def encode_boxes(model, boxes, original_size: tuple[int, int], input_size: tuple[int, int]) -> torch.Tensor:
    """``[N, 2, 256]``: the prompt encoder on N boxes ``x0, y0, x1, y1`` in original pixels (their two
    corner tokens: what the WPS-SAM prompter learns to predict)."""
    param = next(model.prompt_encoder.parameters())
    boxes = torch.as_tensor(boxes, dtype=torch.float32, device=param.device)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"encode_boxes: boxes must be [N, 4] (x0, y0, x1, y1), got shape {tuple(boxes.shape)}")
    return model.encode_boxes(input_frame_boxes(boxes, original_size, input_size))


def decode_tokens(
    model, embedding: Embedding | torch.Tensor | list[torch.Tensor], tokens: torch.Tensor
) -> MaskPrediction:
    """N predicted prompts ``[N, K, 256]`` of one image through the mask decoder in ONE call (no prompt
    encoder: the tokens are already its output). Masks at the original size."""
    if tokens.ndim != 3 or tokens.shape[2] != 256:
        raise ValueError(f"decode_tokens: tokens must be [N, K, 256], got {tuple(tokens.shape)}")
    levels, original, resized = frame(model, embedding)
    low_res, scores = model.decode_tokens(levels, tokens)
    return MaskPrediction(logits=model.upsample(low_res, resized, original), scores=scores, low_res_logits=low_res)
