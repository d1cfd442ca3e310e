"""Triton kernels of ``superpixel_pool``: per-superpixel reduction by atomics, then a gather.

mean: ``sums[b, c, k]`` and ``counts[b, k]`` by ``atomic_add``, then each pixel reads
``sums / counts``. max: ``atomic_max`` per superpixel, then the first pixel holding the
max claims it by ``atomic_min`` of its index (the arg-max the gradient goes to). A NaN is the
max of its superpixel, and its first position the arg-max, as in the CPU and CUDA kernels.
Programs are (plane ``b * C + c``, block of pixels). The number of superpixels
is read from ``labels`` on the host (one synchronisation) to size the buffers.

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

BLOCK = 1024


@triton.jit
def _segment_reduce_kernel(
    x_ptr, labels_ptr, acc_ptr, count_ptr, hw, channels, k, IS_MAX: tl.constexpr, BLOCK: tl.constexpr
):
    plane = tl.program_id(0).to(tl.int64)  # b * C + c
    b = plane // channels
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < hw
    lbl = tl.load(labels_ptr + b * hw + offs, mask=inside, other=-1).to(tl.int64)
    valid = inside & (lbl >= 0)
    value = tl.load(x_ptr + plane * hw + offs, mask=valid, other=0)
    if IS_MAX:
        # A NaN is the max (as torch.amax): stored by exchange, with its sign bit cleared (abs), and
        # no atomic_max replaces it then. Triton's float atomic_max is a signed integer max for
        # values with the sign bit clear (a NaN's bits sort above +inf's) and an unsigned min for
        # the others (a positive NaN's bits sort below every negative number's). A NaN given to
        # atomic_max itself is dropped by Triton before 3.4, which picked the branch by value >= 0.
        # The exchange moves the bits as integers (the interpreter exchanges no floats).
        number = value == value
        tl.atomic_max(acc_ptr + plane * k + lbl, value, mask=valid & number)
        bits = tl.int64 if acc_ptr.dtype.element_ty == tl.float64 else tl.int32
        slot = (acc_ptr + plane * k + lbl).to(tl.pointer_type(bits), bitcast=True)
        tl.atomic_xchg(slot, tl.abs(value).to(bits, bitcast=True), mask=valid & (value != value))
    else:
        tl.atomic_add(acc_ptr + plane * k + lbl, value, mask=valid)
        first_channel = valid & ((plane % channels) == 0)
        tl.atomic_add(count_ptr + b * k + lbl, tl.full([BLOCK], 1.0, tl.float32), mask=first_channel)


@triton.jit
def _claim_argmax_kernel(x_ptr, labels_ptr, max_ptr, argmax_ptr, hw, channels, k, BLOCK: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    b = plane // channels
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < hw
    lbl = tl.load(labels_ptr + b * hw + offs, mask=inside, other=-1).to(tl.int64)
    valid = inside & (lbl >= 0)
    value = tl.load(x_ptr + plane * hw + offs, mask=valid, other=0)
    best = tl.load(max_ptr + plane * k + lbl, mask=valid, other=0)
    holds = (value == best) | ((value != value) & (best != best))  # the max, or a NaN when it is NaN
    tl.atomic_min(argmax_ptr + plane * k + lbl, offs, mask=valid & holds)


@triton.jit
def _scatter_kernel(
    out_ptr, labels_ptr, acc_ptr, count_ptr, argmax_ptr, hw, channels, k, MODE: tl.constexpr, BLOCK: tl.constexpr
):
    # MODE 0: mean (acc / count); 1: max (acc); 2: max backward (acc at the arg-max pixel only).
    plane = tl.program_id(0).to(tl.int64)
    b = plane // channels
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < hw
    lbl = tl.load(labels_ptr + b * hw + offs, mask=inside, other=-1).to(tl.int64)
    valid = inside & (lbl >= 0)
    value = tl.load(acc_ptr + plane * k + lbl, mask=valid, other=0)
    if MODE == 0:
        count = tl.load(count_ptr + b * k + lbl, mask=valid, other=1.0)
        value = value / tl.maximum(count, 1.0).to(value.dtype)
    if MODE == 2:
        owner = tl.load(argmax_ptr + plane * k + lbl, mask=valid, other=-1)
        value = tl.where(owner == offs, value, 0)
    tl.store(out_ptr + plane * hw + offs, tl.where(valid, value, 0), mask=inside)


def _grid(x: torch.Tensor):
    batch, channels, height, width = x.shape
    return (batch * channels, triton.cdiv(height * width, BLOCK))


def _segment_sums(x: torch.Tensor, labels: torch.Tensor, k: int):
    batch, channels, height, width = x.shape
    sums = torch.zeros(batch, channels, k, dtype=x.dtype, device=x.device)
    counts = torch.zeros(batch, k, dtype=torch.float32, device=x.device)
    wrap_triton(_segment_reduce_kernel)[_grid(x)](
        x, labels, sums, counts, height * width, channels, k, IS_MAX=False, BLOCK=BLOCK
    )
    return sums, counts


@triton_op("wsseg_fast::superpixel_pool_triton_mean", mutates_args=())
def _pool_mean(x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    batch, channels, height, width = x.shape
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    sums, counts = _segment_sums(x, labels, k)
    wrap_triton(_scatter_kernel)[_grid(x)](
        out, labels, sums, counts, sums, height * width, channels, k, MODE=0, BLOCK=BLOCK
    )
    return out


@triton_op("wsseg_fast::superpixel_pool_triton_max", mutates_args=())
def _pool_max(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch, channels, height, width = x.shape
    out = torch.empty_like(x)
    argmax = torch.full((batch, channels, k), height * width, dtype=torch.int64, device=x.device)
    if x.numel() == 0:
        return out, argmax
    maxes = torch.full((batch, channels, k), float("-inf"), dtype=x.dtype, device=x.device)
    hw = height * width
    wrap_triton(_segment_reduce_kernel)[_grid(x)](x, labels, maxes, maxes, hw, channels, k, IS_MAX=True, BLOCK=BLOCK)
    wrap_triton(_claim_argmax_kernel)[_grid(x)](x, labels, maxes, argmax, hw, channels, k, BLOCK=BLOCK)
    wrap_triton(_scatter_kernel)[_grid(x)](out, labels, maxes, maxes, argmax, hw, channels, k, MODE=1, BLOCK=BLOCK)
    return out, argmax


@triton_op("wsseg_fast::superpixel_pool_triton_max_backward", mutates_args=())
def _pool_max_backward(grad: torch.Tensor, labels: torch.Tensor, argmax: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = grad.shape
    out = torch.empty_like(grad)
    if grad.numel() == 0:
        return out
    k = argmax.shape[2]
    sums, counts = _segment_sums(grad, labels, k)
    wrap_triton(_scatter_kernel)[_grid(grad)](
        out, labels, sums, counts, argmax, height * width, channels, k, MODE=2, BLOCK=BLOCK
    )
    return out


def _setup_mean(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.k = inputs[2]


def _backward_mean(ctx, grad):
    (labels,) = ctx.saved_tensors
    return _pool_mean(grad.contiguous(), labels, ctx.k), None, None


def _setup_max(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], output[1])


def _backward_max(ctx, grad, _grad_argmax):
    labels, argmax = ctx.saved_tensors
    return _pool_max_backward(grad.contiguous(), labels, argmax), None, None


_pool_mean.register_autograd(_backward_mean, setup_context=_setup_mean)
_pool_max.register_autograd(_backward_max, setup_context=_setup_max)


def superpixel_pool_triton(x: torch.Tensor, labels: torch.Tensor, reduce: str) -> torch.Tensor:
    """``x`` ``[B, C, H, W]`` float32/float64 contiguous, ``labels`` ``[B, H, W]`` int contiguous."""
    k = max(int(labels.max()) + 1, 1) if labels.numel() else 1  # sizes the buffers: one host sync
    if reduce == "mean":
        return _pool_mean(x, labels, k)
    return _pool_max(x, labels, k)[0]
