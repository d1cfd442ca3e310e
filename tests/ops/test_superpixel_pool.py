"""superpixel_pool, activation_modulation, ssc_alignment_loss: every backend against the
float64 reference, with gradients."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import backends_here, device_of
from wsseg_fast import reference
from wsseg_fast.ops import activation_modulation, ssc_alignment_loss, superpixel_pool
from wsseg_fast.reference.superpixel_pool import erode

BACKENDS = backends_here("superpixel_pool")
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3}


def make(batch=2, channels=3, height=13, width=17, segments=9, seed=0, dtype=torch.float64, holes=True):
    """Random CAM-like input and labels with some -1 pixels; distinct values (no arg-max ties)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randperm(batch * channels * height * width, generator=g).reshape(batch, channels, height, width)
    x = (x.to(torch.float64) / x.numel()).to(dtype)
    labels = torch.randint(0, segments, (batch, height, width), generator=g)
    if holes:
        labels[torch.rand(labels.shape, generator=g) < 0.1] = -1
    return x, labels


def run(fn, backend, *tensors, **kwargs):
    device = device_of(backend)
    return fn(*[t.to(device) for t in tensors], backend=backend, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduce", ["mean", "max"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_pool_matches_reference(backend, reduce, dtype):
    x, labels = make(dtype=dtype)
    for lbl in (labels, labels.int()):
        out = run(superpixel_pool, backend, x, lbl, reduce=reduce).cpu()
        expected = reference.superpixel_pool(x.double(), labels, reduce).to(dtype)
        assert out.dtype == dtype and out.shape == x.shape
        torch.testing.assert_close(out, expected, atol=TOL[dtype], rtol=TOL[dtype])
        assert (out.permute(1, 0, 2, 3)[:, labels == -1] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_pool_gradient_matches_reference(backend, reduce):
    x, labels = make()
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mine = x.clone().to(device_of(backend)).requires_grad_()
    (g_mine,) = torch.autograd.grad(
        superpixel_pool(mine, labels.to(mine.device), reduce=reduce, backend=backend), mine, grad.to(mine.device)
    )
    ref = x.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(reference.superpixel_pool(ref, labels, reduce), ref, grad)
    torch.testing.assert_close(g_mine.cpu(), g_ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_gradcheck(backend, reduce):
    small = backend == "triton"  # the interpreter runs every launch in Python
    x, labels = make(batch=1, channels=1 if small else 2, height=3 if small else 5, width=4 if small else 6, segments=4)
    x = x.to(device_of(backend)).requires_grad_()
    labels = labels.to(x.device)
    # float atomics (cuda) may order the sums differently on the second backward
    nondet_tol = 1e-12 if backend == "cuda" else 0.0

    def pool(t):
        return superpixel_pool(t, labels, reduce=reduce, backend=backend)

    assert torch.autograd.gradcheck(pool, (x,), nondet_tol=nondet_tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_gradient_goes_to_first_argmax(backend):
    x = torch.tensor([[[[1.0, 3.0, 3.0, 0.0]]]], dtype=torch.float64, device=device_of(backend), requires_grad=True)
    labels = torch.tensor([[[0, 0, 0, 1]]], device=x.device)
    out = superpixel_pool(x, labels, reduce="max", backend=backend)
    assert out.tolist() == [[[[3.0, 3.0, 3.0, 0.0]]]]
    out.sum().backward()
    if backend == "torch":  # torch's own rule: tied maxima share the gradient
        assert x.grad.tolist() == [[[[0.0, 1.5, 1.5, 1.0]]]]
    else:
        assert x.grad.tolist() == [[[[0.0, 3.0, 0.0, 1.0]]]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_compact_superpixels_with_ties(backend):
    """Superpixel-like labels (blocks: long runs of one label in a row, a -1 band) and
    few distinct values (ties inside and across runs): means and maxima as the reference,
    the max's gradient at the first (flat) position of each superpixel's maximum."""
    g = torch.Generator().manual_seed(3)
    yy, xx = torch.meshgrid(torch.arange(23), torch.arange(41), indexing="ij")
    labels = ((yy // 5) * 9 + xx // 5).expand(2, 23, 41).contiguous()
    labels[1, :, 37:] = -1
    x = torch.randint(0, 4, (2, 3, 23, 41), generator=g).to(torch.float64)
    for reduce in ("mean", "max"):
        out = run(superpixel_pool, backend, x, labels, reduce=reduce).cpu()
        torch.testing.assert_close(out, reference.superpixel_pool(x, labels, reduce), atol=1e-12, rtol=1e-12)
    xg = x.to(device_of(backend)).requires_grad_()
    superpixel_pool(xg, labels.to(xg.device), reduce="max", backend=backend).sum().backward()
    if backend == "torch":
        return  # torch's own rule shares the gradient between tied maxima
    expected = torch.zeros_like(x)
    for b in range(2):
        for label in labels[b].unique().tolist():
            if label < 0:
                continue
            where = (labels[b] == label).flatten()
            for c in range(3):
                plane = x[b, c].flatten()
                first = int(torch.nonzero(where & (plane == plane[where].max()))[0])
                expected[b, c].view(-1)[first] = float(where.sum())
    assert torch.equal(xg.grad.cpu(), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduce", ["mean", "max"])
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["nan", "negative-nan"])
def test_nan_makes_its_superpixel_nan(backend, reduce, sign):
    """A NaN makes its superpixel's mean and max NaN, and nothing else; x is not read where the
    label is -1 (0 there). The max's gradient goes to the first NaN. Both signs of NaN: the
    float atomic max of the Triton kernel compares bits as integers."""
    x = torch.rand(1, 2, 4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.arange(24).reshape(1, 4, 6) // 8  # three superpixels of 8 pixels
    labels[0, 3, 5] = -1
    expected = reference.superpixel_pool(x, labels, reduce)
    nan = x.clone()
    nan[0, 1, 1, 3] = nan[0, 1, 1, 4] = math.copysign(math.nan, sign)  # superpixel 1 (pixels 8..15), twice
    nan[0, 0, 3, 5] = float("nan")  # no superpixel: not read
    assert torch.signbit(nan[0, 1, 1, 3]) == (sign < 0)
    xg = nan.to(device_of(backend)).requires_grad_()
    out = superpixel_pool(xg, labels.to(xg.device), reduce=reduce, backend=backend)
    (grad,) = torch.autograd.grad(out, xg, torch.ones_like(out))
    out, grad = out.detach().cpu(), grad.cpu()
    hit = torch.zeros_like(out, dtype=torch.bool)
    hit[0, 1] = labels[0] == 1
    assert out[hit].isnan().all()
    torch.testing.assert_close(out.masked_fill(hit, 0), expected.masked_fill(hit, 0))
    if reduce == "max" and backend != "torch":  # torch's rule shares the gradient between "ties"
        assert grad[0, 1, 1, 3] == 8 and grad[0, 1, 1, 4] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_modulation_and_alignment_loss_propagate_nan(backend):
    """A NaN CAM makes its class's target NaN (the per-class max normalisation spreads it) and
    the alignment loss NaN, also when the class is not present."""
    cams, labels = make(batch=1, channels=2, height=6, width=7, segments=4)
    cams[0, 1, 2, 3] = float("nan")
    target = run(activation_modulation, backend, cams, labels, erode=1).cpu()
    assert target[0, 1].isnan().all() and target[0, 0].isfinite().all()
    for present in (None, torch.tensor([[True, False]])):
        present = None if present is None else present.to(device_of(backend))
        assert run(ssc_alignment_loss, backend, cams, labels, erode=1, present=present).isnan()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 2, 3, 3), (2, 0, 3, 3), (1, 2, 0, 4), (1, 1, 1, 1)])
@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_empty_and_single_pixel(backend, shape, reduce):
    x = torch.rand(shape, device=device_of(backend))
    labels = torch.zeros(shape[0], shape[2], shape[3], dtype=torch.long, device=x.device)
    out = superpixel_pool(x, labels, reduce=reduce, backend=backend)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x)  # one superpixel of one pixel, or nothing


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_pixels_unlabelled(backend):
    x = torch.rand(1, 2, 3, 3, device=device_of(backend))
    labels = torch.full((1, 3, 3), -1, device=x.device)
    for reduce in ("mean", "max"):
        assert (superpixel_pool(x, labels, reduce=reduce, backend=backend) == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous(backend):
    x, labels = make(channels=4, dtype=torch.float32)
    xv, lv = x.transpose(2, 3), labels.transpose(1, 2)
    out = run(superpixel_pool, backend, xv, lv).cpu()
    torch.testing.assert_close(out, reference.superpixel_pool(xv, lv), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((torch.rand(1, 2, 3), torch.zeros(1, 2, 3, dtype=torch.long)), {}, ValueError, "x"),
        ((torch.rand(1, 2, 3, 3), torch.zeros(1, 3, 4, dtype=torch.long)), {}, ValueError, "labels"),
        ((torch.rand(1, 2, 3, 3), torch.zeros(1, 3, 3)), {}, TypeError, "labels"),
        ((torch.zeros(1, 2, 3, 3, dtype=torch.long), torch.zeros(1, 3, 3, dtype=torch.long)), {}, TypeError, "x"),
        ((torch.rand(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long)), {"reduce": "sum"}, ValueError, "reduce"),
    ],
)
def test_pool_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        superpixel_pool(*args, **kwargs)


def test_modulation_bad_input():
    x, labels = make()
    with pytest.raises(ValueError, match="present"):
        activation_modulation(x, labels, present=torch.ones(2))
    with pytest.raises(ValueError, match="threshold"):
        ssc_alignment_loss(x, labels, threshold=1.5)
    with pytest.raises(ValueError, match="erode"):
        ssc_alignment_loss(x, labels, erode=-1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    if backend not in ("cpu", "cuda"):
        pytest.skip("the compiled op of the cpu and cuda backends")
    x, labels = make(dtype=torch.float32)
    x, labels = x.to(device_of(backend)), labels.to(device_of(backend))
    for reduce in ("mean", "max"):
        lbl = labels if reduce == "mean" else labels.int()
        torch.library.opcheck(torch.ops.wsseg_fast.superpixel_pool.default, (x.requires_grad_(), lbl, reduce))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    if backend not in ("cpu", "cuda"):
        pytest.skip("the compiled op of the cpu and cuda backends")
    x, labels = make(dtype=torch.float32)
    x, labels = x.to(device_of(backend)), labels.to(device_of(backend))

    def fn(t):
        return (
            superpixel_pool(t, labels, reduce="mean", backend=backend).sum()
            + superpixel_pool(t, labels, reduce="max", backend=backend).sum()
        )

    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), fn(x))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_present", [False, True])
def test_modulation_and_loss_match_reference(backend, with_present):
    g = torch.Generator().manual_seed(3)
    cams = torch.randn(2, 4, 24, 20, generator=g, dtype=torch.float64) + torch.linspace(0, 2, 20, dtype=torch.float64)
    labels = torch.randint(0, 12, (2, 24, 20), generator=g)
    present = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0]]) if with_present else None
    kwargs = dict(present=present, threshold=0.3, erode=2)
    target = run(activation_modulation, backend, cams, labels, **kwargs).cpu()
    expected = reference.activation_modulation(cams, labels, present, 0.3, 2)
    torch.testing.assert_close(target, expected, atol=1e-10, rtol=1e-10)
    assert not target.requires_grad and (target >= 0).all() and (target <= 1).all()

    mine = cams.clone().to(device_of(backend)).requires_grad_()
    loss = ssc_alignment_loss(mine, labels.to(mine.device), backend=backend, **kwargs)
    ref = cams.clone().requires_grad_()
    ref_loss = reference.ssc_alignment_loss(ref, labels, present, 0.3, 2)
    torch.testing.assert_close(loss.cpu(), ref_loss, atol=1e-12, rtol=1e-10)
    (g_mine,) = torch.autograd.grad(loss, mine)
    (g_ref,) = torch.autograd.grad(ref_loss, ref)
    torch.testing.assert_close(g_mine.cpu(), g_ref, atol=1e-12, rtol=1e-8)


