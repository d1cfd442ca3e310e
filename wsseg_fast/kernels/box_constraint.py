"""Triton kernels of the fused box constraint (see ``wsseg_fast.ops.box_constraint``).

``_stats_kernel``: one program per (box, block of rows) sums pi_0(p)^p_exists
over the box's rows (stored) and columns (atomically added), and, at a class's
representative box, pi_0(p)^p_forall over the pixels outside all boxes of the
class. ``_grad_kernel``: one program per (image, class, tile) gathers each
pixel's gradient from the boxes covering it or from the outside sum.

Box geometry (clipped integer bounds, validity, representatives) comes from
PyTorch, so the kernels only read it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from wsseg_fast.kernels.fuzzy import lifted_power, lifted_power_grad


@triton.jit
def _in_box(bounds_ptr, rows, cols):
    x0 = tl.load(bounds_ptr)
    y0 = tl.load(bounds_ptr + 1)
    x1 = tl.load(bounds_ptr + 2)
    y1 = tl.load(bounds_ptr + 3)
    in_rows = (rows >= y0) & (rows < y1)
    in_cols = (cols >= x0) & (cols < x1)
    return in_rows, in_cols


@triton.jit
def _stats_kernel(
    probs_ptr,
    bounds_ptr,
    labels_ptr,
    valid_ptr,
    rep_ptr,
    lines_ptr,
    outside_ptr,
    count_ptr,
    N,
    C,
    H,
    W,
    p_forall,
    p_exists,
    STABLE: tl.constexpr,
    PF_IS_2: tl.constexpr,
    PE_IS_2: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    bk = tl.program_id(0)
    b = bk // N
    valid = tl.load(valid_ptr + bk) != 0
    rep = tl.load(rep_ptr + bk) != 0
    label = tl.load(labels_ptr + bk)
    c = tl.maximum(label, 0)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < H
    in_rows = _in_box(bounds_ptr + bk * 4, rows, rows)[0]
    acc_ty = lines_ptr.dtype.element_ty
    row_acc = tl.zeros([BLOCK_R], dtype=acc_ty)
    out_acc = tl.zeros([BLOCK_R], dtype=acc_ty)
    out_n = tl.zeros([BLOCK_R], dtype=acc_ty)
    plane = probs_ptr + (b * C + c).to(tl.int64) * H * W
    line = lines_ptr + bk.to(tl.int64) * (H + W)
    for x_start in range(0, W, BLOCK_W):
        cols = x_start + tl.arange(0, BLOCK_W)
        m = row_ok[:, None] & (cols < W)[None, :]
        p = tl.load(plane + rows[:, None] * W + cols[None, :], mask=m & valid, other=0.0).to(acc_ty)
        in_cols = _in_box(bounds_ptr + bk * 4, cols, cols)[1]
        in_k = m & in_rows[:, None] & in_cols[None, :]
        v = tl.where(in_k, lifted_power(p, p_exists, STABLE, PE_IS_2), 0.0)
        row_acc += tl.sum(v, axis=1)
        tl.atomic_add(line + H + cols, tl.sum(v, axis=0), mask=in_cols & (cols < W) & valid)
        # Outside the union of the class's boxes, at the representative only.
        covered = tl.zeros([BLOCK_R, BLOCK_W], dtype=tl.int32)
        for j in range(0, N):
            same = (tl.load(labels_ptr + b * N + j) == label) & (tl.load(valid_ptr + b * N + j) != 0)
            jr, jc = _in_box(bounds_ptr + (b * N + j) * 4, rows, cols)
            covered = tl.where(jr[:, None] & jc[None, :] & same, 1, covered)
        out = m & (covered == 0) & rep
        out_acc += tl.sum(tl.where(out, lifted_power(p, p_forall, STABLE, PF_IS_2), 0.0), axis=1)
        out_n += tl.sum(out.to(acc_ty), axis=1)
    tl.store(line + rows, row_acc, mask=row_ok & in_rows & valid)
    tl.atomic_add(outside_ptr + bk, tl.sum(out_acc, axis=0), mask=rep)
    tl.atomic_add(count_ptr + bk, tl.sum(out_n, axis=0), mask=rep)


@triton.jit
def _grad_kernel(
    grad_lines_ptr,
    grad_outside_ptr,
    probs_ptr,
    bounds_ptr,
    labels_ptr,
    valid_ptr,
    rep_ptr,
    grad_ptr,
    N,
    C,
    H,
    W,
    p_forall,
    p_exists,
    STABLE: tl.constexpr,
    PF_IS_2: tl.constexpr,
    PE_IS_2: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    bc = tl.program_id(0)
    b = bc // C
    c = bc % C
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    row_ok = rows < H
    col_ok = cols < W
    m = row_ok[:, None] & col_ok[None, :]
    acc_ty = grad_lines_ptr.dtype.element_ty
    coef = tl.zeros([BLOCK_R, BLOCK_W], dtype=acc_ty)
    covered = tl.zeros([BLOCK_R, BLOCK_W], dtype=tl.int32)
    g_out = tl.zeros([], dtype=acc_ty)
    has_out = tl.zeros([], dtype=tl.int32)  # the class has a representative: OUT reads the plane
    for j in range(0, N):
        bj = b * N + j
        hit = (tl.load(labels_ptr + bj) == c) & (tl.load(valid_ptr + bj) != 0)
        jr, jc = _in_box(bounds_ptr + bj * 4, rows, cols)
        line = grad_lines_ptr + bj.to(tl.int64) * (H + W)
        g_rows = tl.load(line + rows, mask=row_ok & jr & hit, other=0.0)
        g_cols = tl.load(line + H + cols, mask=col_ok & jc & hit, other=0.0)
        inside = m & jr[:, None] & jc[None, :] & hit
        coef += tl.where(inside, g_rows[:, None] + g_cols[None, :], 0.0)
        covered = tl.where(inside, 1, covered)
        rep = hit & (tl.load(rep_ptr + bj) != 0)
        g_out += tl.where(rep, tl.load(grad_outside_ptr + bj), 0.0)
        has_out = tl.where(rep, 1, has_out)
    offs = (bc.to(tl.int64) * H + rows[:, None]) * W + cols[None, :]
    p = tl.load(probs_ptr + offs, mask=m, other=0.0).to(acc_ty)
    # 0 on a plane the loss does not read (no box of class c), also where p is NaN there.
    grad = tl.where(
        covered != 0,
        coef * lifted_power_grad(p, p_exists, STABLE, PE_IS_2),
        tl.where(has_out != 0, g_out * lifted_power_grad(p, p_forall, STABLE, PF_IS_2), 0.0),
    )
    tl.store(grad_ptr + offs, grad.to(grad_ptr.dtype.element_ty), mask=m)


def _blocks(width: int) -> tuple[int, int]:
    return 16, min(128, triton.next_power_of_2(max(width, 1)))


def _acc_dtype(probs: torch.Tensor) -> torch.dtype:
    return torch.float64 if probs.dtype == torch.float64 else torch.float32


@triton_op("wsseg_fast::box_constraint_stats_triton", mutates_args=())
def box_constraint_stats_triton(
    probs: torch.Tensor,
    bounds: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    rep: torch.Tensor,
    p_forall: float,
    p_exists: float,
    stable: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """probs [B, C, H, W]; bounds [B, N, 4], labels, valid, rep [B, N] int32 ->
    (lines [B, N, H + W], outside [B, N], outside_count [B, N]) in float32 (float64 for float64 probs)."""
    batch, classes, height, width = probs.shape
    n = bounds.shape[1]
    acc = _acc_dtype(probs)
    lines = torch.zeros(batch, n, height + width, dtype=acc, device=probs.device)
    outside = torch.zeros(batch, n, dtype=acc, device=probs.device)
    count = torch.zeros(batch, n, dtype=acc, device=probs.device)
    if batch * n == 0 or probs.numel() == 0:
        return lines, outside, count
    block_r, block_w = _blocks(width)
    wrap_triton(_stats_kernel)[(batch * n, triton.cdiv(height, block_r))](
        probs.contiguous(),
        bounds.contiguous(),
        labels.contiguous(),
        valid.contiguous(),
        rep.contiguous(),
        lines,
        outside,
        count,
        n,
        classes,
        height,
        width,
        p_forall,
        p_exists,
        STABLE=stable,
        PF_IS_2=p_forall == 2.0,
        PE_IS_2=p_exists == 2.0,
        BLOCK_R=block_r,
        BLOCK_W=block_w,
    )
    return lines, outside, count


@triton_op("wsseg_fast::box_constraint_grad_triton", mutates_args=())
def box_constraint_grad_triton(
    grad_lines: torch.Tensor,
    grad_outside: torch.Tensor,
    probs: torch.Tensor,
    bounds: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    rep: torch.Tensor,
    p_forall: float,
    p_exists: float,
    stable: bool,
) -> torch.Tensor:
    """The gradient of probs from the gradients of the stats."""
    batch, classes, height, width = probs.shape
    n = bounds.shape[1]
    grad = torch.zeros_like(probs, memory_format=torch.contiguous_format)
    if probs.numel() == 0 or n == 0:
        return grad
    acc = _acc_dtype(probs)
    block_r, block_w = _blocks(width)
    grid = (batch * classes, triton.cdiv(height, block_r), triton.cdiv(width, block_w))
    wrap_triton(_grad_kernel)[grid](
        grad_lines.to(acc).contiguous(),
        grad_outside.to(acc).contiguous(),
        probs.contiguous(),
        bounds.contiguous(),
        labels.contiguous(),
        valid.contiguous(),
        rep.contiguous(),
        grad,
        n,
        classes,
        height,
        width,
        p_forall,
        p_exists,
        STABLE=stable,
        PF_IS_2=p_forall == 2.0,
        PE_IS_2=p_exists == 2.0,
        BLOCK_R=block_r,
        BLOCK_W=block_w,
    )
    return grad


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:5])
    ctx.params = inputs[5:]


def _backward(ctx, grad_lines, grad_outside, _grad_count):
    probs, bounds, labels, valid, rep = ctx.saved_tensors
    if grad_lines is None:
        grad_lines = probs.new_zeros(bounds.shape[0], bounds.shape[1], probs.shape[2] + probs.shape[3])
    if grad_outside is None:
        grad_outside = probs.new_zeros(bounds.shape[:2])
    grad = box_constraint_grad_triton(grad_lines, grad_outside, probs, bounds, labels, valid, rep, *ctx.params)
    return grad, None, None, None, None, None, None, None


box_constraint_stats_triton.register_autograd(_backward, setup_context=_setup_context)
