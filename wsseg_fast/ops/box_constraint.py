"""The fused box constraint of weakly-supervised segmentation (fuzzy logic, LTN semantics).

For image b, class c with a box, and box k of class c (``DESIGN.md`` §4):

- OUT(b, c) = ∀ pixels outside the union of b's boxes of class c: ¬probs[b, c]
- TIGHT(b, k) = ∀ rows and columns ℓ of box k: ∃ pixels of ℓ inside the box: probs[b, c]

Loss = 1 - pMeanError(p=2) over every OUT and TIGHT truth of the batch.

Each backend computes the quantifiers' pixel sums in one fused pass (the
``box_constraint_stats`` op: per box row/column sums and per class outside
sums, O(N (H + W)) numbers) and, in the backward, the gradient of every pixel
in one pass (``box_constraint_grad``). The epilogue from those sums to the
loss is a few PyTorch operations on small tensors, shared by the backends.
"""

from __future__ import annotations

import torch

from wsseg_fast import reference
from wsseg_fast.fuzzy import check_truth_values, pmean_error
from wsseg_fast.ops._backend import TRITON_RUNNABLE, OpSpec, choose
from wsseg_fast.reference.box_constraint import box_pixel_bounds, check_box_values

if TRITON_RUNNABLE:
    from wsseg_fast.kernels import box_constraint as _triton
else:  # pragma: no cover - Triton cannot run here (see TRITON_RUNNABLE)
    _triton = None

SPEC = OpSpec("box_constraint_stats", backends=("torch", "cpu", "triton"), auto={"cpu": ("cpu",), "cuda": ("triton",)})


def _stats_fake(probs, boxes, labels, p_forall, p_exists, stable):
    batch, _, height, width = probs.shape
    n = boxes.shape[1]
    return probs.new_empty(batch, n, height + width), probs.new_empty(batch, n), probs.new_empty(batch, n)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.params = inputs[3:]


def _stats_backward(grad_op):
    def backward(ctx, grad_lines, grad_outside, _grad_count):
        probs, boxes, labels = ctx.saved_tensors
        if grad_lines is None:
            grad_lines = probs.new_zeros(boxes.shape[0], boxes.shape[1], probs.shape[2] + probs.shape[3])
        if grad_outside is None:
            grad_outside = probs.new_zeros(boxes.shape[:2])
        return grad_op(grad_lines, grad_outside, probs, boxes, labels, *ctx.params), None, None, None, None, None

    return backward


if SPEC.compiled["cpu"]:
    torch.library.register_fake("wsseg_fast::box_constraint_stats")(_stats_fake)

    @torch.library.register_fake("wsseg_fast::box_constraint_grad")
    def _(grad_lines, grad_outside, probs, boxes, labels, p_forall, p_exists, stable):
        return torch.empty_like(probs)

    torch.library.register_autograd(
        "wsseg_fast::box_constraint_stats",
        _stats_backward(torch.ops.wsseg_fast.box_constraint_grad),
        setup_context=_setup_context,
    )


def box_geometry(boxes: torch.Tensor, labels: torch.Tensor, height: int, width: int):
    """(pixel bounds [B, N, 4] int64, valid [B, N], representative [B, N]): a box is valid when it
    is not padding and covers a pixel; the representative is the first valid box of its class."""
    bounds = box_pixel_bounds(torch.nan_to_num(boxes), height, width)
    valid = (labels >= 0) & (bounds[..., 2] > bounds[..., 0]) & (bounds[..., 3] > bounds[..., 1])
    n = labels.shape[1]
    same = (labels.unsqueeze(2) == labels.unsqueeze(1)) & valid.unsqueeze(1)
    earlier = torch.ones(n, n, dtype=torch.bool, device=labels.device).tril(-1)  # [k, j]: j < k
    representative = valid & ~(same & earlier).any(dim=2)
    return bounds, valid, representative


def loss_from_stats(
    lines, outside, count, bounds, valid, representative, height: int, p_forall: float, p_exists: float, stable: bool
) -> torch.Tensor:
    """The loss from the fused sums: pMean of each box line, pMeanError over each box's lines
    (TIGHT), the outside truths (OUT), and 1 - pMeanError(p=2) over all of them."""
    x0, y0, x1, y1 = bounds.unbind(-1)
    line = torch.arange(lines.shape[-1], device=lines.device)
    is_row = line < height
    col = line - height
    inside = (
        torch.where(
            is_row, (line >= y0[..., None]) & (line < y1[..., None]), (col >= x0[..., None]) & (col < x1[..., None])
        )
        & valid[..., None]
    )
    length = torch.where(is_row, (x1 - x0)[..., None], (y1 - y0)[..., None]).clamp_min(1).to(lines.dtype)
    mean = torch.where(inside, lines / length, torch.ones_like(lines))  # 1 off the box: no 0 ** (1 / p)
    exists = mean ** (1.0 / p_exists)
    tight = pmean_error(exists, dim=2, p=p_forall, mask=inside, stable=stable)
    empty = count == 0
    ratio = torch.where(empty, torch.ones_like(outside), outside / torch.where(empty, torch.ones_like(count), count))
    out = torch.where(empty, torch.ones_like(outside), 1.0 - ratio ** (1.0 / p_forall))
    truths = torch.cat([out, tight], dim=1)
    mask = torch.cat([representative, valid], dim=1)
    return 1.0 - pmean_error(truths, p=2.0, mask=mask, stable=stable)


