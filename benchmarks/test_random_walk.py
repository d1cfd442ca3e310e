"""random_walk: the sparse kernels vs PSA's dense formulation and the sparse
PyTorch reference.

Goal (CPU, this machine): `cpu` >= 100x the dense PSA walk at 64x64 (same
result within 1e-4 relative); 256x256 (a 16 GiB dense matrix) in a few
seconds with memory linear in H*W*K. `dense-psa` rows are the baseline to read
the ratio against (the report's `speedup` column is against `torch`, the
sparse shifted-view reference). `peak_mib` is the most tensor memory one cpu
call holds at once (benchmarks/peak_memory.py), `peak_over_inputs` the same
over the bytes of x and the affinities.
"""

from __future__ import annotations

import functools

import pytest
import torch

from benchmarks.conftest import impl_params, record
from benchmarks.peak_memory import peak_allocated_bytes
from wsseg_fast.ops import local_affinity, random_walk
from wsseg_fast.reference.random_walk import dense_random_walk

SHAPES = [(1, 21, 64, 64), (4, 21, 64, 64), (1, 21, 128, 128), (1, 21, 256, 256)]
RADIUS, STEPS, BETA = 5, 256, 8.0
SLOW = {  # impl -> shapes it is not run at, and why
    "dense-psa": (
        {(1, 21, 128, 128), (1, 21, 256, 256)},
        "the dense matrix is 1 GiB / 16 GiB and the squarings take hours",
    ),
    "torch": ({(1, 21, 256, 256)}, "minutes per call"),
}


@functools.cache
def make_inputs(shape):
    g = torch.Generator().manual_seed(0)
    batch, channels, height, width = shape
    cams = torch.rand(batch, channels, height, width, generator=g)
    features = torch.rand(batch, 3, height, width, generator=g)
    return cams, local_affinity(features, RADIUS, backend="torch")


@functools.cache
def dense_result(shape):
    return dense_random_walk(*make_inputs(shape), RADIUS, BETA, STEPS)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", impl_params("random_walk", peers=("dense-psa",)))
def test_random_walk(benchmark, shape, impl):
    skipped, why = SLOW.get(impl, (set(), ""))
    if shape in skipped:
        pytest.skip(why)
    cams, affinity = make_inputs(shape)
    record(benchmark, "random_walk", shape, impl, radius=RADIUS, steps=STEPS)
    if impl == "dense-psa":
        fn = lambda: dense_result.__wrapped__(shape)  # noqa: E731
    else:
        fn = lambda: random_walk(cams, affinity, RADIUS, beta=BETA, steps=STEPS, backend=impl)  # noqa: E731
    rounds = 3 if impl in ("cpu", "cuda", "triton") else 1
    out = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
    if impl == "cpu":  # tensor bytes the call holds at its peak, inputs excluded, against the inputs' bytes
        peak = peak_allocated_bytes(fn)
        inputs = cams.numel() * cams.element_size() + affinity.numel() * affinity.element_size()
        benchmark.extra_info.update(peak_mib=round(peak / 2**20, 1), peak_over_inputs=round(peak / inputs, 2))
    if impl != "dense-psa" and shape not in SLOW["dense-psa"][0]:  # the same result as PSA, within 1e-4 relative
        torch.testing.assert_close(out, dense_result(shape), rtol=1e-4, atol=1e-6)
