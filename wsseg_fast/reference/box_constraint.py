"""Pure-PyTorch reference of the fused box constraint, composed from the operators of
:mod:`wsseg_fast.fuzzy` (plain autograd). It defines what the fused kernels compute;
see ``wsseg_fast.ops.box_constraint`` for the exact semantics. ``box_pixel_bounds``
and ``check_box_values`` are shared with the op and the knowledge bases."""

from __future__ import annotations

import torch

from wsseg_fast.fuzzy import negation, pmean, pmean_error


def box_pixel_bounds(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[..., 4]`` (x0, y0, x1, y1) -> int64 (x_lo, y_lo, x_hi, y_hi) with pixel (y, x)
    inside when x_lo <= x < x_hi and y_lo <= y < y_hi, clipped to the image."""
    lo = boxes[..., :2].floor()
    hi = boxes[..., 2:].ceil()
    limit = torch.tensor([width, height], dtype=boxes.dtype, device=boxes.device)
    lo = torch.minimum(lo.clamp_min(0), limit)
    hi = torch.minimum(hi.clamp_min(0), limit)
    return torch.cat([lo, hi], dim=-1).long()


def check_box_values(boxes: torch.Tensor, labels: torch.Tensor, num_classes: int, name: str) -> None:
    """ValueError for a label outside [-1, C), a NaN box or an inverted one (x1 < x0 or y1 < y0);
    padding rows (label -1) are not checked. Skipped while ``torch.compile`` traces (the checks
    branch on data)."""
    if torch.compiler.is_compiling():
        return
    valid = labels >= 0
    if bool((labels < -1).any()) or bool((labels >= num_classes).any()):
        raise ValueError(f"{name}: `labels` must be class ids in [0, {num_classes}) or -1 for padding")
    if bool(torch.isnan(boxes[valid]).any()):
        raise ValueError(f"{name}: `boxes` contain NaN")
    inverted = valid & ((boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1]))
    if bool(inverted.any()):
        b, k = inverted.nonzero()[0].tolist()
        raise ValueError(
            f"{name}: `boxes` must have x1 >= x0 and y1 >= y0 (label -1 marks padding); "
            f"box [{b}, {k}] is {boxes[b, k].tolist()}"
        )


def box_constraint_truths(
    probs: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    *,
    p_forall: float = 2.0,
    p_exists: float = 2.0,
    stable: bool = True,
) -> torch.Tensor:
    """The OUT(b, c) and TIGHT(b, k) truths of the box constraint, one vector (OUT first per image)."""
    batch, _, height, width = probs.shape
    check_box_values(boxes, labels, probs.shape[1], "box_constraint_loss")
    bounds = box_pixel_bounds(boxes, height, width)
    truths = []
    for b in range(batch):
        valid = [k for k in range(boxes.shape[1]) if labels[b, k] >= 0]
        valid = [k for k in valid if bounds[b, k, 2] > bounds[b, k, 0] and bounds[b, k, 3] > bounds[b, k, 1]]
        for c in sorted({int(labels[b, k]) for k in valid}):
            inside = torch.zeros(height, width, dtype=torch.bool, device=probs.device)
            for k in valid:
                if labels[b, k] == c:
                    x0, y0, x1, y1 = bounds[b, k].tolist()
                    inside[y0:y1, x0:x1] = True
            truths.append(pmean_error(negation(probs[b, c]), p=p_forall, mask=~inside, stable=stable))
        for k in valid:
            x0, y0, x1, y1 = bounds[b, k].tolist()
            region = probs[b, int(labels[b, k]), y0:y1, x0:x1]
            lines = torch.cat(
                [
                    pmean(region, dim=1, p=p_exists, stable=stable),  # rows
                    pmean(region, dim=0, p=p_exists, stable=stable),
                ]
            )  # columns
            truths.append(pmean_error(lines, p=p_forall, stable=stable))
    if not truths:
        return probs.new_zeros(0)
    return torch.stack(truths)


def box_constraint_loss(
    probs: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    *,
    p_forall: float = 2.0,
    p_exists: float = 2.0,
    stable: bool = True,
) -> torch.Tensor:
    """1 - pMeanError(p=2) over every OUT and TIGHT truth of the batch; 0 without a valid box."""
    truths = box_constraint_truths(probs, boxes, labels, p_forall=p_forall, p_exists=p_exists, stable=stable)
    if truths.numel() == 0:
        return (probs * 0).sum()  # zero, with a zero gradient
    return 1.0 - pmean_error(truths, p=2.0, stable=stable)


__all__ = ["box_constraint_loss", "box_constraint_truths", "box_pixel_bounds"]
