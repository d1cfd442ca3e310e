"""Superpixel pooling and SSC's superpixel-guided activation self-modulation.

``superpixel_pool`` gives every pixel the mean (or max) of its superpixel per
channel. Its mean is self-adjoint (the gradient of a mean pool is the mean
pool of the gradient), so one kernel serves forward and backward; max routes
each superpixel's summed gradient to its first arg-max pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wsseg_fast import reference
from wsseg_fast.ops._backend import TRITON_RUNNABLE, OpSpec, choose
from wsseg_fast.reference.superpixel_pool import normalise_by_max, working_precision

if TRITON_RUNNABLE:
    from wsseg_fast.kernels import superpixel_pool as _triton
else:  # pragma: no cover - Triton cannot run here (see TRITON_RUNNABLE)
    _triton = None

SPEC = OpSpec(
    "superpixel_pool",
    backends=("torch", "cpu", "triton", "cuda"),
    auto={"cpu": ("cpu",), "cuda": ("cuda", "triton")},
)
REDUCTIONS = ("mean", "max")

if SPEC.compiled["cpu"] or SPEC.compiled["cuda"]:

    @torch.library.register_fake("wsseg_fast::superpixel_pool")
    def _(x, labels, reduce):
        if reduce != "mean":
            k = torch.library.get_ctx().new_dynamic_size()
            return torch.empty_like(x), x.new_empty((x.shape[0], x.shape[1], k), dtype=torch.long)
        return torch.empty_like(x), x.new_empty((0,), dtype=torch.long)

    @torch.library.register_fake("wsseg_fast::superpixel_pool_max_backward")
    def _(grad, labels, argmax):
        return torch.empty_like(grad)

    def _setup(ctx, inputs, output):
        _, labels, reduce = inputs
        ctx.reduce = reduce
        ctx.save_for_backward(labels, output[1])

    def _backward(ctx, grad_out, _grad_argmax):
        labels, argmax = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        if ctx.reduce == "mean":
            return torch.ops.wsseg_fast.superpixel_pool(grad_out, labels, "mean")[0], None, None
        return torch.ops.wsseg_fast.superpixel_pool_max_backward(grad_out, labels, argmax), None, None

    torch.library.register_autograd("wsseg_fast::superpixel_pool", _backward, setup_context=_setup)


def _check(x: torch.Tensor, labels: torch.Tensor, name: str = "superpixel_pool") -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name}: `x` and `labels` must be torch.Tensors")
    if x.dim() != 4:
        raise ValueError(f"{name}: `x` must have shape [B, C, H, W], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: `x` must be floating point, got {x.dtype}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name}: `labels` must be an integer tensor, got {labels.dtype}")
    expected = (x.shape[0], x.shape[2], x.shape[3])
    if tuple(labels.shape) != expected:
        raise ValueError(f"{name}: `labels` must have shape [B, H, W] = {expected}, got {tuple(labels.shape)}")
    if labels.device != x.device:
        raise ValueError(f"{name}: `labels` is on {labels.device} but `x` is on {x.device}")


def superpixel_pool(
    x: torch.Tensor, labels: torch.Tensor, *, reduce: str = "mean", backend: str = "auto"
) -> torch.Tensor:
    """Every pixel gets the mean (or max) of ``x`` over its superpixel, per channel.

    Args:
        x: ``[B, C, H, W]`` floating point.
        labels: ``[B, H, W]`` integer superpixel ids (e.g. from :func:`slic`); -1 marks
            pixels outside every superpixel (they get 0).
        reduce: ``"mean"`` or ``"max"``. Differentiable in ``x``: the mean spreads the
            gradient evenly over the superpixel, max gives it all to the first arg-max pixel.
        backend: ``auto | cuda | triton | cpu | torch``.

    Returns:
        ``[B, C, H, W]``, the dtype of ``x`` (half precision computes in float32).
    """
    _check(x, labels)
    if reduce not in REDUCTIONS:
        raise ValueError(f"superpixel_pool: `reduce` must be one of {REDUCTIONS}, got {reduce!r}")
    which = choose(SPEC, backend, x.device)
    if which == "torch":
        return reference.superpixel_pool(x, labels, reduce)
    dtype = x.dtype
    work = x if dtype in (torch.float32, torch.float64) else x.float()
    if labels.dtype not in (torch.int32, torch.int64):
        labels = labels.long()
    if which == "triton":
        out = _triton.superpixel_pool_triton(work.contiguous(), labels.contiguous(), reduce)
    else:
        out = torch.ops.wsseg_fast.superpixel_pool(work.contiguous(), labels.contiguous(), reduce)[0]
    return out.to(dtype)


def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Square binary erosion in O(1) per pixel: a pixel survives when its (2r+1)^2 window
    holds no hole, the window counts taken from running sums along W, then H."""
    if radius <= 0:
        return mask
    size = 2 * radius + 1
    holes = (~mask).to(torch.int32)
    rows = F.pad(holes, (radius + 1, radius)).cumsum(-1, dtype=torch.int32)
    holes = rows[..., size:] - rows[..., :-size]
    cols = F.pad(holes, (0, 0, radius + 1, radius)).cumsum(-2, dtype=torch.int32)
    return (cols[..., size:, :] - cols[..., :-size, :]) == 0


