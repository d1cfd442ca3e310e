"""batch_linear_assignment: every backend against SciPy (the reference)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch

from tests.helpers import backends_here, compile_triton_for_gpu, device_of, skip_unless_available
from wsseg_fast.ops import BackendUnavailableError, assignment_to_indices, batch_linear_assignment

BACKENDS = backends_here("batch_linear_assignment")
# The interpreter runs Triton kernels in Python: fewer problems there.
PROBLEMS = {"torch": 300, "cpu": 3000, "triton": 60, "cuda": 3000}


def solve(cost: torch.Tensor, backend: str, **kwargs) -> torch.Tensor:
    """batch_linear_assignment on the backend's device; the result comes back to the CPU."""
    return batch_linear_assignment(cost.to(device_of(backend)), backend=backend, **kwargs).cpu()


def total_cost(cost: torch.Tensor, assignment: torch.Tensor) -> np.ndarray:
    """Sum of the chosen entries of each problem, in float64."""
    cost = cost.detach().cpu().double().numpy()
    assignment = assignment.cpu().numpy()
    totals = np.zeros(cost.shape[0])
    for b in range(cost.shape[0]):
        rows = np.nonzero(assignment[b] >= 0)[0]
        totals[b] = cost[b, rows, assignment[b, rows]].sum()
    return totals


def scipy_totals(cost: torch.Tensor, maximize: bool = False) -> np.ndarray:
    array = cost.detach().cpu().double().numpy()
    out = np.zeros(len(array))
    for b in range(len(array)):
        rows, cols = scipy.optimize.linear_sum_assignment(array[b], maximize=maximize)
        out[b] = array[b, rows, cols].sum()
    return out


def assert_valid_matching(assignment: torch.Tensor, workers: int, tasks: int):
    assert assignment.dtype == torch.long and assignment.shape[1] == workers
    for row in assignment.cpu():
        matched = row[row >= 0]
        assert len(matched) == min(workers, tasks)
        assert len(set(matched.tolist())) == len(matched)  # one worker per task
        assert all(0 <= t < tasks for t in matched.tolist())


def random_problems(kind: str, n: int, workers: int, tasks: int, generator: torch.Generator) -> torch.Tensor:
    if kind == "float":
        return torch.rand(n, workers, tasks, generator=generator) * 100 - 50
    if kind == "int-ties":  # few distinct values: many optimal matchings
        return torch.randint(0, 4, (n, workers, tasks), generator=generator)
    if kind == "int-wide":
        return torch.randint(-(10**6), 10**6, (n, workers, tasks), generator=generator)
    raise ValueError(kind)


SHAPES = [(1, 1), (4, 4), (3, 7), (7, 3), (20, 25), (25, 20), (16, 16), (10, 60), (60, 10)]


