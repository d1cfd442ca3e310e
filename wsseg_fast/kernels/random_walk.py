"""Triton kernels of ``random_walk``: one launch per walk step.

- ``_step_kernel``: ``out(i) = sum_k W[k, i] x(i + off_k)`` for a tile of
  channels x pixels; with ``TRANSPOSE`` it applies ``W^T`` instead
  (``sum_k W[K-1-k, i + off_k] x(i + off_k)``: the disc is symmetric and its
  order reversed is its negation), the adjoint the backward needs.
- ``_grad_weights_kernel``: ``G[k, i] += sum_c g(c, i) y(c, i + off_k)``.

The backward recomputes the walk from checkpoints every ``ceil(sqrt(steps))``
states (see :mod:`wsseg_fast.ops.random_walk`). Runs on CUDA tensors, and on
CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from wsseg_fast.kernels.affinity import neighbor, offsets_table

BLOCK_C = 8
BLOCK_P = 128


@triton.jit
def _step_kernel(
    x_ptr,
    w_ptr,
    off_ptr,
    out_ptr,
    channels,
    height,
    width,
    n_offsets,
    TRANSPOSE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    hw = height * width
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    inside = p < hw
    c_ok = c < channels
    y = p // width
    x = p % width
    x_base = x_ptr + b * channels * hw + c[:, None] * hw
    w_base = w_ptr + b * n_offsets * hw
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=x_ptr.dtype.element_ty)
    for k in range(n_offsets):
        q, valid = neighbor(off_ptr, k, y, x, inside, height, width)
        if TRANSPOSE:
            w = tl.load(w_base + (n_offsets - 1 - k) * hw + q, mask=valid, other=0)
        else:
            w = tl.load(w_base + k * hw + p, mask=valid, other=0)
        v = tl.load(x_base + q[None, :], mask=c_ok[:, None] & valid[None, :], other=0)
        acc += w[None, :] * v
    tl.store(out_ptr + b * channels * hw + c[:, None] * hw + p[None, :], acc, mask=c_ok[:, None] & inside[None, :])


@triton.jit
def _grad_weights_kernel(
    g_ptr, y_ptr, off_ptr, gw_ptr, channels, height, width, n_offsets, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr
):
    b = tl.program_id(0).to(tl.int64)
    hw = height * width
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    inside = p < hw
    y = p // width
    x = p % width
    g_base = g_ptr + b * channels * hw
    y_base = y_ptr + b * channels * hw
    gw_base = gw_ptr + b * n_offsets * hw
    for k in range(n_offsets):
        q, valid = neighbor(off_ptr, k, y, x, inside, height, width)
        total = tl.zeros([BLOCK_P], dtype=gw_ptr.dtype.element_ty)
        for c0 in range(0, channels, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            c_ok = c < channels
            g = tl.load(g_base + c[:, None] * hw + p[None, :], mask=c_ok[:, None] & inside[None, :], other=0)
            v = tl.load(y_base + c[:, None] * hw + q[None, :], mask=c_ok[:, None] & valid[None, :], other=0)
            total += tl.sum(g * v, axis=0)
        old = tl.load(gw_base + k * hw + p, mask=inside, other=0)
        tl.store(gw_base + k * hw + p, old + total, mask=inside)


def _step(x, weights, offsets, out, transpose):
    batch, channels, height, width = x.shape
    grid = (batch, triton.cdiv(height * width, BLOCK_P), triton.cdiv(channels, BLOCK_C))
    wrap_triton(_step_kernel)[grid](
        x,
        weights,
        offsets,
        out,
        channels,
        height,
        width,
        offsets.numel() // 2,
        TRANSPOSE=transpose,
        BLOCK_C=BLOCK_C,
        BLOCK_P=BLOCK_P,
    )
    return out


def _walk(x, weights, offsets, steps):
    if steps == 0:
        return x.clone()
    cur, nxt = x, torch.empty_like(x)
    for _ in range(steps):
        _step(cur, weights, offsets, nxt, False)
        cur, nxt = nxt, (torch.empty_like(x) if cur is x else cur)
    return cur


def _empty(x, weights):
    return x.numel() == 0 or weights.numel() == 0


@triton_op("wsseg_fast::random_walk_triton", mutates_args=())
def random_walk_triton(x: torch.Tensor, weights: torch.Tensor, radius: int, steps: int) -> torch.Tensor:
    if _empty(x, weights):
        return x.clone()
    return _walk(x, weights, offsets_table(radius, x.device), steps)


@triton_op("wsseg_fast::random_walk_backward_triton", mutates_args=())
def random_walk_backward_triton(
    grad: torch.Tensor, x: torch.Tensor, weights: torch.Tensor, radius: int, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_w = torch.zeros_like(weights)
    if _empty(x, weights) or steps == 0:
        return grad.clone(), grad_w
    offsets = offsets_table(radius, x.device)
    batch, channels, height, width = x.shape
    interval = math.isqrt(steps - 1) + 1  # ceil(sqrt(steps))
    checkpoints = [x]
    for _ in range(1, math.ceil(steps / interval)):
        checkpoints.append(_walk(checkpoints[-1], weights, offsets, interval))
    g = grad.clone()
    spare = torch.empty_like(g)
    grid = (batch, triton.cdiv(height * width, BLOCK_P))
    for seg in reversed(range(len(checkpoints))):
        states = [checkpoints[seg]]
        for _ in range(seg * interval + 1, min((seg + 1) * interval, steps)):
            states.append(_step(states[-1], weights, offsets, torch.empty_like(x), False))
        for state in reversed(states):
            wrap_triton(_grad_weights_kernel)[grid](
                g,
                state,
                offsets,
                grad_w,
                channels,
                height,
                width,
                offsets.numel() // 2,
                BLOCK_C=BLOCK_C,
                BLOCK_P=BLOCK_P,
            )
            _step(g, weights, offsets, spare, True)
            g, spare = spare, g
    return g, grad_w