def _check_modulation(cams, labels, present, threshold, erode, name):
    _check(cams, labels, name)
    if present is not None:
        if not isinstance(present, torch.Tensor) or tuple(present.shape) != tuple(cams.shape[:2]):
            raise ValueError(f"{name}: `present` must be a [B, C] tensor = {tuple(cams.shape[:2])}")
    if not 0 <= float(threshold) <= 1:
        raise ValueError(f"{name}: `threshold` must lie in [0, 1], got {threshold}")
    if isinstance(erode, bool) or not isinstance(erode, int) or erode < 0:
        raise ValueError(f"{name}: `erode` must be an int >= 0, got {erode!r}")


def activation_modulation(
    cams: torch.Tensor,
    labels: torch.Tensor,
    *,
    present: torch.Tensor | None = None,
    threshold: float = 0.3,
    erode: int = 8,
    backend: str = "auto",
) -> torch.Tensor:
    """SSC's self-modulation target (detached), ``[B, C, H, W]``.

    CAMs are rectified and normalised by their per-class max; the target is the
    larger of their superpixel mean (normalised again by its max) and the CAM
    inside its reliable region (normalised CAM > ``threshold``, eroded by a
    ``(2 erode + 1)^2`` square). Classes not ``present`` (``[B, C]``) get 0.
    ``backend`` picks the superpixel pooling kernel.
    """
    _check_modulation(cams, labels, present, threshold, erode, "activation_modulation")
    if backend == "torch":
        return reference.activation_modulation(cams, labels, present, threshold, erode)
    with torch.no_grad():
        cam = normalise_by_max(working_precision(cams))
        pooled = normalise_by_max(superpixel_pool(cam, labels, backend=backend))
        target = torch.maximum(pooled, cam * _erode(cam > threshold, erode))
        if present is not None:
            target = target * present.to(target.dtype)[:, :, None, None]
    return target.to(cams.dtype)


def ssc_alignment_loss(
    cams: torch.Tensor,
    labels: torch.Tensor,
    *,
    present: torch.Tensor | None = None,
    threshold: float = 0.3,
    erode: int = 8,
    backend: str = "auto",
) -> torch.Tensor:
    """SSC's activation alignment loss L_a: MSE between the max-normalised CAMs and the
    detached :func:`activation_modulation` target, averaged over the pixels of the present
    classes (all when ``present`` is None). Differentiable in ``cams``."""
    _check_modulation(cams, labels, present, threshold, erode, "ssc_alignment_loss")
    if backend == "torch":
        return reference.ssc_alignment_loss(cams, labels, present, threshold, erode)
    target = activation_modulation(cams, labels, present=present, threshold=threshold, erode=erode, backend=backend)
    per_map = ((normalise_by_max(cams) - target) ** 2).mean(dim=(2, 3))
    if present is None:
        return per_map.mean()
    weight = present.to(per_map.dtype)
    return (per_map * weight).sum() / weight.sum().clamp_min(1)
