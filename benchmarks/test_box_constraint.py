"""box_constraint_loss forward + backward: the fused CPU kernel vs the PyTorch reference.

Goal (CPU): cpu >= 3x faster and >= 4x lower peak allocated memory than
`torch`, with loss and gradient equal within 1e-5. Peak memory is recorded as
`peak_bytes` (benchmarks/peak_memory.py) for the report's ratio column.

    pytest benchmarks/test_box_constraint.py --benchmark-json=benchmarks/results/box_constraint.json
    python benchmarks/report.py benchmarks/results/box_constraint.json
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import impl_params, record
from benchmarks.peak_memory import forward_backward, peak_allocated_bytes
from wsseg_fast.ops import box_constraint_loss

# (B, C, H, W, boxes per image)
SHAPES = [(8, 21, 256, 256, 4), (2, 3, 512, 512, 2)]


def make_case(shape):
    """VOC-like: 4 random boxes of random classes; REFUGE-like: a disc box and a cup box inside it."""
    batch, classes, height, width, n = shape
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(batch, classes, height, width, generator=g)
    if classes == 3:  # background, disc, cup
        centre = torch.rand(batch, 1, 2, generator=g) * 0.4 + 0.3
        half = torch.tensor([[0.15], [0.07]]).expand(batch, 2, 1)
        boxes = torch.cat([centre - half, centre + half], dim=-1) * torch.tensor([width, height, width, height])
        labels = torch.tensor([1, 2]).expand(batch, 2)
    else:
        xy0 = torch.rand(batch, n, 2, generator=g) * torch.tensor([width, height]) * 0.7
        size = torch.rand(batch, n, 2, generator=g) * torch.tensor([width, height]) * 0.5 + 8
        boxes = torch.cat([xy0, xy0 + size], dim=-1)
        labels = torch.randint(0, classes, (batch, n), generator=g)
    return probs, boxes.double(), labels.long()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", impl_params("box_constraint_loss"))
def test_box_constraint_loss(benchmark, shape, impl):
    probs, boxes, labels = make_case(shape)
    call = forward_backward(lambda x: box_constraint_loss(x, boxes, labels, backend=impl), probs)
    peak = peak_allocated_bytes(call)
    # peak_bytes counts the returned gradient, which every backend allocates; peak_extra_bytes
    # is the working memory above it.
    record(benchmark, "box_constraint_loss", shape, impl, peak_bytes=peak, peak_extra_bytes=peak - probs.nbytes)
    loss, grad = benchmark(call)
    if impl != "torch":
        ref_loss, ref_grad = forward_backward(lambda x: box_constraint_loss(x, boxes, labels, backend="torch"), probs)()
        torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=0)
        torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=0)
