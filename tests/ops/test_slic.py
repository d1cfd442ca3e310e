"""slic: label properties on random, flat, striped and real images; every backend against
the reference; scikit-image as the public peer (energy bound, adjusted Rand index)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import backends_here, device_of
from wsseg_fast.ops import slic
from wsseg_fast.reference import slic_energy
from wsseg_fast.reference.slic import grid_shape

BACKENDS = backends_here("slic")
SIZE = 48


def real_images(size: int = SIZE) -> torch.Tensor:
    """scikit-image's astronaut, coffee and chelsea resized to size x size, uint8 [3, 3, size, size]."""
    data = pytest.importorskip("skimage.data")
    transform = pytest.importorskip("skimage.transform")
    out = []
    for name in ("astronaut", "coffee", "chelsea"):
        image = transform.resize(getattr(data, name)(), (size, size), anti_aliasing=True)
        out.append(torch.from_numpy((image * 255).round().astype(np.uint8)).permute(2, 0, 1))
    return torch.stack(out)


def synthetic(kind: str, size: int = SIZE) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if kind == "random":
        return torch.randint(0, 256, (2, 3, size, size + 5), dtype=torch.uint8, generator=g)
    if kind == "flat":
        return torch.full((1, 3, size, size), 120, dtype=torch.uint8)
    if kind == "striped":  # vertical stripes of 3 pixels, two colours
        image = torch.zeros(1, 3, size, size, dtype=torch.uint8)
        image[:, 0, :, (torch.arange(size) // 3) % 2 == 0] = 255
        return image
    return real_images(size)


def run(images: torch.Tensor, n_segments: int, backend: str, mask: torch.Tensor | None = None, **kwargs):
    """slic on the backend's device; labels back on the CPU."""
    device = device_of(backend)
    mask = None if mask is None else mask.to(device)
    return slic(images.to(device), n_segments, backend=backend, mask=mask, **kwargs).cpu()


def components(labels: np.ndarray) -> int:
    """Number of 4-connected components of equal label (-1 is background)."""
    measure = pytest.importorskip("skimage.measure")
    return int(measure.label(labels + 1, connectivity=1, background=0).max())


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """ARI of two labelings (Hubert & Arabie), from the contingency table."""
    a, b = a.ravel(), b.ravel()
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)

    def pairs(n):
        return (n * (n - 1) // 2).sum()

    index, rows, cols, total = pairs(table), pairs(table.sum(1)), pairs(table.sum(0)), pairs(np.array([len(a)]))
    expected = rows * cols / total
    return float((index - expected) / ((rows + cols) / 2 - expected))


def assert_valid_labels(labels: torch.Tensor, connected: bool = True, mask: torch.Tensor | None = None):
    assert labels.dtype == torch.int32
    for b in range(labels.shape[0]):
        lbl = labels[b].numpy()
        valid = np.ones_like(lbl, dtype=bool) if mask is None else mask[b].numpy()
        assert (lbl[~valid] == -1).all()
        k = lbl.max() + 1
        assert np.array_equal(np.unique(lbl[valid]), np.arange(k))  # contiguous 0..K-1
        first = [np.flatnonzero(lbl.ravel() == i)[0] for i in range(k)]
        assert first == sorted(first)  # numbered in raster order of the first pixel
        if connected:
            assert components(lbl) == k  # every label one 4-connected region


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["random", "flat", "striped", "real"])
def test_labels_contiguous_and_connected(backend, kind):
    images = synthetic(kind)
    labels = run(images, 30, backend)
    assert labels.shape == (images.shape[0], images.shape[2], images.shape[3])
    assert_valid_labels(labels)
    if kind == "flat":  # no colour: the grid itself
        ny, nx = grid_shape(SIZE, SIZE, 30)
        assert labels.max() + 1 == ny * nx


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_connectivity_labels_are_contiguous(backend):
    labels = run(synthetic("random"), 30, backend, enforce_connectivity=False)
    assert_valid_labels(labels, connected=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_agrees_with_scikit_image(backend, capsys):
    """Energy within 5% of scikit-image's (or below), and the adjusted Rand index is reported."""
    segmentation = pytest.importorskip("skimage.segmentation")
    images = real_images(64)
    labels = run(images, 60, backend)
    theirs = torch.stack(
        [
            torch.from_numpy(segmentation.slic(im.permute(1, 2, 0).numpy(), 60, compactness=10, start_label=0))
            for im in images
        ]
    )
    ours_e, theirs_e = slic_energy(images, labels, 60), slic_energy(images, theirs, 60)
    ari = [adjusted_rand_index(labels[b].numpy(), theirs[b].numpy()) for b in range(3)]
    with capsys.disabled():
        print(f"\n[slic {backend}] energy / scikit-image: {(ours_e / theirs_e).tolist()}  ARI: {ari}")
    assert (ours_e <= 1.05 * theirs_e).all()
    assert min(ari) > 0.4


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.values[0] != "torch"])
@pytest.mark.parametrize("connect", [True, False])
def test_backend_matches_reference(backend, connect):
    images = torch.cat([real_images(40), synthetic("random", 40)[:, :, :, :40]])
    mask = torch.ones(5, 40, 40, dtype=torch.bool)
    mask[1, :, 30:] = False
    mask[3, 5:9, :] = False
    kwargs = dict(enforce_connectivity=connect, mask=mask)
    ours = run(images, 25, backend, **kwargs)
    ref = slic(images, 25, backend="torch", **kwargs)
    agree = (ours == ref).float().mean().item()
    assert agree >= 0.99, agree


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_of_valid_pixels(backend):
    images = real_images(40)
    mask = torch.zeros(3, 40, 40, dtype=torch.bool)
    mask[0, 4:30, 2:38] = True  # padding around
    mask[1] = True
    mask[1, :, 20] = False  # a wall splits the image
    labels = run(images, 20, backend, mask=mask)
    assert_valid_labels(labels, mask=mask)
    assert (labels[2] == -1).all()  # nothing valid


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (2, 3, 0, 5), (1, 3, 1, 1), (1, 3, 1, 9), (2, 3, 3, 2)])
def test_empty_and_tiny(backend, shape):
    images = torch.randint(0, 256, shape, dtype=torch.uint8)
    labels = run(images, 10, backend)
    assert labels.shape == (shape[0], shape[2], shape[3]) and labels.dtype == torch.int32
    if labels.numel():
        assert_valid_labels(labels)
    if shape[2:] == (1, 1):
        assert labels.tolist() == [[[0]]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_input_like_uint8(backend):
    images = real_images(40)
    a = run(images, 25, backend)
    b = run(images.double() / 255, 25, backend)
    assert (a == b).float().mean() >= 0.99


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(images=torch.zeros(1, 3, 4, 4, dtype=torch.int16)), TypeError, "images"),
        (dict(images=torch.full((1, 3, 4, 4), 1.5)), ValueError, r"\[0, 1\]"),
        (dict(images=torch.full((1, 3, 4, 4), -0.1)), ValueError, r"\[0, 1\]"),
        (dict(images=torch.zeros(1, 4, 4, 4)), ValueError, r"\[B, 3, H, W\]"),
        (dict(images=torch.zeros(3, 4, 4, dtype=torch.uint8)), ValueError, r"\[B, 3, H, W\]"),
        (dict(images=np.zeros((1, 3, 4, 4))), TypeError, "images"),
        (dict(n_segments=0), ValueError, "n_segments"),
        (dict(n_segments=2.5), TypeError, "n_segments"),
        (dict(compactness=0), ValueError, "compactness"),
        (dict(max_iter=-1), ValueError, "max_iter"),
        (dict(mask=torch.ones(1, 4, 4)), TypeError, "mask"),
        (dict(mask=torch.ones(1, 4, 5, dtype=torch.bool)), ValueError, "mask"),
        (dict(backend="nope"), ValueError, "backend"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = dict(images=torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        slic(**args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_pixels_raise(backend):
    """A NaN colour has no superpixel: every backend raises, naming `images` (also under a mask)."""
    images = torch.rand(1, 3, 6, 7)
    images[0, 2, 3, 4] = float("nan")
    mask = torch.ones(1, 6, 7, dtype=torch.bool)
    mask[0, 3, 4] = False
    for kwargs in (dict(), dict(mask=mask)):
        with pytest.raises(ValueError, match="slic: `images` contains NaN"):
            run(images, 4, backend, **kwargs)


COMPILED = [b for b in BACKENDS if b.values[0] in ("cpu", "cuda")]


@pytest.mark.parametrize("backend", COMPILED)
def test_opcheck(backend):
    images = synthetic("real", 16)[:2].to(device_of(backend))
    mask = torch.ones(2, 16, 16, dtype=torch.bool, device=images.device)
    mask[0, :3] = False
    torch.library.opcheck(torch.ops.wsseg_fast.slic.default, (images.float() / 255, mask, 8, 5.0, 3, True, 0.5, 3.0))


@pytest.mark.parametrize("backend", COMPILED)
def test_torch_compile_fullgraph(backend):
    images = synthetic("real", 24).to(device_of(backend))
    compiled = torch.compile(lambda im: slic(im, 12, backend=backend), fullgraph=True, backend="eager")
    assert torch.equal(compiled(images), slic(images, 12, backend=backend))


@pytest.mark.cuda
@pytest.mark.parametrize("connect", [True, False])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_cuda_matches_cpu(connect, dtype):
    """The CUDA kernel against the CPU kernel on a batch of real and random images at
    128^2, with a mask: the same labels up to float rounding (the GPU fuses
    multiply-adds), so nearly every pixel agrees and the SLIC energy is the same to 1%."""
    images = torch.cat([real_images(128), synthetic("random", 128)[:, :, :, :128]])
    if dtype == torch.float32:
        images = images.float() / 255
    mask = torch.ones(5, 128, 128, dtype=torch.bool)
    mask[1, :, 100:] = False
    mask[3, 20:30, :] = False
    kwargs = dict(enforce_connectivity=connect, mask=mask)
    cpu = slic(images, 100, backend="cpu", **kwargs)
    cuda = run(images, 100, "cuda", **kwargs)
    assert cuda.dtype == torch.int32 and cuda.shape == cpu.shape
    assert_valid_labels(cuda, connected=connect, mask=mask)
    assert (cuda == cpu).float().mean().item() >= 0.99
    ours, theirs = slic_energy(images, cuda, 100), slic_energy(images, cpu, 100)
    assert ((ours - theirs).abs() <= 0.01 * theirs).all(), (ours, theirs)


@pytest.mark.cuda
def test_cuda_is_the_auto_choice_on_cuda_tensors():
    images = real_images(32)
    labels = slic(images.cuda(), 20)  # auto
    assert labels.is_cuda
    assert (labels.cpu() == slic(images, 20, backend="cpu")).float().mean() >= 0.99
