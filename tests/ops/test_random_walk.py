"""random_walk: every backend against the sparse reference and PSA's dense formulation."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import backends_here, device_of
from wsseg_fast import reference
from wsseg_fast.ops import local_affinity, neighbor_offsets, random_walk
from wsseg_fast.ops.random_walk import checkpoint_interval
from wsseg_fast.reference.random_walk import transition

BACKENDS = backends_here("random_walk")
COMPILED = [b for b in BACKENDS if b.id in ("cpu", "cuda")]


def inputs(batch, channels, height, width, radius, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, channels, height, width, generator=g, dtype=dtype)
    f = torch.randn(batch, 3, height, width, generator=g, dtype=dtype)
    return x, local_affinity(f, radius, backend="torch")


def walk(x, a, radius, backend, **kwargs):
    dev = device_of(backend)
    return random_walk(x.to(dev), a.to(dev), radius, backend=backend, **kwargs).cpu()


HEAVY = pytest.mark.interpreter_heavy
CASES = [  # batch, channels, height, width, radius, steps
    pytest.param((2, 3, 9, 11, 5, 16), marks=HEAVY),
    pytest.param((1, 21, 16, 16, 5, 8), marks=HEAVY),  # more channels than one tile block, interior tiles on the cpu
    (1, 2, 7, 5, 1, 3),  # radius 1: only the pixel itself, the walk is the identity
    (3, 1, 5, 6, 2, 0),
    (1, 4, 6, 13, 3, 1),
    pytest.param((2, 9, 13, 24, 4, 5), marks=HEAVY),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)) if isinstance(c, tuple) else None)
def test_matches_dense_psa(backend, case):
    batch, channels, height, width, radius, steps = case
    x, a = inputs(batch, channels, height, width, radius)
    expected = reference.dense_random_walk(x, a, radius, 8.0, steps)
    torch.testing.assert_close(walk(x, a, radius, backend, steps=steps), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(reference.random_walk(x, a, radius, 8.0, steps), expected, rtol=1e-10, atol=1e-12)
    if radius == 1 or steps == 0:
        torch.testing.assert_close(walk(x, a, radius, backend, steps=steps), x)


# float32 takes the cpu backend's AVX2 tiles: channel blocks of 7 plus a
# remainder, tiles of 16 pixels plus a ragged last tile.
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "shape",
    [(1, 5, 12, 12), pytest.param((2, 10, 9, 37), marks=HEAVY), pytest.param((1, 21, 17, 16), marks=HEAVY)],
    ids=lambda s: "x".join(map(str, s)) if isinstance(s, tuple) else None,
)
def test_float32_within_1e4_of_dense(backend, shape):
    x, a = inputs(*shape, 5, seed=1)
    steps = 8 if backend == "triton" and device_of(backend) == "cpu" else 64
    expected = reference.dense_random_walk(x, a, 5, 8.0, steps)
    out = walk(x.float(), a.float(), 5, backend, steps=steps)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_asymmetric_affinity_and_zero_rows(backend):
    """Arbitrary (non-symmetric) non-negative affinities, some pixels with all zeros."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 6, 7, generator=g, dtype=torch.float64)
    a = torch.rand(1, len(neighbor_offsets(3)), 6, 7, generator=g, dtype=torch.float64)
    a[..., 2, 3] = 0
    expected = reference.dense_random_walk(x, a, 3, 2.0, 5)
    torch.testing.assert_close(walk(x, a, 3, backend, beta=2.0, steps=5), expected, rtol=1e-10, atol=1e-12)


