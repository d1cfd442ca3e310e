"""SLIC superpixels in plain PyTorch: the definition every backend follows.

The algorithm (Achanta et al.; the SSC paper's pre-processing, with
scikit-image's defaults):

1. Colour in CIELAB (:func:`wsseg_fast.ops.color.rgb_to_lab`, as scikit-image).
2. A regular grid of ``ny x nx`` cells with about ``n_segments`` cells
   (:func:`grid_shape`); each centre starts at the mean (Lab, y, x) of its
   cell's valid pixels. Cells without valid pixels have no centre.
3. Up to ``max_iter`` rounds of: every valid pixel joins the nearest centre
   among the 3x3 cells around its own cell (distance
   ``|dLab|^2 + (compactness / S)^2 |dyx|^2``, ties to the first in
   (dy, dx) order), then every centre moves to the mean of its pixels. Stops
   early when no label changes.
4. With ``enforce_connectivity``: components are traced in raster order
   (4-connectivity, :func:`connect_components`); a component reaching
   ``max_size`` pixels is cut there and the rest starts a new one, and one
   smaller than ``min_size`` joins the already-labelled neighbour whose centre
   is nearest to its mean.
5. Labels are renumbered 0..K-1 in the order of their first pixel in raster
   order; pixels outside ``mask`` get -1.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from wsseg_fast.ops.color import rgb_to_lab


def grid_shape(height: int, width: int, n_segments: int) -> tuple[int, int]:
    """Rows and columns of the initial grid: cells of side about sqrt(HW / n_segments)."""
    step = math.sqrt(height * width / n_segments)
    ny = min(height, max(1, round(height / step)))
    nx = min(width, max(1, round(width / step)))
    return ny, nx


def grid_step(height: int, width: int, ny: int, nx: int) -> float:
    """S of the spatial term: the larger side of a grid cell."""
    return max(height / ny, width / nx)


def _centres(feats: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean feature of each label (float64 sums, float32 result) and whether it has pixels."""
    valid = labels >= 0
    idx = labels[valid]
    sums = torch.zeros(k, feats.shape[0], dtype=torch.float64).index_add_(0, idx, feats[:, valid].T.double())
    counts = torch.bincount(idx, minlength=k)
    alive = counts > 0
    return (sums / counts.clamp_min(1).unsqueeze(1)).float(), alive


def slic_iterate(
    lab: torch.Tensor, mask: torch.Tensor, n_segments: int, compactness: float, max_iter: int
) -> tuple[torch.Tensor, int]:
    """Steps 2-3 for one image: ``lab`` ``[3, H, W]`` float32, ``mask`` ``[H, W]`` bool ->
    (``[H, W]`` int64 centre index per pixel, -1 outside the mask; number of grid cells)."""
    _, height, width = lab.shape
    ny, nx = grid_shape(height, width, n_segments)
    weight = (compactness / grid_step(height, width, ny, nx)) ** 2
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    cy, cx = yy * ny // height, xx * nx // width
    feats = torch.cat([lab, yy[None].float(), xx[None].float()]).reshape(5, -1)
    cells = ny * nx
    labels = torch.where(mask, cy * nx + cx, -1).flatten()
    centre, alive = _centres(feats, labels, cells)
    cy, cx = cy.flatten(), cx.flatten()
    for _ in range(max_iter):
        best = torch.full((height * width,), math.inf)
        new = torch.full((height * width,), -1, dtype=torch.long)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ny_, nx_ = cy + dy, cx + dx
                inside = (ny_ >= 0) & (ny_ < ny) & (nx_ >= 0) & (nx_ < nx)
                cand = torch.where(inside, ny_ * nx + nx_, 0)
                c = centre[cand]  # [HW, 5]
                colour = (feats[0] - c[:, 0]) ** 2 + (feats[1] - c[:, 1]) ** 2 + (feats[2] - c[:, 2]) ** 2
                space = (feats[3] - c[:, 3]) ** 2 + (feats[4] - c[:, 4]) ** 2
                dist = colour + weight * space
                better = inside & alive[cand] & (dist < best)
                best = torch.where(better, dist, best)
                new = torch.where(better, cand, new)
        new = torch.where(mask.flatten(), new, -1)
        if torch.equal(new, labels):
            break
        labels = new
        centre, alive = _centres(feats, labels, cells)
    return labels.view(height, width), cells, feats, centre, weight


