"""References of ``random_walk``, in two formulations of the same walk:

- the *sparse* one (``[B, K, H, W]`` affinities over the disc stencil of
  :func:`~wsseg_fast.ops.neighbors.neighbor_offsets`, one shifted view per
  offset): the ``torch`` backend, differentiable by autograd;
- the *dense* one of PSA/IRN (an ``HW x HW`` matrix, column-normalised and
  raised to the power ``steps`` by repeated squaring): used only by tests and
  benchmarks, as the ground truth and the baseline the kernels must beat.
"""

from __future__ import annotations

import torch

from wsseg_fast.ops.neighbors import disc_offsets, neighbor_offsets, shifted


def valid_neighbors(radius: int, height: int, width: int, device=None) -> torch.Tensor:
    """``[K, H, W]`` bool: whether pixel ``(y, x)``'s neighbour ``k`` is inside the image."""
    ys = torch.arange(height, device=device).view(1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, width)
    off = neighbor_offsets(radius).to(device)
    dy, dx = off[:, 0].view(-1, 1, 1), off[:, 1].view(-1, 1, 1)
    return (ys + dy >= 0) & (ys + dy < height) & (xs + dx >= 0) & (xs + dx < width)


def transition(affinity: torch.Tensor, radius: int, beta: float) -> torch.Tensor:
    """The row-normalised walk ``W = D^-1 A^beta`` in the sparse layout
    ``[B, K, H, W]``: out-of-image entries are dropped, each pixel's weights sum
    to 1 (or are all 0 when every affinity of the pixel is 0)."""
    valid = valid_neighbors(radius, *affinity.shape[-2:], device=affinity.device)
    powered = torch.where(valid, affinity.pow(beta), 0.0)
    degree = powered.sum(1, keepdim=True)
    return powered / degree.clamp_min(torch.finfo(powered.dtype).tiny)


def walk(x: torch.Tensor, weights: torch.Tensor, radius: int, steps: int) -> torch.Tensor:
    """``steps`` times ``x(i) <- sum_k W[k, i] x(i + off_k)`` with the normalised ``weights``."""
    offsets = disc_offsets(radius)
    for _ in range(steps):
        out = torch.zeros_like(x)
        for k, (dy, dx) in enumerate(offsets):
            out = out + weights[:, k : k + 1] * shifted(x, dy, dx)[0]
        x = out
    return x


def random_walk(
    x: torch.Tensor, affinity: torch.Tensor, radius: int, beta: float = 8.0, steps: int = 256
) -> torch.Tensor:
    """The sparse walk ``x <- D^-1 A^beta x``, ``steps`` times."""
    return walk(x, transition(affinity, radius, beta), radius, steps)


def dense_affinity(affinity: torch.Tensor, radius: int) -> torch.Tensor:
    """``[B, K, H, W]`` -> ``[B, HW, HW]`` with ``M[b, i, j] = affinity[b, k, i]``
    where ``j = i + off_k`` (zero elsewhere and for out-of-image neighbours)."""
    batch, _, height, width = affinity.shape
    n = height * width
    valid = valid_neighbors(radius, height, width, device=affinity.device)
    off = neighbor_offsets(radius).to(affinity.device)
    pixel = torch.arange(n, device=affinity.device).view(1, height, width)
    neighbor = pixel + (off[:, 0] * width + off[:, 1]).view(-1, 1, 1)
    rows, cols = pixel.expand_as(valid)[valid], neighbor[valid]
    dense = affinity.new_zeros(batch, n, n)
    dense[:, rows, cols] = affinity[:, valid]
    return dense


def dense_random_walk(
    x: torch.Tensor, affinity: torch.Tensor, radius: int, beta: float = 8.0, steps: int = 256
) -> torch.Tensor:
    """PSA's formulation, densely: ``trans = A^beta`` laid out as PSA does
    (column ``i`` holds pixel ``i``'s affinities), column-normalised, raised to
    ``steps`` by repeated squaring, and ``cam_vec @ trans``. Memory ``O((HW)^2)``,
    time ``O((HW)^3 log steps)``: a test oracle and benchmark baseline only."""
    batch, channels, height, width = x.shape
    trans = dense_affinity(affinity, radius).pow(beta).transpose(1, 2)
    trans = trans / trans.sum(1, keepdim=True).clamp_min(torch.finfo(trans.dtype).tiny)
    power = None  # trans ** steps by binary exponentiation (PSA: steps = 2**logt, pure squaring)
    while steps:
        if steps & 1:
            power = trans if power is None else power @ trans
        steps >>= 1
        if steps:
            trans = trans @ trans
    cam_vec = x.reshape(batch, channels, height * width)
    out = cam_vec if power is None else cam_vec @ power
    return out.reshape(x.shape)