HEAVY = pytest.mark.interpreter_heavy  # its triton case joins the slow step under the interpreter


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kind", ["float", pytest.param("int-ties", marks=HEAVY), pytest.param("int-wide", marks=HEAVY)]
)
def test_optimal_total_cost_matches_scipy(backend, kind):
    generator = torch.Generator().manual_seed({"float": 10, "int-ties": 11, "int-wide": 12}[kind])
    per_shape = max(PROBLEMS[backend] // len(SHAPES), 2)
    for workers, tasks in SHAPES:
        cost = random_problems(kind, per_shape, workers, tasks, generator)
        assignment = solve(cost, backend)
        assert_valid_matching(assignment, workers, tasks)
        np.testing.assert_array_equal(total_cost(cost, assignment), scipy_totals(cost))


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_square_problems(backend):
    if backend == "triton":
        pytest.skip("too slow under the interpreter; the GPU compile test covers the kernel")
    cost = torch.rand(3, 150, 150, generator=torch.Generator().manual_seed(1))
    assignment = solve(cost, backend)
    np.testing.assert_allclose(total_cost(cost, assignment), scipy_totals(cost), rtol=0, atol=1e-9)


@HEAVY
@pytest.mark.parametrize("backend", BACKENDS)
def test_maximize(backend):
    cost = torch.rand(40, 6, 9, generator=torch.Generator().manual_seed(2))
    for c in (cost, cost.transpose(1, 2)):
        assignment = solve(c, backend, maximize=True)
        np.testing.assert_allclose(total_cost(c, assignment), scipy_totals(c, maximize=True), atol=1e-9)


@HEAVY
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_forbidden_pairs(backend, dtype):
    """+inf (the largest int64 for integers) forbids a pair; feasible problems keep
    SciPy's optimum, the others raise or give -1 rows."""
    if backend == "triton" and dtype == torch.int64:
        pytest.skip("the interpreter runs the float problems; integer costs share the kernel's code")
    generator = torch.Generator().manual_seed(3)
    n = 40 if backend == "triton" else 400
    for workers, tasks in [(5, 5), (4, 7), (7, 4), (16, 16)]:
        cost = torch.rand(n, workers, tasks, generator=generator)
        forbidden = torch.rand(cost.shape, generator=generator) < (0.35 if workers < 16 else 0.1)
        if dtype == torch.int64:
            cost = (cost * 8).long().masked_fill(forbidden, torch.iinfo(torch.int64).max)
        else:
            cost[forbidden] = float("inf")
        assignment = solve(cost, backend, check=False)
        array = cost.double().masked_fill(forbidden, float("inf")).numpy()
        for b in range(n):
            try:
                rows, cols = scipy.optimize.linear_sum_assignment(array[b])
            except ValueError:  # infeasible
                assert (assignment[b] == -1).all()
                continue
            got = total_cost(torch.from_numpy(array[b : b + 1]), assignment[b][None])[0]
            assert np.isfinite(got)
            assert got == pytest.approx(array[b, rows, cols].sum(), abs=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_problems_raise_with_batch_index(backend):
    cost = torch.rand(4, 5, 5)
    cost[2, 1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"cost\[2\] contains NaN or -inf"):
        solve(cost, backend)
    cost = torch.rand(4, 5, 5)
    cost[3, 0, 0] = -float("inf")
    with pytest.raises(ValueError, match=r"cost\[3\] contains NaN or -inf"):
        solve(cost, backend)
    cost = torch.rand(4, 3, 5)
    cost[1, :, :3] = float("inf")  # three workers, two usable tasks
    with pytest.raises(ValueError, match=r"cost\[1\] is infeasible"):
        solve(cost, backend)
    # With maximize, -inf forbids and +inf is invalid (SciPy's convention).
    cost = torch.rand(2, 3, 3)
    cost[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"cost\[1\] contains NaN or \+inf"):
        solve(cost, backend, maximize=True)
    # check=False: the bad problem's row is -1, the others are solved.
    cost = torch.rand(3, 4, 4)
    cost[1, 2, 2] = float("nan")
    out = solve(cost, backend, check=False)
    assert (out[1] == -1).all() and (out[[0, 2]] >= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4), (2, 3, 0), (0, 0, 0)])
def test_empty(backend, shape):
    out = solve(torch.rand(shape), backend)
    assert out.shape == shape[:2] and out.dtype == torch.long
    assert (out == -1).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend):
    base = torch.rand(12, 9, 14, generator=torch.Generator().manual_seed(4))
    for view in (base.transpose(1, 2), base[::2, 1::2, ::3], base.permute(2, 1, 0)[:6]):
        assert not view.is_contiguous()
        assignment = solve(view, backend)
        np.testing.assert_allclose(total_cost(view, assignment), scipy_totals(view), atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int16, torch.uint8, torch.bool]
)
def test_dtypes(backend, dtype):
    generator = torch.Generator().manual_seed(5)
    cost = (torch.rand(20, 6, 8, generator=generator) * 10).to(dtype)
    assignment = solve(cost, backend)
    promoted = cost.float() if dtype in (torch.float16, torch.bfloat16) else cost.double()
    np.testing.assert_allclose(total_cost(promoted, assignment), scipy_totals(promoted), atol=1e-9)


