"""Triton kernel of ``local_affinity``: one program per (image, block of pixels),
looping over the K offsets of the disc and the D feature channels.

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from wsseg_fast.ops.neighbors import neighbor_offsets

BLOCK = 128


@triton.jit
def neighbor(off_ptr, k, y, x, inside, height, width):
    """Flat index of the k-th neighbour (offsets_table order) of pixels (y, x), and
    whether it lies inside the image (for pixels that are ``inside`` themselves)."""
    ny = y + tl.load(off_ptr + 2 * k)
    nx = x + tl.load(off_ptr + 2 * k + 1)
    valid = inside & (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
    return ny * width + nx, valid


@triton.jit
def _local_affinity_kernel(
    f_ptr, off_ptr, out_ptr, depth, height, width, n_offsets, SQUARED: tl.constexpr, BLOCK: tl.constexpr
):
    b = tl.program_id(0).to(tl.int64)
    hw = height * width
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = p < hw
    y = p // width
    x = p % width
    f_base = f_ptr + b * depth * hw
    out_base = out_ptr + b * n_offsets * hw
    for k in range(n_offsets):
        q, valid = neighbor(off_ptr, k, y, x, inside, height, width)
        acc = tl.zeros([BLOCK], dtype=f_ptr.dtype.element_ty)
        for d in range(depth):
            a = tl.load(f_base + d * hw + p, mask=inside, other=0)
            c = tl.load(f_base + d * hw + q, mask=valid, other=0)
            diff = a - c
            if SQUARED:
                acc += diff * diff
            else:
                acc += tl.abs(diff)
        value = tl.where(valid, tl.exp(-(acc / depth)), 0.0)
        tl.store(out_base + k * hw + p, value.to(out_ptr.dtype.element_ty), mask=inside)


def offsets_table(radius: int, device) -> torch.Tensor:
    """``neighbor_offsets(radius)`` as a flat int32 (dy, dx, dy, dx, ...) table."""
    return neighbor_offsets(radius).to(device=device, dtype=torch.int32).reshape(-1)


@triton_op("wsseg_fast::local_affinity_triton", mutates_args=())
def local_affinity_triton(features: torch.Tensor, radius: int, squared: bool) -> torch.Tensor:
    batch, depth, height, width = features.shape
    offsets = offsets_table(radius, features.device)
    n_offsets = offsets.numel() // 2
    out = features.new_empty(batch, n_offsets, height, width)
    if out.numel() == 0:
        return out
    grid = (batch, triton.cdiv(height * width, BLOCK))
    wrap_triton(_local_affinity_kernel)[grid](
        features, offsets, out, depth, height, width, n_offsets, SQUARED=squared, BLOCK=BLOCK
    )
    return out
