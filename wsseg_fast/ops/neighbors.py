"""Neighbourhood stencils shared by every local op (affinities, random walk,
the pairwise colour prior): one definition of the offsets and their order.

The C++/CUDA cores read the same table from ``csrc/include/wsseg/neighbors.h``
(``disc_offset``), tested to agree with :func:`neighbor_offsets`.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def disc_offsets(radius: int) -> tuple[tuple[int, int], ...]:
    """:func:`neighbor_offsets` as a tuple of ``(dy, dx)`` Python ints: what
    loops over the stencil use, so that tracing (``torch.compile``, fake
    tensors) never sees a data-dependent ``.tolist()``."""
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
        raise ValueError(f"neighbor_offsets: `radius` must be an int >= 1, got {radius!r}")
    span = range(-radius + 1, radius)
    return tuple((dy, dx) for dy in span for dx in span if dy * dy + dx * dx < radius * radius)


def neighbor_offsets(radius: int) -> torch.Tensor:
    """All ``(dy, dx)`` with ``dy**2 + dx**2 < radius**2``, ``(0, 0)`` included.

    Order: ``dy`` ascending, then ``dx`` ascending (row-major over the disc).
    ``radius=1`` gives just ``(0, 0)``; ``radius=5`` gives 69 offsets (PSA/IRN's
    neighbourhood). Returns ``LongTensor [K, 2]``.
    """
    return torch.tensor(disc_offsets(radius), dtype=torch.long)


def dilated_offsets(kernel_size: int = 3, dilation: int = 2, *, include_center: bool = False) -> torch.Tensor:
    """Offsets of a ``kernel_size x kernel_size`` window with ``dilation``
    (BoxInst's pairwise neighbourhood: 3x3, dilation 2 -> 8 offsets), row-major.
    Returns ``LongTensor [K, 2]``."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"dilated_offsets: `kernel_size` must be odd and >= 1, got {kernel_size}")
    if dilation < 1:
        raise ValueError(f"dilated_offsets: `dilation` must be >= 1, got {dilation}")
    half = kernel_size // 2
    span = [k * dilation for k in range(-half, half + 1)]
    return torch.tensor(
        [(dy, dx) for dy in span for dx in span if include_center or (dy, dx) != (0, 0)], dtype=torch.long
    )


def shifted(x: torch.Tensor, dy: int, dx: int, fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``x[..., y + dy, x + dx]`` at every ``(y, x)`` and a ``[H, W]`` bool mask of
    where that neighbour is inside the image (elsewhere the value is ``fill``).
    The building block of the sparse pure-PyTorch references."""
    h, w = x.shape[-2:]
    out = torch.full_like(x, fill)
    valid = torch.zeros(h, w, dtype=torch.bool, device=x.device)
    ys, ye = max(0, -dy), min(h, h - dy)
    xs, xe = max(0, -dx), min(w, w - dx)
    if ys < ye and xs < xe:
        out[..., ys:ye, xs:xe] = x[..., ys + dy : ye + dy, xs + dx : xe + dx]
        valid[ys:ye, xs:xe] = True
    return out, valid
