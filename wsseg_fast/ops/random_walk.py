"""Sparse affinity random walk: the CAM refinement of PSA, IRN and WeakMedSAM
without the dense ``HW x HW`` transition matrix.

With ``Ã = affinity ** beta`` over the disc stencil and ``d(i) = sum_j Ã_ij``,
each step is ``x(i) <- sum_j Ã_ij x(j) / d(i)`` (``D^-1 Ã``, the averaging walk).
Per step that is ``K`` multiply-adds per pixel and channel (K = 69 at radius 5)
instead of PSA's dense matrix (16 GiB at 256x256 in float32).

Memory of the backward (``cpu``/``cuda``/``triton``): the forward saves only
its inputs. The backward recomputes the walk from ``x`` and keeps every
``S = ceil(sqrt(steps))``-th state plus one segment of ``S`` states, i.e. about
``2 sqrt(steps)`` tensors of ``x``'s size (32 for 256 steps, against 256 if every
step were stored) plus the ``[B, K, H, W]`` transition gradient; it costs about
four forward walks. The ``torch`` reference stores every step (autograd).
"""

from __future__ import annotations

import math

import torch

from wsseg_fast import reference
from wsseg_fast.ops._backend import TRITON_RUNNABLE, OpSpec, choose
from wsseg_fast.ops.neighbors import disc_offsets
from wsseg_fast.reference.random_walk import transition

if TRITON_RUNNABLE:
    from wsseg_fast.kernels import random_walk as _triton
else:  # pragma: no cover - Triton cannot run here (see TRITON_RUNNABLE)
    _triton = None

SPEC = OpSpec(
    "random_walk",
    backends=("torch", "cpu", "cuda", "triton"),
    auto={"cpu": ("cpu",), "cuda": ("cuda", "triton")},
)


def checkpoint_interval(steps: int) -> int:
    """States between the checkpoints of the backward: ``ceil(sqrt(steps))``."""
    return math.isqrt(steps - 1) + 1 if steps > 0 else 1


def _setup_context(ctx, inputs, output):
    x, weights, radius, steps = inputs
    ctx.save_for_backward(x, weights)
    ctx.radius, ctx.steps = radius, steps


def _backward_cpp(ctx, grad):
    x, weights = ctx.saved_tensors
    grad_x, grad_w = torch.ops.wsseg_fast.random_walk_backward(grad.contiguous(), x, weights, ctx.radius, ctx.steps)
    return grad_x, grad_w, None, None


if SPEC.compiled["cpu"] or SPEC.compiled["cuda"]:

    @torch.library.register_fake("wsseg_fast::random_walk")
    def _(x, weights, radius, steps):
        return torch.empty_like(x)

    @torch.library.register_fake("wsseg_fast::random_walk_backward")
    def _(grad, x, weights, radius, steps):
        return torch.empty_like(x), torch.empty_like(weights)

    torch.library.register_autograd("wsseg_fast::random_walk", _backward_cpp, setup_context=_setup_context)

if _triton is not None:

    def _backward_triton(ctx, grad):
        x, weights = ctx.saved_tensors
        grad_x, grad_w = _triton.random_walk_backward_triton(grad.contiguous(), x, weights, ctx.radius, ctx.steps)
        return grad_x, grad_w, None, None

    _triton.random_walk_triton.register_autograd(_backward_triton, setup_context=_setup_context)


def _check_inputs(x, affinity, radius, beta, steps):
    op = "random_walk"
    for name, t in (("x", x), ("affinity", affinity)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: `{name}` must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: `{name}` must be floating point, got {t.dtype}")
    k = len(disc_offsets(radius))
    if x.dim() != 4:
        raise ValueError(f"{op}: `x` must have shape [B, C, H, W], got {tuple(x.shape)}")
    b, _, h, w = x.shape
    if tuple(affinity.shape) != (b, k, h, w):
        raise ValueError(
            f"{op}: `affinity` must have shape [B, K, H, W] = {(b, k, h, w)} (K = {k} offsets for radius {radius}), "
            f"got {tuple(affinity.shape)}"
        )
    if affinity.device != x.device:
        raise ValueError(f"{op}: `x` is on {x.device} but `affinity` is on {affinity.device}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"{op}: `steps` must be an int >= 0, got {steps!r}")
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"{op}: `beta` must be a finite number > 0, got {beta!r}")
    # Value checks need a host synchronisation and a data-dependent branch: not under torch.compile.
    if not torch.compiler.is_compiling():
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{op}: `x` contains NaN or infinity")
        if not bool(torch.isfinite(affinity).all()):
            raise ValueError(f"{op}: `affinity` contains NaN or infinity")
        if bool((affinity < 0).any()):
            raise ValueError(f"{op}: `affinity` must be >= 0 (it is raised to the power beta)")


def random_walk(
    x: torch.Tensor,
    affinity: torch.Tensor,
    radius: int,
    *,
    beta: float = 8.0,
    steps: int = 256,
    backend: str = "auto",
) -> torch.Tensor:
    """Propagate ``x`` along the affinities: ``steps`` times ``x <- D^-1 Ã x``.

    Equal, within floating-point tolerance, to PSA's dense formulation (the
    ``HW x HW`` matrix of ``Ã``, column-normalised, to the power ``steps``,
    applied to ``x``); see :func:`wsseg_fast.reference.random_walk.dense_random_walk`.

    Args:
        x: ``[B, C, H, W]`` values to propagate (CAMs).
        affinity: ``[B, K, H, W]`` non-negative affinities over
            ``neighbor_offsets(radius)`` (e.g. :func:`local_affinity`); entries
            whose neighbour is outside the image are ignored.
        radius: the stencil the affinities were computed on.
        beta: ``Ã = affinity ** beta`` (PSA: 8, IRN: 10).
        steps: number of walk steps (PSA/IRN: 256); 0 returns ``x``.
        backend: ``auto | triton | cuda | cpu | torch``.

    Returns:
        ``[B, C, H, W]`` in the common dtype of ``x`` and ``affinity``
        (float16/bfloat16 walk in float32). Differentiable in both inputs.

    Raises:
        ValueError: wrong shapes (``K`` must match ``radius``), negative or
            non-finite values (value checks are skipped under ``torch.compile``).
    """
    _check_inputs(x, affinity, radius, beta, steps)
    dtype = torch.promote_types(x.dtype, affinity.dtype)
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    x, affinity = x.to(work), affinity.to(work)
    which = choose(SPEC, backend, x.device)
    if which == "torch":
        return reference.random_walk(x, affinity, radius, beta, steps).to(dtype)
    weights = transition(affinity, radius, float(beta)).contiguous()
    if which == "triton":
        out = _triton.random_walk_triton(x.contiguous(), weights, radius, steps)
    else:
        out = torch.ops.wsseg_fast.random_walk(x.contiguous(), weights, radius, steps)
    return out.to(dtype)
