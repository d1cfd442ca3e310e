"""The fused pairwise colour prior (BoxInst's pairwise term, in fuzzy logic).

For image b and class c: PAIR(b, c) = ∀ edges (x, y) between a pixel and a
neighbour at one of the offsets of :func:`wsseg_fast.ops.neighbors.dilated_offsets`
(3x3, dilation 2) whose colour similarity exp(-||Lab_x - Lab_y|| / 2) is at
least ``threshold``: p_x p_y + (1 - p_x)(1 - p_y) (pMeanError, ``p_forall``;
1 when the image has no such edge). Loss = 1 - pMeanError(p=2) over the B x C
truths. Colours are converted by :func:`wsseg_fast.ops.color.rgb_to_lab`.

Like the box constraint, each backend fuses the per-edge work into a "stats"
op (sums [B, C], edge counts [B]) and a "grad" op (each pixel's gradient in one
pass); the epilogue is a few PyTorch operations on [B, C] numbers.
"""

from __future__ import annotations

import torch

from wsseg_fast import reference
from wsseg_fast.fuzzy import check_truth_values, pmean_error
from wsseg_fast.ops._backend import TRITON_RUNNABLE, OpSpec, choose
from wsseg_fast.ops.color import rgb_to_lab
from wsseg_fast.ops.neighbors import dilated_offsets

if TRITON_RUNNABLE:
    from wsseg_fast.kernels import pairwise_constraint as _triton
else:  # pragma: no cover - Triton cannot run here (see TRITON_RUNNABLE)
    _triton = None

SPEC = OpSpec(
    "pairwise_constraint_stats", backends=("torch", "cpu", "triton"), auto={"cpu": ("cpu",), "cuda": ("triton",)}
)

if SPEC.compiled["cpu"]:

    @torch.library.register_fake("wsseg_fast::pairwise_constraint_stats")
    def _(probs, lab, offsets, threshold, p_forall, stable):
        return probs.new_empty(probs.shape[:2]), probs.new_empty(probs.shape[:1])

    @torch.library.register_fake("wsseg_fast::pairwise_constraint_grad")
    def _(grad_sums, probs, lab, offsets, threshold, p_forall, stable):
        return torch.empty_like(probs)

    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:3])
        ctx.params = inputs[3:]

    def _backward(ctx, grad_sums, _grad_counts):
        probs, lab, offsets = ctx.saved_tensors
        grad = torch.ops.wsseg_fast.pairwise_constraint_grad(grad_sums, probs, lab, offsets, *ctx.params)
        return grad, None, None, None, None, None

    torch.library.register_autograd("wsseg_fast::pairwise_constraint_stats", _backward, setup_context=_setup_context)


def loss_from_stats(sums: torch.Tensor, counts: torch.Tensor, p_forall: float, stable: bool) -> torch.Tensor:
    """PAIR(b, c) = 1 - (sums / count)^(1 / p) (1 without edges), then 1 - pMeanError(p=2)."""
    empty = (counts == 0).unsqueeze(1).expand_as(sums)
    safe = torch.where(empty, torch.ones_like(sums), sums / torch.where(counts == 0, 1, counts).unsqueeze(1))
    truths = torch.where(empty, torch.ones_like(sums), 1.0 - safe ** (1.0 / p_forall))
    if truths.numel() == 0:
        return (sums * 0).sum()
    return 1.0 - pmean_error(truths.flatten(), p=2.0, stable=stable)


