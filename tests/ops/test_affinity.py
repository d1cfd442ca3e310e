"""local_affinity and mask_affinity: every backend against the shifted-view reference."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import backends_here, device_of
from wsseg_fast import reference
from wsseg_fast.ops import local_affinity, mask_affinity, neighbor_offsets
from wsseg_fast.reference.random_walk import valid_neighbors

BACKENDS = backends_here("local_affinity")


def features(shape, seed=0, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["l1", "l2"])
@pytest.mark.parametrize("shape,radius", [((2, 3, 9, 11), 5), ((1, 1, 4, 3), 1), ((1, 2, 1, 7), 3), ((3, 4, 6, 6), 2)])
def test_matches_reference(backend, metric, shape, radius):
    f = features(shape)
    expected = reference.local_affinity(f, radius, metric)
    out = local_affinity(f.to(device_of(backend)), radius, metric=metric, backend=backend).cpu()
    assert out.shape == (shape[0], len(neighbor_offsets(radius)), *shape[2:])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_and_half(backend):
    f = features((2, 3, 8, 9), seed=1)
    expected = reference.local_affinity(f, 4)
    for dtype, tol in ((torch.float32, 1e-6), (torch.float16, 2e-3)):
        out = local_affinity(f.to(dtype).to(device_of(backend)), 4, backend=backend).cpu()
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


def test_definition_and_symmetry():
    """A[k, i] = exp(-mean |f_i - f_j|), zero outside; A(i, j) = A(j, i) at the opposite offset."""
    f = features((1, 2, 5, 6), seed=2)
    a = local_affinity(f, 3, backend="torch")
    offsets = neighbor_offsets(3).tolist()
    for k, (dy, dx) in enumerate(offsets):
        opposite = offsets.index([-dy, -dx])
        for y in range(5):
            for x in range(6):
                ny, nx = y + dy, x + dx
                if 0 <= ny < 5 and 0 <= nx < 6:
                    want = torch.exp(-(f[0, :, y, x] - f[0, :, ny, nx]).abs().mean())
                    torch.testing.assert_close(a[0, k, y, x], want)
                    assert a[0, opposite, ny, nx] == a[0, k, y, x]
                else:
                    assert a[0, k, y, x] == 0
    assert (a[:, offsets.index([0, 0])] == 1).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["l1", "l2"])
def test_nan_features_give_nan_affinities(backend, metric):
    """A NaN feature makes every affinity of its pixel NaN: the 9 to its neighbours and the 8
    that its neighbours have to it (radius 2, all inside); the others stay as they were."""
    f = features((1, 2, 5, 6), seed=5)
    f[0, 1, 2, 3] = float("nan")
    out = local_affinity(f.to(device_of(backend)), 2, metric=metric, backend=backend).cpu()
    assert out[0, :, 2, 3].isnan().all() and int(out.isnan().sum()) == 9 + 8
    torch.testing.assert_close(out, reference.local_affinity(f, 2, metric), equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_mask_logits_give_nan_affinities(backend):
    """aggregate="sum" normalises the image by its max: one NaN makes every affinity NaN (0 stays
    where the neighbour is outside); "stack" keeps it to the pixel's own affinities."""
    logits = features((1, 3, 5, 6), seed=6)
    logits[0, 2, 2, 3] = float("nan")
    logits = logits.to(device_of(backend))
    summed = mask_affinity(logits, 2, backend=backend).cpu()
    inside = valid_neighbors(2, 5, 6).unsqueeze(0)
    assert torch.equal(summed.isnan(), inside) and (summed[~inside] == 0).all()
    assert int(mask_affinity(logits, 2, aggregate="stack", backend=backend).isnan().sum()) == 9 + 8


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    f = features((1, 2, 4, 5), seed=3).to(device_of(backend)).requires_grad_()
    for metric in ("l1", "l2"):
        assert torch.autograd.gradcheck(lambda t, m=metric: local_affinity(t, 2, metric=m, backend=backend), (f,))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.id in ("cpu", "cuda")])
def test_opcheck(backend):
    f = features((2, 3, 5, 4), seed=4).to(device_of(backend))
    torch.library.opcheck(torch.ops.wsseg_fast.local_affinity.default, (f, 2, False))
    torch.library.opcheck(torch.ops.wsseg_fast.local_affinity.default, (f.requires_grad_(), 3, True))


@pytest.mark.cuda
@pytest.mark.triton
def test_opcheck_triton():
    """On a GPU: the interpreter cannot run a triton_op on fake tensors."""
    from wsseg_fast.kernels.affinity import local_affinity_triton

    f = features((1, 2, 4, 5), seed=5).cuda().requires_grad_()
    torch.library.opcheck(local_affinity_triton, (f, 2, False))


def test_torch_compile():
    f = features((1, 3, 7, 6), seed=6, dtype=torch.float32)
    compiled = torch.compile(lambda t: local_affinity(t, 3), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(f), reference.local_affinity(f, 3, "l1"))


def test_bad_inputs():
    with pytest.raises(TypeError, match="features"):
        local_affinity(torch.zeros(1, 1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="features"):
        local_affinity(torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="features"):
        local_affinity(torch.zeros(1, 0, 3, 3))
    with pytest.raises(ValueError, match="radius"):
        local_affinity(torch.zeros(1, 1, 3, 3), 0)
    with pytest.raises(ValueError, match="metric"):
        local_affinity(torch.zeros(1, 1, 3, 3), metric="cosine")
    with pytest.raises(ValueError, match="aggregate"):
        mask_affinity(torch.zeros(1, 2, 3, 3), aggregate="max")


def test_mask_affinity_separates_masks():
    """Two prompt masks (left/right halves): high affinity within a half, low across."""
    logits = torch.full((1, 2, 6, 8), -20.0)
    logits[0, 0, :, :4] = 20
    logits[0, 1, :, 4:] = 20
    offsets = neighbor_offsets(2).tolist()
    right = offsets.index([0, 1])
    stacked = mask_affinity(logits, 2, aggregate="stack")
    assert stacked.shape == (1, 9, 6, 8)
    assert stacked[0, right, :, 3].max() < 0.4  # across the boundary
    assert stacked[0, right, :, :3].min() > 0.99
    # "sum": one map; a pixel covered by one mask vs. none differs
    logits[0, 1] = -20
    summed = mask_affinity(logits, 2, aggregate="sum")
    assert summed[0, right, :, 3].max() < 0.4 and summed[0, right, :, 4:7].min() > 0.99


@pytest.mark.slow
@pytest.mark.triton
def test_triton_kernel_compiles_for_gpu():
    """The kernel goes through Triton's whole GPU pipeline (sm_80, sm_90), not just the interpreter."""
    from tests.helpers import compile_triton_for_gpu

    signature = {
        "f_ptr": "*fp32",
        "off_ptr": "*i32",
        "out_ptr": "*fp32",
        "depth": "i32",
        "height": "i32",
        "width": "i32",
        "n_offsets": "i32",
    }
    sizes = compile_triton_for_gpu(
        "wsseg_fast.kernels.affinity",
        "_local_affinity_kernel",
        signature,
        [dict(SQUARED=s, BLOCK=128) for s in (False, True)],
    )
    assert len(sizes) == 4 and all(size > 1000 for size in sizes)
