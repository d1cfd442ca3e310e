"""The CAM classifier's training data: the tagged images of a COCO set, their SAM embeddings
(through the shared cache) or ResNet inputs, and what the SSC and WeakMedSAM terms need
(letterboxed images, superpixels, k-means sub-class labels)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from wsseg_fast.errors import DataError, UserError
from wsseg_fast.models.cam import RESNET_STRIDE, imagenet_normalize, valid_cells
from wsseg_fast.ops import slic


def tagged_images(dataset) -> tuple[list[int], torch.Tensor]:
    """Indices of the images with tags and their ``[N, C]`` multi-hot targets (C = foreground classes).
    Tags outside the categories are an error; so is a dataset with no tags at all."""
    indices, rows = [], []
    for i, record in enumerate(dataset.images):
        if not record.tags:
            continue
        row = torch.zeros(dataset.num_classes - 1)
        for tag in record.tags:
            if tag not in dataset.class_index:
                raise DataError(
                    f"image {record.file_name}: tag {tag} is not a category id "
                    f"(categories: {sorted(dataset.class_index)})"
                )
            row[dataset.class_index[tag] - 1] = 1
        indices.append(i)
        rows.append(row)
    if not indices:
        raise DataError(f"{dataset.annotation_file}: no image has 'tags' (category ids); train-cam needs image tags")
    return indices, torch.stack(rows)


def embed_dataset(engine, dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, D, g, g]`` float32 embeddings (from the cache where present) and ``[N, 1, g, g]`` valid-cell masks."""
    features, masks = [], []
    for i in indices:
        emb = engine.embed([dataset.load_image(dataset.images[i])])[0]
        features.append(emb.tensor.float())
        masks.append(cell_mask(emb.input_size, engine.img_size, emb.tensor.shape[-1]))
    return torch.stack(features), torch.stack(masks)


def cell_mask(input_size: tuple[int, int], img_size: int, grid: int) -> torch.Tensor:
    """``[1, g, g]``: 1 on the feature cells covering the resized image, 0 on the padding."""
    rows, cols = valid_cells(input_size, img_size, grid)
    valid = torch.zeros(1, grid, grid)
    valid[:, :rows, :cols] = 1
    return valid


def letterbox(image: np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 ``[H, W, 3]`` -> float ``[3, size, size]`` in [0, 1]: the longest side resized to
    ``size`` and zeros below and right (as SAM resizes and pads), and the ``(rows, cols)`` of the image."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[2:]
    scale = size / max(h, w)
    rh, rw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    out = torch.zeros(3, size, size)
    out[:, :rh, :rw] = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False)[0].clamp(0, 1)
    return out, (rh, rw)


def letterboxed(dataset, indices: list[int], size: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """:func:`letterbox` of every image: ``[N, 3, size, size]`` and their sizes."""
    pairs = [letterbox(dataset.load_image(dataset.images[i]), size) for i in indices]
    return torch.stack([p[0] for p in pairs]), [p[1] for p in pairs]


def resnet_input(image: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ResNet-50 backbone's input ``[3, size, size]`` (ImageNet-normalised, zero padding) and
    its ``[1, g, g]`` valid cells (g = size / 32)."""
    x, input_size = letterbox(image, size)
    x = imagenet_normalize(x[None])[0]
    x[:, input_size[0] :] = 0
    x[:, :, input_size[1] :] = 0
    return x, cell_mask(input_size, size, size // RESNET_STRIDE)


def image_superpixels(images: torch.Tensor, sizes: list[tuple[int, int]], n_segments: int) -> torch.Tensor:
    """``[N, s, s]`` SLIC labels of letterboxed images (-1 on the padding); computed once per
    training run, not per epoch."""
    out = torch.full(images.shape[:1] + images.shape[2:], -1, dtype=torch.int64)
    for j, (rh, rw) in enumerate(sizes):
        out[j, :rh, :rw] = slic(images[j : j + 1, :, :rh, :rw], n_segments).long()[0]
    return out


def pixel_mask(sizes: list[tuple[int, int]], size: int) -> torch.Tensor:
    """``[N, 1, size, size]``: 1 on each letterboxed image, 0 on its padding."""
    out = torch.zeros(len(sizes), 1, size, size)
    for j, (rh, rw) in enumerate(sizes):
        out[j, :, :rh, :rw] = 1
    return out


def subclass_targets(pooled: torch.Tensor, targets: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """WeakMedSAM's sub-class exploration: per class, k-means (scikit-learn, ``k`` clusters or
    fewer when the class has fewer positive images) on the pooled features of its positive
    images -> ``[N, C*k]`` multi-hot sub-class labels (class c's clusters are columns c*k..c*k+k-1)."""
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        raise UserError("--subclasses needs scikit-learn (pip install scikit-learn)") from None
    out = torch.zeros(len(targets), targets.shape[1] * k)
    data = pooled.double().numpy()
    for c in range(targets.shape[1]):
        rows = torch.nonzero(targets[:, c]).flatten()
        if len(rows) == 0:
            continue
        n = min(k, len(rows))
        clusters = (
            KMeans(n_clusters=n, n_init=10, random_state=seed).fit_predict(data[rows.numpy()])
            if n > 1
            else np.zeros(1, int)
        )
        out[rows, c * k + torch.as_tensor(clusters, dtype=torch.long)] = 1
    return out