def pairwise_constraint_loss(
    probs: torch.Tensor,
    images: torch.Tensor | None = None,
    *,
    lab: torch.Tensor | None = None,
    kernel_size: int = 3,
    dilation: int = 2,
    threshold: float = 0.3,
    p_forall: float = 2.0,
    stable: bool = True,
    check: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Fuzzy pairwise colour prior loss (a scalar tensor, differentiable in ``probs``).

    Args:
        probs: ``[B, C, H, W]`` truth values in [0, 1].
        images: ``[B, 3, H, W]`` RGB, uint8 (0..255) or float in [0, 1] (NaN raises).
        lab: instead of ``images``, their CIELAB ``rgb_to_lab(images)`` (float32), e.g.
            computed once per image, or outside a ``torch.compile``d step (the range
            check of ``images`` reads data, which ``fullgraph=True`` forbids).
        kernel_size, dilation: the neighbourhood (BoxInst: 3, 2 -> 8 neighbours).
        threshold: colour similarity τ above which neighbours should agree.
        p_forall: exponent of the ∀ over edges; ``stable``: LTN's projections.
        check: check the values of ``probs`` (one reduction over them, as
            :func:`box_constraint_loss` does: beyond 1e-3 outside [0, 1] raises ``ValueError``
            naming ``probs``, a NaN anywhere makes the loss NaN) and that ``lab`` holds no NaN
            (a NaN colour has no similarity: ``ValueError`` naming ``lab``). The raises are
            skipped under ``torch.compile``; ``False`` skips both passes (a knowledge base checks
            ``probs`` once, and its ``lab`` comes from checked images).
        backend: ``auto | triton | cpu | torch``.

    Returns NaN (on every backend) when ``probs`` holds a NaN.
    """
    name = "pairwise_constraint_loss"
    if not isinstance(probs, torch.Tensor) or not probs.is_floating_point() or probs.dim() != 4:
        raise ValueError(
            f"{name}: `probs` must be a floating-point tensor [B, C, H, W], "
            f"got {getattr(probs, 'shape', type(probs).__name__)}"
        )
    if (images is None) == (lab is None):
        raise ValueError(f"{name}: pass exactly one of `images` and `lab`")
    colour = images if lab is None else lab
    label = "images" if lab is None else "lab"
    if (
        not isinstance(colour, torch.Tensor)
        or colour.dim() != 4
        or colour.shape[0] != probs.shape[0]
        or colour.shape[1] != 3
        or colour.shape[2:] != probs.shape[2:]
    ):
        raise ValueError(
            f"{name}: `{label}` must have shape [B, 3, H, W] = {(probs.shape[0], 3, *probs.shape[2:])}, "
            f"got {getattr(colour, 'shape', type(colour).__name__)}"
        )
    if not 0 < threshold <= 1:
        raise ValueError(f"{name}: `threshold` must be in (0, 1], got {threshold}")
    if not p_forall > 0:
        raise ValueError(f"{name}: `p_forall` must be > 0, got {p_forall}")
    offsets = dilated_offsets(kernel_size, dilation).reshape(-1, 2).to(probs.device)  # [0, 2] for a 1x1 window
    if check and lab is not None and not torch.compiler.is_compiling() and bool(torch.isnan(lab).any()):
        raise ValueError(f"{name}: `lab` contains NaN")
    lab = rgb_to_lab(images) if lab is None else lab.float()
    guard = check_truth_values(probs, name) if check else None
    loss = _fused_loss(probs, lab, offsets, threshold, p_forall, stable, backend)
    return loss if guard is None else loss + guard


def _fused_loss(probs, lab, offsets, threshold, p_forall, stable, backend) -> torch.Tensor:
    which = choose(SPEC, backend, probs.device)
    if probs.dtype not in (torch.float32, torch.float64) and which != "triton":
        probs = probs.float()
    threshold, p_forall = float(threshold), float(p_forall)
    if which == "torch":
        return reference.pairwise_constraint_loss(
            probs, lab, offsets, threshold=threshold, p_forall=p_forall, stable=stable
        )
    if which == "cpu":
        sums, counts = torch.ops.wsseg_fast.pairwise_constraint_stats(probs, lab, offsets, threshold, p_forall, stable)
    else:
        sums, counts = _triton.pairwise_constraint_stats_triton(probs, lab, offsets.int(), threshold, p_forall, stable)
    return loss_from_stats(sums, counts, p_forall, stable)