def _check(probs, boxes, labels, p_forall, p_exists):
    name = "box_constraint_loss"
    if not isinstance(probs, torch.Tensor) or not probs.is_floating_point() or probs.dim() != 4:
        raise ValueError(
            f"{name}: `probs` must be a floating-point tensor [B, C, H, W] of truth values, "
            f"got {getattr(probs, 'shape', type(probs).__name__)}"
        )
    batch = probs.shape[0]
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 3 or boxes.shape[0] != batch or boxes.shape[2] != 4:
        raise ValueError(
            f"{name}: `boxes` must be a tensor [B={batch}, N, 4] of (x0, y0, x1, y1), "
            f"got {getattr(boxes, 'shape', type(boxes).__name__)}"
        )
    if not boxes.is_floating_point() and boxes.dtype not in (torch.int32, torch.int64, torch.int16, torch.uint8):
        raise TypeError(f"{name}: `boxes` must be a real tensor, got {boxes.dtype}")
    if not isinstance(labels, torch.Tensor) or labels.shape != boxes.shape[:2]:
        raise ValueError(
            f"{name}: `labels` must be a tensor [B, N] = {tuple(boxes.shape[:2])}, "
            f"got {getattr(labels, 'shape', type(labels).__name__)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name}: `labels` must be an integer tensor, got {labels.dtype}")
    for arg, value in (("p_forall", p_forall), ("p_exists", p_exists)):
        if not value > 0:
            raise ValueError(f"{name}: `{arg}` must be > 0, got {value}")


def box_constraint_loss(
    probs: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    *,
    p_forall: float = 2.0,
    p_exists: float = 2.0,
    stable: bool = True,
    check: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Fuzzy box constraint loss (a scalar tensor, differentiable in ``probs``).

    Args:
        probs: ``[B, C, H, W]`` truth values in [0, 1] (e.g. sigmoid or softmax outputs).
        boxes: ``[B, N, 4]`` (x0, y0, x1, y1) in pixels, x1 >= x0 and y1 >= y0; pixel (y, x) is
            inside when floor(x0) <= x < ceil(x1) and floor(y0) <= y < ceil(y1), clipped to the
            image. Boxes that cover no pixel (zero width or height at integer coordinates, or
            outside the image) are ignored.
        labels: ``[B, N]`` class ids, ``-1`` for padding.
        p_forall, p_exists: exponents of the ∀ (pMeanError) and ∃ (pMean) quantifiers.
        stable: LTN's projections pi_0 / pi_1 (eps = 1e-4) on every quantifier operand.
        check: check the values of ``probs`` in one reduction over them
            (:func:`~wsseg_fast.fuzzy.check_truth_values`): a value more than 1e-3 outside
            [0, 1] raises ``ValueError`` naming ``probs``, and a NaN anywhere in ``probs`` makes
            the loss NaN. The raise is skipped under ``torch.compile`` (the NaN still
            propagates). ``False`` skips the pass (a knowledge base checks ``probs`` once for all
            its formulas); a NaN the loss reads still gives NaN.
        backend: ``auto | triton | cpu | torch``.

    Returns 0 (with a zero gradient) for an empty batch or when no box is valid; NaN (on every
    backend) when ``probs`` holds a NaN.
    Raises ``ValueError`` for NaN or inverted (x1 < x0 or y1 < y0) boxes other than padding,
    labels outside [-1, C), ``probs`` outside [0, 1] or wrong shapes.
    """
    _check(probs, boxes, labels, p_forall, p_exists)
    guard = check_truth_values(probs, "box_constraint_loss") if check else None
    loss = _fused_loss(probs, boxes, labels, p_forall, p_exists, stable, backend)
    return loss if guard is None else loss + guard


def _fused_loss(probs, boxes, labels, p_forall, p_exists, stable, backend) -> torch.Tensor:
    which = choose(SPEC, backend, probs.device)
    if probs.dtype not in (torch.float32, torch.float64) and which != "triton":
        probs = probs.float()
    labels = labels.long()
    if which == "torch":
        return reference.box_constraint_loss(
            probs, boxes.double(), labels, p_forall=p_forall, p_exists=p_exists, stable=stable
        )
    p_forall, p_exists = float(p_forall), float(p_exists)
    height, width = probs.shape[2:]
    if which == "cpu":
        boxes = boxes.double()
        lines, outside, count = torch.ops.wsseg_fast.box_constraint_stats(
            probs, boxes, labels, p_forall, p_exists, stable
        )
        bounds, valid, representative = box_geometry(boxes, labels, height, width)
    else:
        check_box_values(boxes, labels, probs.shape[1], "box_constraint_loss")
        bounds, valid, representative = box_geometry(boxes, labels, height, width)
        lines, outside, count = _triton.box_constraint_stats_triton(
            probs, bounds.int(), labels.int(), valid.int(), representative.int(), p_forall, p_exists, stable
        )
    return loss_from_stats(lines, outside, count, bounds, valid, representative, height, p_forall, p_exists, stable)
