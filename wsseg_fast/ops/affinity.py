"""Local pixel affinities over the disc stencil of :func:`neighbor_offsets`:
the affinity source of PSA/IRN's random walk, and WeakMedSAM's prompt
affinity (SAM masks as the features).

Layout: ``A[b, k, y, x]`` is the affinity between pixel ``(y, x)`` and its
neighbour ``(y + dy_k, x + dx_k)``; ``k`` follows ``neighbor_offsets(radius)``.
"""

from __future__ import annotations

import torch

from wsseg_fast import reference
from wsseg_fast.ops._backend import TRITON_RUNNABLE, OpSpec, choose
from wsseg_fast.ops.neighbors import disc_offsets, shifted

if TRITON_RUNNABLE:
    from wsseg_fast.kernels import affinity as _triton
else:  # pragma: no cover - Triton cannot run here (see TRITON_RUNNABLE)
    _triton = None

SPEC = OpSpec(
    "local_affinity",
    backends=("torch", "cpu", "cuda", "triton"),
    auto={"cpu": ("cpu",), "cuda": ("cuda", "triton")},
)
METRICS = ("l1", "l2")


def _backward(ctx, grad):
    """d/df of exp(-mean_d dist(f_i - f_j)), in PyTorch for every backend: each
    pair sends ``-A g dist'(f_i - f_j) / D`` to ``i`` and its negative to ``j``
    (``j = i + off_k``; the scatter to ``j`` is a shift by ``-off_k``)."""
    features, affinity = ctx.saved_tensors
    grad_features = torch.zeros_like(features)
    depth = features.shape[1]
    for k, (dy, dx) in enumerate(disc_offsets(ctx.radius)):
        diff = features - shifted(features, dy, dx)[0]
        slope = 2 * diff if ctx.squared else torch.sign(diff)
        push = (-(grad[:, k] * affinity[:, k]) / depth).unsqueeze(1) * slope  # zero outside: affinity is 0 there
        grad_features = grad_features + push - shifted(push, -dy, -dx)[0]
    return grad_features, None, None


def _setup_context(ctx, inputs, output):
    features, radius, squared = inputs
    ctx.save_for_backward(features, output)
    ctx.radius, ctx.squared = radius, squared


if SPEC.compiled["cpu"] or SPEC.compiled["cuda"]:

    @torch.library.register_fake("wsseg_fast::local_affinity")
    def _(features, radius, squared):
        b, _, h, w = features.shape
        return features.new_empty(b, len(disc_offsets(radius)), h, w)

    torch.library.register_autograd("wsseg_fast::local_affinity", _backward, setup_context=_setup_context)

if _triton is not None:
    _triton.local_affinity_triton.register_autograd(_backward, setup_context=_setup_context)


def _float(name: str, op: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: `{name}` must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: `{name}` must be floating point, got {t.dtype}")
    if t.dim() != 4:
        raise ValueError(f"{op}: `{name}` must have shape [B, D, H, W], got {tuple(t.shape)}")
    return t


def local_affinity(
    features: torch.Tensor, radius: int = 5, *, metric: str = "l1", backend: str = "auto"
) -> torch.Tensor:
    """Affinity of every pixel to each neighbour in the disc of ``radius``.

    ``A[b, k, y, x] = exp(-mean_d |f[b, d, y, x] - f[b, d, y + dy_k, x + dx_k]|)``
    (``metric="l1"``; ``"l2"`` uses the squared difference), 0 where the
    neighbour is outside the image. Symmetric: the entry of ``(i, j)`` equals
    that of ``(j, i)`` at the opposite offset. Differentiable in ``features``.

    Args:
        features: ``[B, D, H, W]`` floating point (float16/bfloat16 computed in float32).
        radius: the stencil, ``neighbor_offsets(radius)`` (K offsets; 69 for 5).
        metric: ``"l1"`` or ``"l2"``.
        backend: ``auto | triton | cuda | cpu | torch``.

    Returns:
        ``[B, K, H, W]`` in ``features``' dtype.
    """
    op = "local_affinity"
    features = _float("features", op, features)
    if features.shape[1] == 0:
        raise ValueError(f"{op}: `features` needs at least one channel, got shape {tuple(features.shape)}")
    disc_offsets(radius)  # validates radius
    if metric not in METRICS:
        raise ValueError(f"{op}: `metric` must be one of {METRICS}, got {metric!r}")
    dtype = features.dtype
    if dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    which = choose(SPEC, backend, features.device)
    if which == "torch":
        out = reference.local_affinity(features, radius, metric)
    elif which == "triton":
        out = _triton.local_affinity_triton(features.contiguous(), radius, metric == "l2")
    else:
        out = torch.ops.wsseg_fast.local_affinity(features.contiguous(), radius, metric == "l2")
    return out.to(dtype)


def mask_affinity(
    mask_logits: torch.Tensor,
    radius: int = 5,
    *,
    aggregate: str = "sum",
    metric: str = "l1",
    backend: str = "auto",
) -> torch.Tensor:
    """WeakMedSAM's prompt affinity: SAM masks of a grid of point prompts
    (see :func:`wsseg_fast.pipelines.cam_refine.grid_prompt_masks`) turned into
    local affinities.

    Args:
        mask_logits: ``[B, N, H, W]`` logits of N prompt masks per image.
        radius: the affinity stencil.
        aggregate: ``"sum"`` (WeakMedSAM: the mask probabilities summed into one
            map, normalised to [0, 1] by its per-image maximum) or ``"stack"``
            (each mask's probability is one feature channel, so pixels covered
            by different masks differ even when the counts agree).
        metric, backend: as :func:`local_affinity`.

    Returns:
        ``[B, K, H, W]`` affinities, ready for :func:`~wsseg_fast.ops.random_walk`.
    """
    op = "mask_affinity"
    mask_logits = _float("mask_logits", op, mask_logits)
    if aggregate not in ("sum", "stack"):
        raise ValueError(f"{op}: `aggregate` must be 'sum' or 'stack', got {aggregate!r}")
    probs = torch.sigmoid(mask_logits.float())
    if aggregate == "sum":
        total = probs.sum(1, keepdim=True)
        probs = total / total.amax((2, 3), keepdim=True).clamp_min(1e-6)
    return local_affinity(probs, radius, metric=metric, backend=backend).to(mask_logits.dtype)
