"""slic: the C++ `cpu` backend vs scikit-image's `slic` (the public peer) and the
plain-PyTorch reference, on scikit-image's photographs at 256^2 and 512^2, 200 segments.

Goal: cpu >= 10x scikit-image at 512^2 with a SLIC energy at most 5% above
scikit-image's on the same image. Each row records `energy_vs_skimage`; the cpu /
scikit-image time ratio is the ratio of their `speedup` columns in the report (the
`torch` reference runs once per group: it is slow at 512^2).

    pytest benchmarks/test_slic.py --benchmark-json=benchmarks/results/slic.json
    python benchmarks/report.py benchmarks/results/slic.json
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.conftest import impl_params, record
from wsseg_fast.ops import slic
from wsseg_fast.reference import slic_energy

N_SEGMENTS = 200
PHOTOS = ("astronaut", "coffee", "chelsea")


def photo(name: str, size: int) -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    transform = pytest.importorskip("skimage.transform")
    image = transform.resize(getattr(data, name)(), (size, size), anti_aliasing=True)
    return (image * 255).round().astype(np.uint8)


def skimage_slic(image: np.ndarray) -> np.ndarray:
    from skimage.segmentation import slic as sk_slic

    return sk_slic(image, N_SEGMENTS, compactness=10.0, start_label=0)


@pytest.mark.parametrize("size", [256, 512])
@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("impl", impl_params("slic", peers=("skimage",)))
def test_slic(benchmark, name, size, impl):
    image = photo(name, size)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
    record(benchmark, "slic", (name, size, size), impl)
    if impl == "skimage":
        labels = torch.from_numpy(benchmark(skimage_slic, image))[None]
    elif impl == "torch":
        labels = benchmark.pedantic(
            slic, args=(tensor, N_SEGMENTS), kwargs=dict(backend="torch"), rounds=1, iterations=1
        )
    else:
        labels = benchmark(slic, tensor, N_SEGMENTS, backend=impl)
    theirs = torch.from_numpy(skimage_slic(image))[None]
    ratio = (slic_energy(tensor, labels, N_SEGMENTS) / slic_energy(tensor, theirs, N_SEGMENTS)).item()
    benchmark.extra_info.update(energy_vs_skimage=ratio, segments=int(labels.max()) + 1)
    assert ratio <= 1.05
