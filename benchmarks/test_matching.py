"""HungarianMatcher (one batched solver call) vs DETR's per-image SciPy matcher.

The `torch` row is the per-image reference loop (`wsseg_fast.reference.matching`);
`batched` is wsseg_fast.matching.HungarianMatcher with the auto backend. Both
build their own cost matrices, as they would in training.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import record
from wsseg_fast.matching import HungarianMatcher
from wsseg_fast.reference.matching import match_per_image

# (images, queries, classes): WPS-SAM's 25 queries; DETR's 100.
SHAPES = [(8, 25, 10), (64, 25, 10), (64, 100, 80)]


def make_batch(batch, queries, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(batch, queries, classes + 1, generator=g),
        "pred_prompts": torch.randn(batch, queries, 2, 256, generator=g),
    }
    sizes = torch.randint(1, min(queries, 20) + 1, (batch,), generator=g).tolist()
    targets = [
        {"labels": torch.randint(0, classes, (n,), generator=g), "prompts": torch.randn(n, 2, 256, generator=g)}
        for n in sizes
    ]
    return outputs, targets


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", ["torch", "batched"])
def test_hungarian_matcher(benchmark, shape, impl):
    outputs, targets = make_batch(*shape)
    record(benchmark, "hungarian_matcher", shape, impl, kind="reference" if impl == "torch" else "backend")
    matcher = HungarianMatcher()
    fn = (lambda: match_per_image(outputs, targets)) if impl == "torch" else (lambda: matcher(outputs, targets))
    pairs = benchmark(fn)
    assert [len(q) for q, _ in pairs] == [len(t["labels"]) for t in targets]