def test_integer_costs_are_exact():
    # Values near 2^53 lose precision in float64, not in the int64 solver.
    base = 2**53
    cost = torch.tensor([[[base + 1, base + 2], [base + 2, base + 4]]], dtype=torch.int64)
    # Totals: (0,0)+(1,1) = 2^54 + 5 ; (0,1)+(1,0) = 2^54 + 4 -> the anti-diagonal wins.
    assert batch_linear_assignment(cost, backend="cpu").tolist() == [[1, 0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_matching_as_scipy_on_random_floats(backend):
    """Ties are improbable with random floats: every backend finds SciPy's one optimum."""
    cost = torch.rand(30, 7, 11, generator=torch.Generator().manual_seed(6))
    for c in (cost, cost.transpose(1, 2), cost[:, :7, :7]):
        assert torch.equal(solve(c, backend), batch_linear_assignment(c, backend="torch"))


def test_cpu_float_and_integer_searches_agree_on_ties():
    """Floating costs take the CPU kernel's SIMD search, int64 costs the serial one
    (wsseg/linear_assignment.h): on integer-valued problems full of ties, with forbidden pairs
    and odd widths (the SIMD loops' tails), both pick the same matching."""
    generator = torch.Generator().manual_seed(13)
    for workers, tasks in [(20, 25), (25, 20), (7, 7), (9, 13), (1, 5), (33, 33)]:
        cost = torch.randint(0, 4, (200, workers, tasks), generator=generator)
        forbidden = torch.rand(cost.shape, generator=generator) < 0.1
        never = torch.iinfo(torch.int64).max  # int64's "forbidden", as +inf for floats
        for c in (cost, cost.masked_fill(forbidden, never)):
            integer = batch_linear_assignment(c, backend="cpu", check=False)
            floating = c.double().masked_fill(c == never, float("inf"))
            assert torch.equal(batch_linear_assignment(floating, backend="cpu", check=False), integer)


def test_public_convention_example():
    """The example of torch_linear_assignment's README: the same answer."""
    cost = torch.tensor([8, 4, 7, 5, 2, 3, 9, 6, 7, 9, 4, 8]).reshape(1, 4, 3)
    assert batch_linear_assignment(cost).tolist() == [[0, 2, -1, 1]]


def test_assignment_to_indices_scipy_format():
    cost = torch.rand(5, 6, 4, generator=torch.Generator().manual_seed(7))
    rows, cols = assignment_to_indices(batch_linear_assignment(cost))
    assert rows.shape == cols.shape == (5, 4)
    for b in range(5):
        r, c = scipy.optimize.linear_sum_assignment(cost[b].double().numpy())
        assert rows[b].tolist() == r.tolist() and cols[b].tolist() == c.tolist()
    empty_rows, empty_cols = assignment_to_indices(torch.zeros(0, 3, dtype=torch.long))
    assert empty_rows.shape == (0, 0) and empty_cols.shape == (0, 0)
    with pytest.raises(ValueError, match="different numbers"):
        assignment_to_indices(torch.tensor([[0, -1], [0, 1]]))


def test_input_errors():
    with pytest.raises(TypeError, match="`cost` must be a torch.Tensor"):
        batch_linear_assignment(np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match=r"`cost` must have shape \[B, W, T\]"):
        batch_linear_assignment(torch.rand(3, 3))
    with pytest.raises(TypeError, match="must be real"):
        batch_linear_assignment(torch.rand(1, 2, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="backend= must be one of"):
        batch_linear_assignment(torch.rand(1, 2, 2), backend="gpu")
    with pytest.raises(BackendUnavailableError, match="'cuda' backend takes CUDA tensors"):
        batch_linear_assignment(torch.rand(1, 2, 2), backend="cuda")


@pytest.mark.triton
def test_single_problem_fast_path_honours_backend_env(monkeypatch):
    # B=1 on the CPU goes straight to the compiled op; it must give SciPy's
    # optimum and still obey $WSSEG_FAST_BACKEND (a bad value is reported).
    skip_unless_available("batch_linear_assignment", "cpu")
    cost = torch.rand(1, 25, 20, generator=torch.Generator().manual_seed(3))
    rows, cols = scipy.optimize.linear_sum_assignment(cost[0].double().numpy())
    out = batch_linear_assignment(cost)
    assert out.shape == (1, 25)
    got = cost[0][out[0] >= 0, out[0][out[0] >= 0]].double().sum()
    assert got.item() == pytest.approx(cost[0].double().numpy()[rows, cols].sum(), rel=1e-12)
    monkeypatch.setenv("WSSEG_FAST_BACKEND", "bogus")
    with pytest.raises(ValueError, match="WSSEG_FAST_BACKEND"):
        batch_linear_assignment(cost)
    monkeypatch.setenv("WSSEG_FAST_BACKEND", "torch")
    assert torch.equal(batch_linear_assignment(cost), out)


def test_triton_size_limit_is_explained():
    from wsseg_fast.kernels.linear_assignment import MAX_BLOCK

    skip_unless_available("batch_linear_assignment", "triton")
    with pytest.raises(ValueError, match="triton backend holds a problem's columns in registers"):
        solve(torch.rand(1, 2, MAX_BLOCK + 1), "triton")


def test_direct_op_checks_its_input():
    op = torch.ops.wsseg_fast.batch_linear_assignment
    with pytest.raises(ValueError, match=r"must have shape \[B, W, T\]"):
        op(torch.rand(2, 2), False, True)
    with pytest.raises(TypeError, match="float32, float64 or int64"):
        op(torch.rand(1, 2, 2).half(), False, True)


def test_opcheck():
    op = torch.ops.wsseg_fast.batch_linear_assignment.default
    for args in [
        (torch.rand(3, 4, 5), False, True),
        (torch.randint(0, 9, (2, 5, 3)), True, True),
        (torch.rand(2, 4, 4, dtype=torch.float64), False, False),
    ]:
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    def match(cost):
        return batch_linear_assignment(cost * 2.0 + 1.0, backend="cpu")

    compiled = torch.compile(match, fullgraph=True, backend="eager")
    cost = torch.rand(4, 6, 5)
    assert torch.equal(compiled(cost), match(cost))


@pytest.mark.triton
def test_triton_op_compile_fullgraph():
    if not torch.cuda.is_available():
        pytest.skip("torch.compile of a triton_op on CPU tensors needs a GPU")
    compiled = torch.compile(lambda c: batch_linear_assignment(c, backend="triton", check=False), fullgraph=True)
    cost = torch.rand(4, 6, 5, device="cuda")
    assert torch.equal(compiled(cost), batch_linear_assignment(cost, backend="cpu").cuda())


@pytest.mark.slow  # the whole Triton compiler, as the other ops' kernels: a few seconds each
@pytest.mark.triton
def test_triton_kernel_compiles_for_gpu():
    """The kernel goes through Triton's whole GPU pipeline (sm_80, sm_90), not just the interpreter."""
    signature = {
        "cost_ptr": "*fp64",
        "out_ptr": "*i64",
        "status_ptr": "*i32",
        "scratch_ptr": "*fp64",
        "nr": "i32",
        "nc": "i32",
        "stride_b": "i64",
        "stride_r": "i64",
        "stride_c": "i64",
        "n_workers": "i32",
    }
    variants = []
    for is_int in (False, True):
        for transposed in (False, True):
            variants.append(
                dict(
                    INF=2**63 - 1 if is_int else float("inf"),
                    TRANSPOSED=transposed,
                    NEGATE=transposed,
                    IS_INT=is_int,
                    BLOCK_R=32,
                    BLOCK_C=64,
                )
            )
    int_signature = dict(signature, cost_ptr="*i64", scratch_ptr="*i64")
    sizes = compile_triton_for_gpu("wsseg_fast.kernels.linear_assignment", "_lsap_kernel", signature, variants[:2])
    sizes += compile_triton_for_gpu("wsseg_fast.kernels.linear_assignment", "_lsap_kernel", int_signature, variants[2:])
    assert len(sizes) == 8 and all(size > 1000 for size in sizes)


@pytest.mark.cuda
def test_cuda_matches_cpu_exactly():
    """The CUDA block runs linear_assignment.h's phases with the same total order: bit-identical matchings."""
    generator = torch.Generator().manual_seed(8)
    for kind in ("float", "int-ties"):
        for workers, tasks in SHAPES + [(300, 300), (300, 100)]:
            cost = random_problems(kind, 20, workers, tasks, generator)
            assert torch.equal(
                batch_linear_assignment(cost.cuda(), backend="cuda").cpu(), batch_linear_assignment(cost, backend="cpu")
            )


@pytest.mark.cuda
def test_cuda_check_false_does_not_synchronise():
    cost = torch.rand(64, 25, 20, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch_linear_assignment(cost, check=False, backend="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