@HEAVY
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_regions_do_not_leak(backend):
    """A low-affinity boundary keeps each region's mass: no leak across it."""
    height, width = 10, 12
    f = torch.zeros(1, 1, height, width, dtype=torch.float64)
    f[..., width // 2 :] = 30.0  # exp(-30)^8: nothing crosses
    a = local_affinity(f, 4, backend="torch")
    x = torch.zeros(1, 2, height, width, dtype=torch.float64)
    x[0, 0, 3, 2] = 1.0  # a seed of class 0 on the left
    x[0, 1, 6, 9] = 1.0  # a seed of class 1 on the right
    out = walk(x, a, 4, backend, steps=64)
    assert out[0, 0, :, width // 2 :].abs().max() < 1e-12
    assert out[0, 1, :, : width // 2].abs().max() < 1e-12
    assert out[0, 0, :, : width // 2].min() > 0  # spread over its own region


@HEAVY  # the triton backward's gradients are checked against the reference's below, in make test
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    dev = device_of(backend)
    interpreted = backend == "triton" and dev == "cpu"  # one launch per step in Python: keep it tiny
    height, width = (3, 4) if interpreted else (4, 5)
    x, _ = inputs(1, 2, height, width, 2, seed=3)
    f = torch.randn(1, 2, height, width, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    a = local_affinity(f, 2, backend="torch").detach() + 0.05  # away from 0, where a**beta is flat
    for steps in (0, 2) if interpreted else (0, 1, 5):
        assert torch.autograd.gradcheck(
            lambda x, a, steps=steps: random_walk(x, a, 2, beta=2.0, steps=steps, backend=backend),
            (x.to(dev).requires_grad_(), a.to(dev).requires_grad_()),
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_reference(backend):
    """Checkpointed backward (steps not a square, several segments) = autograd through the reference."""
    x, a = inputs(2, 3, 7, 8, 3, seed=5)
    grads = []
    for b in ("torch", backend):
        xx = x.clone().to(device_of(b)).requires_grad_()
        aa = a.clone().to(device_of(b)).requires_grad_()
        out = random_walk(xx, aa, 3, steps=11, backend=b)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)).sum().backward()
        grads.append((xx.grad.cpu(), aa.grad.cpu()))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", COMPILED)
def test_float32_gradients_match_reference(backend):
    """The vectorised float32 forward and transposed steps (several channel blocks, a ragged tile)
    against the float64 reference, to float32 accuracy relative to each tensor's scale."""
    x, a = inputs(2, 10, 9, 37, 5, seed=6)
    results = []
    for b, dtype in (("torch", torch.float64), (backend, torch.float32)):
        xx = x.to(device_of(b), dtype, copy=True).requires_grad_()
        aa = a.to(device_of(b), dtype, copy=True).requires_grad_()
        out = random_walk(xx, aa, 5, steps=20, backend=b)
        (out * torch.linspace(0, 1, out.numel(), device=out.device, dtype=dtype).view_as(out)).sum().backward()
        results.append((out.detach().cpu(), xx.grad.cpu(), aa.grad.cpu()))
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-4 * expected.abs().max().item())


def test_checkpoint_interval():
    assert [checkpoint_interval(s) for s in (0, 1, 2, 4, 5, 16, 17, 256)] == [1, 1, 2, 2, 3, 4, 5, 16]


@pytest.mark.parametrize("backend", COMPILED)
def test_opcheck(backend):
    x, a = inputs(1, 3, 5, 6, 2, seed=6)
    w = transition(a, 2, 8.0).to(device_of(backend))
    x = x.to(device_of(backend))
    torch.library.opcheck(torch.ops.wsseg_fast.random_walk.default, (x.requires_grad_(), w.requires_grad_(), 2, 3))
    torch.library.opcheck(
        torch.ops.wsseg_fast.random_walk_backward.default, (torch.ones_like(x), x.detach(), w.detach(), 2, 3)
    )


@pytest.mark.cuda
@pytest.mark.triton
def test_opcheck_triton():
    """On a GPU: the interpreter cannot run a triton_op on fake tensors."""
    from wsseg_fast.kernels.random_walk import random_walk_triton

    x, a = inputs(1, 2, 4, 5, 2, seed=7)
    w = transition(a, 2, 8.0)
    torch.library.opcheck(random_walk_triton, (x.cuda().requires_grad_(), w.cuda().requires_grad_(), 2, 2))


def test_torch_compile():
    x, a = inputs(1, 3, 8, 7, 3, seed=8, dtype=torch.float32)
    compiled = torch.compile(lambda x, a: random_walk(x, a, 3, steps=4), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, a), reference.random_walk(x, a, 3, 8.0, 4))


def test_empty_and_half():
    x, a = inputs(1, 0, 4, 4, 2)
    assert random_walk(x, a, 2, steps=3).shape == (1, 0, 4, 4)
    x, a = inputs(1, 2, 5, 5, 2, seed=9)
    out = random_walk(x.half(), a.half(), 2, steps=4)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), reference.dense_random_walk(x, a, 2, 8.0, 4), rtol=5e-3, atol=5e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_inputs_raise(backend):
    """A NaN would spread over the whole image in a few steps: every backend raises, naming the
    argument (the check is skipped under torch.compile)."""
    x, a = inputs(1, 2, 5, 5, 2)
    for name, (nx, na) in {"x": (x.clone(), a), "affinity": (x, a.clone())}.items():
        (nx if name == "x" else na)[0, 0, 1, 1] = float("nan")
        with pytest.raises(ValueError, match=f"`{name}` contains NaN"):
            walk(nx, na, 2, backend, steps=2)


def test_bad_inputs():
    x, a = inputs(1, 2, 5, 5, 3)
    with pytest.raises(ValueError, match="affinity.*K = 9 offsets for radius 2"):
        random_walk(x, a, 2)
    with pytest.raises(ValueError, match="affinity"):
        random_walk(x[:, :, :4], a, 3)
    bad = a.clone()
    bad[0, 0, 0, 0] = -0.5
    with pytest.raises(ValueError, match="affinity.*>= 0"):
        random_walk(x, bad, 3)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="affinity.*NaN"):
        random_walk(x, bad, 3)
    nan_x = x.clone()
    nan_x[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="`x`.*NaN"):
        random_walk(nan_x, a, 3)
    with pytest.raises(ValueError, match="steps"):
        random_walk(x, a, 3, steps=-1)
    with pytest.raises(ValueError, match="beta"):
        random_walk(x, a, 3, beta=0)
    with pytest.raises(TypeError, match="affinity"):
        random_walk(x, a.long(), 3)
    with pytest.raises(ValueError, match="radius"):
        random_walk(x, a, 0)


