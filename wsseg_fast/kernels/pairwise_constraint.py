"""Triton kernels of the fused pairwise colour prior (see ``wsseg_fast.ops.pairwise_constraint``).

One program per (image, class, tile). ``_stats_kernel`` sums
(1 - pi_1(p_x p_y + (1 - p_x)(1 - p_y)))^p over the tile's edges to similar
neighbours; ``_grad_kernel`` gathers each pixel's gradient from the edges that
start at it and those that end at it. Similarity is recomputed from the Lab
image on the fly: nothing of size [B, K, H, W] is stored.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from wsseg_fast.kernels.fuzzy import error_power, error_power_grad


@triton.jit
def _edge(lab_ptr, plane, ys, xs, dy, dx, H, W, m, threshold):
    """(edge from (ys, xs) to (ys + dy, xs + dx) exists and is similar, flat index of the neighbour)."""
    ny = ys + dy
    nx = xs + dx
    inside = m & (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
    here = ys * W + xs
    there = ny * W + nx
    d2 = tl.zeros(here.shape, dtype=tl.float32)
    for ch in range(3):
        a = tl.load(lab_ptr + ch * plane + here, mask=inside, other=0.0)
        b = tl.load(lab_ptr + ch * plane + there, mask=inside, other=0.0)
        d2 += (a - b) * (a - b)
    similar = tl.exp(-tl.sqrt(d2) * 0.5) >= threshold
    return inside & similar, there


@triton.jit
def _stats_kernel(
    probs_ptr,
    lab_ptr,
    offsets_ptr,
    sums_ptr,
    counts_ptr,
    C,
    H,
    W,
    K,
    threshold,
    p_forall,
    STABLE: tl.constexpr,
    PF_IS_2: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    bc = tl.program_id(0)
    b = bc // C
    c = bc % C
    ys = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    xs = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    m = (ys < H) & (xs < W)
    plane = H * W
    lab = lab_ptr + b.to(tl.int64) * 3 * plane
    probs = probs_ptr + bc.to(tl.int64) * plane
    acc_ty = sums_ptr.dtype.element_ty
    here = ys * W + xs
    p = tl.load(probs + here, mask=m, other=0.0).to(acc_ty)
    acc = tl.zeros([BLOCK_R, BLOCK_W], dtype=acc_ty)
    n = tl.zeros([BLOCK_R, BLOCK_W], dtype=acc_ty)
    for k in range(0, K):
        dy = tl.load(offsets_ptr + 2 * k)
        dx = tl.load(offsets_ptr + 2 * k + 1)
        edge, there = _edge(lab, plane, ys, xs, dy, dx, H, W, m, threshold)
        q = tl.load(probs + there, mask=edge, other=0.0).to(acc_ty)
        same = p * q + (1.0 - p) * (1.0 - q)
        acc += tl.where(edge, error_power(same, p_forall, STABLE, PF_IS_2), 0.0)
        n += edge.to(acc_ty)
    tl.atomic_add(sums_ptr + bc, tl.sum(tl.sum(acc, axis=1), axis=0))
    tl.atomic_add(counts_ptr + b, tl.sum(tl.sum(n, axis=1), axis=0), mask=c == 0)


@triton.jit
def _grad_kernel(
    grad_sums_ptr,
    probs_ptr,
    lab_ptr,
    offsets_ptr,
    grad_ptr,
    C,
    H,
    W,
    K,
    threshold,
    p_forall,
    STABLE: tl.constexpr,
    PF_IS_2: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    bc = tl.program_id(0)
    b = bc // C
    ys = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    xs = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    m = (ys < H) & (xs < W)
    plane = H * W
    lab = lab_ptr + b.to(tl.int64) * 3 * plane
    probs = probs_ptr + bc.to(tl.int64) * plane
    acc_ty = grad_sums_ptr.dtype.element_ty
    here = ys * W + xs
    p = tl.load(probs + here, mask=m, other=0.0).to(acc_ty)
    acc = tl.zeros([BLOCK_R, BLOCK_W], dtype=acc_ty)
    for k in range(0, K):
        dy = tl.load(offsets_ptr + 2 * k)
        dx = tl.load(offsets_ptr + 2 * k + 1)
        # the edge from here to the neighbour at +offset
        edge, there = _edge(lab, plane, ys, xs, dy, dx, H, W, m, threshold)
        q = tl.load(probs + there, mask=edge, other=0.0).to(acc_ty)
        same = p * q + (1.0 - p) * (1.0 - q)
        acc += tl.where(edge, error_power_grad(same, p_forall, STABLE, PF_IS_2) * (2.0 * q - 1.0), 0.0)
        # the edge from the neighbour at -offset to here
        edge, there = _edge(
            lab,
            plane,
            ys - dy,
            xs - dx,
            dy,
            dx,
            H,
            W,
            m & (ys - dy >= 0) & (ys - dy < H) & (xs - dx >= 0) & (xs - dx < W),
            threshold,
        )
        q = tl.load(probs + (ys - dy) * W + (xs - dx), mask=edge, other=0.0).to(acc_ty)
        same = q * p + (1.0 - q) * (1.0 - p)
        acc += tl.where(edge, error_power_grad(same, p_forall, STABLE, PF_IS_2) * (2.0 * q - 1.0), 0.0)
    scale = tl.load(grad_sums_ptr + bc)
    tl.store(grad_ptr + bc.to(tl.int64) * plane + here, (acc * scale).to(grad_ptr.dtype.element_ty), mask=m)


def _launch_shape(probs: torch.Tensor):
    batch, classes, height, width = probs.shape
    block_r, block_w = 16, min(64, triton.next_power_of_2(max(width, 1)))
    return (batch * classes, triton.cdiv(height, block_r), triton.cdiv(width, block_w)), block_r, block_w


def _acc_dtype(probs: torch.Tensor) -> torch.dtype:
    return torch.float64 if probs.dtype == torch.float64 else torch.float32


@triton_op("wsseg_fast::pairwise_constraint_stats_triton", mutates_args=())
def pairwise_constraint_stats_triton(
    probs: torch.Tensor, lab: torch.Tensor, offsets: torch.Tensor, threshold: float, p_forall: float, stable: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """probs [B, C, H, W], lab [B, 3, H, W] float32, offsets [K, 2] int32 -> (sums [B, C], counts [B])."""
    batch, classes = probs.shape[:2]
    acc = _acc_dtype(probs)
    sums = torch.zeros(batch, classes, dtype=acc, device=probs.device)
    counts = torch.zeros(batch, dtype=acc, device=probs.device)
    if probs.numel() == 0:
        return sums, counts
    grid, block_r, block_w = _launch_shape(probs)
    wrap_triton(_stats_kernel)[grid](
        probs.contiguous(),
        lab.contiguous(),
        offsets.contiguous(),
        sums,
        counts,
        classes,
        probs.shape[2],
        probs.shape[3],
        offsets.shape[0],
        threshold,
        p_forall,
        STABLE=stable,
        PF_IS_2=p_forall == 2.0,
        BLOCK_R=block_r,
        BLOCK_W=block_w,
    )
    return sums, counts


@triton_op("wsseg_fast::pairwise_constraint_grad_triton", mutates_args=())
def pairwise_constraint_grad_triton(
    grad_sums: torch.Tensor,
    probs: torch.Tensor,
    lab: torch.Tensor,
    offsets: torch.Tensor,
    threshold: float,
    p_forall: float,
    stable: bool,
) -> torch.Tensor:
    grad = torch.zeros_like(probs, memory_format=torch.contiguous_format)
    if probs.numel() == 0:
        return grad
    grid, block_r, block_w = _launch_shape(probs)
    wrap_triton(_grad_kernel)[grid](
        grad_sums.to(_acc_dtype(probs)).contiguous(),
        probs.contiguous(),
        lab.contiguous(),
        offsets.contiguous(),
        grad,
        probs.shape[1],
        probs.shape[2],
        probs.shape[3],
        offsets.shape[0],
        threshold,
        p_forall,
        STABLE=stable,
        PF_IS_2=p_forall == 2.0,
        BLOCK_R=block_r,
        BLOCK_W=block_w,
    )
    return grad


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.params = inputs[3:]


def _backward(ctx, grad_sums, _grad_counts):
    probs, lab, offsets = ctx.saved_tensors
    return pairwise_constraint_grad_triton(grad_sums, probs, lab, offsets, *ctx.params), None, None, None, None, None


pairwise_constraint_stats_triton.register_autograd(_backward, setup_context=_setup_context)