def connect_components(
    labels: torch.Tensor, min_size: int, max_size: int, feats: torch.Tensor, centre: torch.Tensor, weight: float
) -> torch.Tensor:
    """Step 4 for one ``[H, W]`` map of centre indices (-1 = outside the mask), breadth-first in
    raster order. A small component joins the labelled neighbour whose centre (``centre``
    ``[cells, 5]``) is nearest to the component's mean feature (``feats`` ``[5, H*W]``), the
    choice that adds the least SLIC energy. Returns labels 0..K-1 in raster order of the first pixel."""
    height, width = labels.shape
    src = labels.flatten().tolist()
    out = [-1] * (height * width)
    source = []  # centre index of each final label
    next_label = 0
    for start in range(height * width):
        if src[start] < 0 or out[start] >= 0:
            continue
        label = src[start]
        out[start] = next_label
        component = [start]
        adjacent = set()
        queue = deque([start])
        while queue and len(component) < max_size:
            p = queue.popleft()
            y, x = divmod(p, width)
            for q, ok in ((p - width, y > 0), (p - 1, x > 0), (p + 1, x < width - 1), (p + width, y < height - 1)):
                if not ok:
                    continue
                if src[q] == label and out[q] < 0:
                    out[q] = next_label
                    component.append(q)
                    queue.append(q)
                    if len(component) >= max_size:
                        break
                elif out[q] >= 0 and out[q] != next_label:
                    adjacent.add(out[q])
        if len(component) < min_size and adjacent:
            mean = feats[:, component].double().mean(1)
            d2 = (centre[[source[a] for a in sorted(adjacent)]].double() - mean) ** 2
            dist = d2[:, :3].sum(1) + weight * d2[:, 3:].sum(1)
            best = sorted(adjacent)[int(torch.argmin(dist))]  # ties: the lowest label
            for q in component:
                out[q] = best
        else:
            source.append(label)
            next_label += 1
    return torch.tensor(out, dtype=torch.long).view(height, width)


def relabel_in_raster_order(labels: torch.Tensor) -> torch.Tensor:
    """Step 5 without connectivity: labels 0..K-1 by the raster order of their first pixel."""
    flat = labels.flatten()
    valid = flat >= 0
    values, inverse = torch.unique(flat[valid], return_inverse=True)
    first = torch.full((len(values),), flat.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.nonzero(valid).flatten(), "amin")
    rank = torch.empty_like(first)
    rank[torch.argsort(first)] = torch.arange(len(values))
    out = torch.full_like(flat, -1)
    out[valid] = rank[inverse]
    return out.view_as(labels)


def size_limits(valid_pixels: int, cells: int, min_size_factor: float, max_size_factor: float) -> tuple[int, int]:
    """scikit-image's bounds: factors of the mean segment size (valid pixels / grid cells)."""
    size = valid_pixels / max(cells, 1)
    return int(min_size_factor * size), max(1, int(max_size_factor * size))


def slic(
    images: torch.Tensor,
    n_segments: int = 100,
    *,
    compactness: float = 10.0,
    max_iter: int = 10,
    enforce_connectivity: bool = True,
    min_size_factor: float = 0.5,
    max_size_factor: float = 3.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, 3, H, W]`` RGB (uint8 or float in [0, 1]) -> ``[B, H, W]`` int32 labels
    (see the module docstring). Inputs are assumed checked by :func:`wsseg_fast.ops.slic`."""
    batch, _, height, width = images.shape
    out = torch.full((batch, height, width), -1, dtype=torch.int32)
    if images.numel() == 0:
        return out.to(images.device)
    lab = rgb_to_lab(images.cpu())
    masks = torch.ones(batch, height, width, dtype=torch.bool) if mask is None else mask.cpu().bool()
    for b in range(batch):
        labels, cells, feats, centre, weight = slic_iterate(lab[b], masks[b], n_segments, compactness, max_iter)
        if enforce_connectivity:
            lo, hi = size_limits(int(masks[b].sum()), cells, min_size_factor, max_size_factor)
            labels = connect_components(labels, lo, hi, feats, centre, weight)
        else:
            labels = relabel_in_raster_order(labels)
        out[b] = labels.int()
    return out.to(images.device)


def slic_energy(images: torch.Tensor, labels: torch.Tensor, n_segments: int, compactness: float = 10.0) -> torch.Tensor:
    """SLIC's objective per image, float64 ``[B]``: sum over pixels of ``|Lab - mean Lab|^2 +
    (compactness / S)^2 |yx - mean yx|^2`` to the mean of the pixel's segment, with
    ``S = sqrt(HW / n_segments)`` (the same S for any labelling, so energies compare).
    Pixels labelled -1 do not count."""
    batch, _, height, width = images.shape
    weight = compactness**2 * n_segments / (height * width)
    lab = rgb_to_lab(images.cpu()).double()
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    energies = torch.zeros(batch, dtype=torch.float64)
    for b in range(batch):
        feats = torch.cat([lab[b], yy[None].double(), xx[None].double()]).reshape(5, -1)
        lbl = labels[b].cpu().flatten().long()
        valid = lbl >= 0
        f, lbl = feats[:, valid], lbl[valid]
        if lbl.numel() == 0:
            continue
        k = int(lbl.max()) + 1
        sums = torch.zeros(k, 5, dtype=torch.float64).index_add_(0, lbl, f.T)
        mean = sums / torch.bincount(lbl, minlength=k).clamp_min(1).unsqueeze(1)
        d2 = (f.T - mean[lbl]) ** 2
        energies[b] = d2[:, :3].sum() + weight * d2[:, 3:].sum()
    return energies
