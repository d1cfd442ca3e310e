"""batch_linear_assignment: the CPU kernel vs SciPy (the `torch` reference, one
problem at a time as DETR-style matchers do) and `lap.lapjv` in a loop.

Goal: cpu >= 10x the SciPy loop at (64, 25, 20), >= 3x at
(208, 300, 300), with identical total costs.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch

from benchmarks.conftest import impl_params, record
from wsseg_fast.ops import batch_linear_assignment

SHAPES = [(1, 25, 20), (8, 25, 20), (64, 25, 20), (64, 100, 10), (208, 300, 100), (208, 300, 300)]


def lapjv_loop(cost: torch.Tensor) -> torch.Tensor:
    import lap

    batch, workers, _ = cost.shape
    out = torch.full((batch, workers), -1, dtype=torch.long)
    array = cost.double().numpy()
    for b in range(batch):
        _, x, _ = lap.lapjv(array[b], extend_cost=True)
        out[b] = torch.from_numpy(x.astype(np.int64))
    return out


def total(cost: torch.Tensor, assignment: torch.Tensor) -> np.ndarray:
    mask = assignment >= 0
    b, w = mask.nonzero(as_tuple=True)
    return np.bincount(b.numpy(), weights=cost[b, w, assignment[mask]].double().numpy(), minlength=len(cost))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", impl_params("batch_linear_assignment", peers=("lap",)))
def test_batch_linear_assignment(benchmark, shape, impl):
    cost = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    record(benchmark, "batch_linear_assignment", shape, impl)
    if impl == "lap":
        pytest.importorskip("lap")
        fn = lambda: lapjv_loop(cost)  # noqa: E731
    else:
        fn = lambda: batch_linear_assignment(cost, backend=impl)  # noqa: E731
    assignment = benchmark(fn)
    expected = np.array(
        [
            cost[b].double().numpy()[scipy.optimize.linear_sum_assignment(cost[b].double().numpy())].sum()
            for b in range(shape[0])
        ]
    )
    np.testing.assert_allclose(total(cost, assignment), expected, rtol=1e-12)


def single_problem_overhead(problems: int = 256, repeat: int = 15) -> None:
    """B=1 per-call cost, side by side: SciPy, the wrapper (fast and generic paths), the bare op.
    Each callable solves the same ``problems`` different 25x20 problems (one fixed problem
    can be easier or harder than most); best of ``repeat`` passes, in µs per call."""
    import time

    cost = torch.rand(problems, 25, 20, generator=torch.Generator().manual_seed(0))
    singles = [cost[b : b + 1].clone() for b in range(problems)]
    arrays = [c[0].double().numpy() for c in singles]
    op = torch.ops.wsseg_fast.batch_linear_assignment.default
    calls = [
        ("scipy.optimize.linear_sum_assignment (float64 array)", scipy.optimize.linear_sum_assignment, arrays),
        (
            "scipy.optimize.linear_sum_assignment (the float32 tensor)",
            lambda c: scipy.optimize.linear_sum_assignment(c[0]),
            singles,
        ),
        ("batch_linear_assignment (auto, fast path)", batch_linear_assignment, singles),
        (
            "batch_linear_assignment (backend='cpu', generic path)",
            lambda c: batch_linear_assignment(c, backend="cpu"),
            singles,
        ),
        ("torch.ops.wsseg_fast.batch_linear_assignment alone", lambda c: op(c, False, True), singles),
    ]
    print(f"B=1, {problems} different 25x20 float32 problems, {torch.get_num_threads()} thread(s):")
    for name, fn, inputs in calls:
        best = float("inf")
        for _ in range(repeat):
            began = time.perf_counter()
            for x in inputs:
                fn(x)
            best = min(best, (time.perf_counter() - began) / problems)
        print(f"  {name}: {best * 1e6:.2f} us per call")


if __name__ == "__main__":
    single_problem_overhead()
