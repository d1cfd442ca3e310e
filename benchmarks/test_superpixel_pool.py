"""superpixel_pool (mean, max) and ssc_alignment_loss: the C++ `cpu` backend vs the
`torch` reference, at B=8, C=21, 256^2 with about 200 SLIC superpixels of real photographs.

Goal: superpixel_pool cpu >= 5x the torch reference. Both run with the same
torch thread count (recorded as `threads`).

    pytest benchmarks/test_superpixel_pool.py --benchmark-json=benchmarks/results/superpixel_pool.json
    python benchmarks/report.py benchmarks/results/superpixel_pool.json
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.conftest import impl_params, record
from wsseg_fast import reference
from wsseg_fast.ops import slic, ssc_alignment_loss, superpixel_pool

SHAPE = (8, 21, 256, 256)


@pytest.fixture(scope="module")
def inputs():
    data = pytest.importorskip("skimage.data")
    transform = pytest.importorskip("skimage.transform")
    photos = [
        torch.from_numpy(
            (transform.resize(getattr(data, n)(), SHAPE[2:], anti_aliasing=True) * 255).round().astype(np.uint8)
        )
        for n in ("astronaut", "coffee", "chelsea")
    ]
    images = torch.stack([photos[i % 3].permute(2, 0, 1) for i in range(SHAPE[0])])
    labels = slic(images, 200)
    cams = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    return cams, labels


@pytest.mark.parametrize("reduce", ["mean", "max"])
@pytest.mark.parametrize("impl", impl_params("superpixel_pool"))
def test_superpixel_pool(benchmark, inputs, reduce, impl):
    cams, labels = inputs
    record(benchmark, f"superpixel_pool_{reduce}", SHAPE, impl, kind="reference" if impl == "torch" else "backend")
    out = benchmark(superpixel_pool, cams, labels, reduce=reduce, backend=impl)
    torch.testing.assert_close(out, reference.superpixel_pool(cams, labels, reduce), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", impl_params("superpixel_pool"))
def test_ssc_alignment_loss_forward_backward(benchmark, inputs, impl):
    cams, labels = inputs
    record(benchmark, "ssc_alignment_loss", SHAPE, impl, kind="reference" if impl == "torch" else "backend")
    present = torch.rand(SHAPE[:2], generator=torch.Generator().manual_seed(1)) < 0.2

    def step():
        x = cams.clone().requires_grad_()
        loss = ssc_alignment_loss(x, labels, present=present, backend=impl)
        loss.backward()
        return loss.detach()

    loss = benchmark(step)
    expected = reference.ssc_alignment_loss(cams, labels, present)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)
