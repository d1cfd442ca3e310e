"""pairwise_constraint_loss forward + backward: the fused CPU kernel vs the PyTorch reference
(which materialises a [B, C, 8, H, W] tensor of pairwise truths). Peak memory as `peak_bytes`.

    pytest benchmarks/test_pairwise_constraint.py --benchmark-json=benchmarks/results/pairwise_constraint.json
    python benchmarks/report.py benchmarks/results/pairwise_constraint.json
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import impl_params, record
from benchmarks.peak_memory import forward_backward, peak_allocated_bytes
from wsseg_fast.ops import pairwise_constraint_loss
from wsseg_fast.ops.color import rgb_to_lab

SHAPES = [(8, 21, 256, 256), (2, 3, 512, 512)]


def make_case(shape):
    """Smooth random images (blocky colours plus noise), so that many neighbours are similar."""
    batch, classes, height, width = shape
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(batch, 3, height // 32, width // 32, generator=g)
    images = torch.nn.functional.interpolate(coarse, size=(height, width), mode="nearest")
    images = (images + 0.01 * torch.rand(batch, 3, height, width, generator=g)).clamp(0, 1)
    return torch.rand(batch, classes, height, width, generator=g), rgb_to_lab(images)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", impl_params("pairwise_constraint_loss"))
def test_pairwise_constraint_loss(benchmark, shape, impl):
    probs, lab = make_case(shape)
    call = forward_backward(lambda x: pairwise_constraint_loss(x, lab=lab, backend=impl), probs)
    peak = peak_allocated_bytes(call)
    # peak_bytes counts the returned gradient, which every backend allocates; peak_extra_bytes
    # is the working memory above it.
    record(benchmark, "pairwise_constraint_loss", shape, impl, peak_bytes=peak, peak_extra_bytes=peak - probs.nbytes)
    loss, grad = benchmark(call)
    if impl != "torch":
        ref_loss, ref_grad = forward_backward(lambda x: pairwise_constraint_loss(x, lab=lab, backend="torch"), probs)()
        torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=0)
        torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=0)