def test_erosion():
    """The reliable region shrinks by `erode` pixels; the image border does not erode; the
    separable fast path equals the reference's square max-pool."""
    from wsseg_fast.ops.superpixel_pool import _erode

    mask = torch.zeros(1, 1, 20, 20, dtype=torch.bool)
    mask[..., 5:15, 0:12] = True
    expected = torch.zeros_like(mask)
    expected[..., 7:13, 0:10] = True
    assert torch.equal(erode(mask, 2), expected)
    assert torch.equal(_erode(mask, 2), expected)
    random = torch.rand(2, 3, 17, 23, generator=torch.Generator().manual_seed(0)) < 0.8
    for radius in range(4):
        assert torch.equal(_erode(random, radius), erode(random, radius))


@pytest.mark.cuda
@pytest.mark.parametrize("reduce", ["mean", "max"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu_on_real_sizes(reduce, dtype):
    """The CUDA kernels against the CPU kernel at a training size: many superpixels (the
    shared-memory table) and more than fit in shared memory (the global-atomics path), int32
    and int64 labels, with gradients."""
    x, _ = make(batch=2, channels=5, height=96, width=80, dtype=dtype, holes=False)
    g = torch.Generator().manual_seed(4)
    for segments in (150, 9000):  # 9000 float64 sums exceed the 32 KiB shared table
        labels = torch.randint(-1, segments, (2, 96, 80), generator=g)
        grad = torch.randn(x.shape, generator=g, dtype=dtype)
        for lbl in (labels, labels.int()):
            outs, grads = [], []
            for device, backend in (("cpu", "cpu"), ("cuda", "cuda")):
                xd = x.to(device).requires_grad_()
                out = superpixel_pool(xd, lbl.to(device), reduce=reduce, backend=backend)
                (gx,) = torch.autograd.grad(out, xd, grad.to(device))
                outs.append(out.detach().cpu())
                grads.append(gx.cpu())
            tol = 1e-5 if dtype == torch.float32 else 1e-12
            torch.testing.assert_close(outs[1], outs[0], atol=tol, rtol=tol)
            torch.testing.assert_close(grads[1], grads[0], atol=tol, rtol=tol)


@pytest.mark.cuda
def test_cuda_is_the_auto_choice_on_cuda_tensors():
    from wsseg_fast.ops._backend import choose
    from wsseg_fast.ops.superpixel_pool import SPEC

    assert choose(SPEC, "auto", torch.device("cuda")) == "cuda"


@pytest.mark.slow
@pytest.mark.triton
def test_triton_max_kernel_compiles_for_gpu():
    """The max reduction (atomic_max, and the exchange that stores a NaN) through the whole
    compiler pipeline, which the interpreter skips."""
    from tests.helpers import compile_triton_for_gpu

    variant = dict(IS_MAX=True, BLOCK=1024)
    sizes = []
    for dtype in ("fp32", "fp64"):  # the exchange moves int32 or int64 bits
        signature = {"x_ptr": f"*{dtype}", "labels_ptr": "*i64", "acc_ptr": f"*{dtype}", "count_ptr": "*fp32"}
        signature.update(hw="i64", channels="i32", k="i64")
        kernel = "_segment_reduce_kernel"
        sizes += compile_triton_for_gpu("wsseg_fast.kernels.superpixel_pool", kernel, signature, [variant], (80,))
    assert len(sizes) == 2 and all(size > 1000 for size in sizes)