@pytest.mark.slow
@pytest.mark.triton
def test_triton_kernels_compile_for_gpu():
    """Both kernels go through Triton's whole GPU pipeline (sm_80, sm_90), not just the interpreter."""
    from tests.helpers import compile_triton_for_gpu

    step = {
        "x_ptr": "*fp32",
        "w_ptr": "*fp32",
        "off_ptr": "*i32",
        "out_ptr": "*fp32",
        "channels": "i32",
        "height": "i32",
        "width": "i32",
        "n_offsets": "i32",
    }
    sizes = compile_triton_for_gpu(
        "wsseg_fast.kernels.random_walk",
        "_step_kernel",
        step,
        [dict(TRANSPOSE=t, BLOCK_C=8, BLOCK_P=128) for t in (False, True)],
    )
    grad = {
        "g_ptr": "*fp32",
        "y_ptr": "*fp32",
        "off_ptr": "*i32",
        "gw_ptr": "*fp32",
        "channels": "i32",
        "height": "i32",
        "width": "i32",
        "n_offsets": "i32",
    }
    sizes += compile_triton_for_gpu(
        "wsseg_fast.kernels.random_walk", "_grad_weights_kernel", grad, [dict(BLOCK_C=8, BLOCK_P=128)]
    )
    assert len(sizes) == 6 and all(size > 1000 for size in sizes)
