"""pairwise_constraint_loss: every backend against the reference."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import backends_here, device_of
from wsseg_fast.ops import dilated_offsets, pairwise_constraint_loss
from wsseg_fast.ops.color import rgb_to_lab
from wsseg_fast.reference.pairwise_constraint import pairwise_edges

BACKENDS = backends_here("pairwise_constraint_loss")
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}


def random_case(seed: int, batch=2, classes=3, height=13, width=17, dtype=torch.float64):
    """Piecewise-flat colours with a little noise: about half the edges are similar."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, 1, 1, generator=g) * 0.5 + 0.02 * torch.rand(batch, 3, height, width, generator=g)
    images[..., width // 2 :] += 0.4
    images[..., height // 3, :] = torch.rand(batch, 3, width, generator=g)  # a noisy row
    probs = torch.rand(batch, classes, height, width, generator=g, dtype=torch.float64)
    return probs.to(dtype), images


def loss_and_grad(probs, images, backend, **kwargs):
    device = device_of(backend)
    x = probs.detach().to(device).requires_grad_()
    loss = pairwise_constraint_loss(x, images.to(device), backend=backend, **kwargs)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach().cpu(), grad.cpu()


def test_case_has_similar_and_dissimilar_edges():
    _, images = random_case(0)
    edges = pairwise_edges(rgb_to_lab(images), dilated_offsets(), 0.3)
    assert 0.2 < edges.float().mean() < 0.9


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(
    "params",
    [dict(), dict(p_forall=3.0, threshold=0.5, dilation=1), dict(stable=False)],
    ids=["default", "params", "unstable"],
)
def test_backend_matches_reference(backend, dtype, params):
    small = {}
    if backend == "triton":
        if params and dtype != torch.float32:
            pytest.skip("variants are run in float32 under the Triton interpreter")
        small = dict(batch=1, classes=2, height=9, width=11)
    probs, images = random_case(1, dtype=dtype, **small)
    expected = loss_and_grad(probs.double(), images, "torch", **params)
    loss, grad = loss_and_grad(probs, images, backend, **params)
    assert grad.dtype == dtype
    torch.testing.assert_close(loss.double(), expected[0], **TOL[dtype])
    torch.testing.assert_close(grad.double(), expected[1], **TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_edges_and_empty_batch(backend):
    """Without edges every truth is 1: the loss is LTN's floor eps (stable) and no pixel moves."""
    probs = torch.rand(2, 3, 6, 7, dtype=torch.float64)
    checker = ((torch.arange(6)[:, None] + torch.arange(7)[None, :]) % 2 == 0).expand(2, 3, 6, 7)
    images = checker.to(torch.uint8) * 255
    loss, grad = loss_and_grad(probs, images, backend, kernel_size=3, dilation=1)  # every 4-neighbour differs
    assert torch.isfinite(grad).all() and grad.any()  # diagonal neighbours share a colour
    loss, grad = loss_and_grad(probs, images, backend, kernel_size=1)  # no offsets at all
    assert loss.item() == pytest.approx(1e-4) and not grad.any()
    loss, grad = loss_and_grad(probs, images, backend, kernel_size=1, stable=False)
    assert loss.item() == 0.0 and not grad.any()
    loss, grad = loss_and_grad(probs[:0], images[:0], backend)
    assert loss.item() == 0.0 and grad.shape == (0, 3, 6, 7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_raises(backend):
    probs, images = random_case(0, dtype=torch.float32)
    with pytest.raises(ValueError, match="images"):
        pairwise_constraint_loss(probs, images[:, :2], backend=backend)
    with pytest.raises(ValueError, match="images"):
        pairwise_constraint_loss(probs, images * 300, backend=backend)
    with pytest.raises(ValueError, match="probs"):
        pairwise_constraint_loss(probs[0], images, backend=backend)
    with pytest.raises(ValueError, match="threshold"):
        pairwise_constraint_loss(probs, images, threshold=0.0, backend=backend)


def isolated_pixel_case():
    """A grey image with one red pixel at (4, 4): every other pixel has similar neighbours, the red
    one none (the loss never reads its probabilities)."""
    probs = torch.rand(1, 2, 9, 10, generator=torch.Generator().manual_seed(0))
    images = torch.full((1, 3, 9, 10), 0.5)
    images[0, :, 4, 4] = torch.tensor([1.0, 0.0, 0.0])
    return probs, images


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p_forall", [2.0, 3.0])
def test_nan_probs_give_nan(backend, p_forall):
    """NaN in, NaN out, on every backend: a NaN on an edge makes the loss and the gradient NaN by
    the kernels' own arithmetic (without the value check); a NaN on no edge makes the loss NaN by
    the check."""
    probs, images = isolated_pixel_case()
    read = probs.clone()
    read[0, 1, 2, 7] = float("nan")
    loss, grad = loss_and_grad(read, images, backend, p_forall=p_forall, check=False)
    assert loss.isnan() and grad.isnan().any()
    unread = probs.clone()
    unread[0, 1, 4, 4] = float("nan")
    assert loss_and_grad(unread, images, backend, p_forall=p_forall)[0].isnan()
    assert loss_and_grad(unread, images, backend, p_forall=p_forall, check=False)[0].isfinite()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_values_raise(backend):
    """probs beyond 1e-3 outside [0, 1] and NaN colours raise, naming the argument."""
    probs, images = isolated_pixel_case()
    for bad in (1.3, -0.01, float("inf")):
        wrong = probs.clone()
        wrong[0, 0, 4, 4] = bad
        with pytest.raises(ValueError, match=r"`probs` must be truth values in \[0, 1\]"):
            loss_and_grad(wrong, images, backend)
    near = probs.clone()
    near[0, 0, 1, 1] = 1.0005
    assert loss_and_grad(near, images, backend)[0].isfinite()
    nan_images = images.clone()
    nan_images[0, 1, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="images.*NaN"):
        loss_and_grad(probs, nan_images, backend)
    lab = rgb_to_lab(images)
    lab[0, 0, 3, 3] = float("nan")
    device = device_of(backend)
    with pytest.raises(ValueError, match="`lab` contains NaN"):
        pairwise_constraint_loss(probs.to(device), lab=lab.to(device), backend=backend)


def test_gradcheck_cpu():
    probs, images = random_case(2, batch=1, classes=2, height=5, width=6)
    probs = probs.clamp(0.05, 0.95).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda p: pairwise_constraint_loss(p, images, backend="cpu", p_forall=3.0, dilation=1), (probs,)
    )


def test_opcheck():
    probs, images = random_case(3, batch=2, classes=2, height=6, width=7)
    lab, offsets = rgb_to_lab(images), dilated_offsets()
    torch.library.opcheck(
        torch.ops.wsseg_fast.pairwise_constraint_stats.default, (probs.requires_grad_(), lab, offsets, 0.3, 2.0, True)
    )
    torch.library.opcheck(
        torch.ops.wsseg_fast.pairwise_constraint_grad.default,
        (torch.rand(2, 2, dtype=torch.float64), probs.detach(), lab, offsets, 0.3, 3.0, False),
    )


def test_torch_compile_fullgraph_cpu():
    probs, images = random_case(4, dtype=torch.float32)

    lab = rgb_to_lab(images)

    def step(logits):
        return pairwise_constraint_loss(torch.sigmoid(logits), lab=lab, backend="cpu")

    logits = torch.randn(probs.shape, requires_grad=True)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(logits)
    expected = step(logits)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(torch.autograd.grad(loss, logits)[0], torch.autograd.grad(expected, logits)[0])
    nan = logits.detach().clone()
    nan[0, 0, 0, 0] = float("nan")  # the value checks are traced without their raise: NaN still propagates
    assert compiled(nan.requires_grad_()).isnan()


@pytest.mark.slow
@pytest.mark.triton
def test_triton_kernels_compile_for_gpu():
    from tests.helpers import compile_triton_for_gpu

    common = {"C": "i32", "H": "i32", "W": "i32", "K": "i32", "threshold": "fp32", "p_forall": "fp32"}
    stats = dict(probs_ptr="*fp16", lab_ptr="*fp32", offsets_ptr="*i32", sums_ptr="*fp32", counts_ptr="*fp32", **common)
    grad = dict(
        grad_sums_ptr="*fp32", probs_ptr="*fp16", lab_ptr="*fp32", offsets_ptr="*i32", grad_ptr="*fp16", **common
    )
    variant = dict(STABLE=True, PF_IS_2=False, BLOCK_R=16, BLOCK_W=64)
    sizes = compile_triton_for_gpu("wsseg_fast.kernels.pairwise_constraint", "_stats_kernel", stats, [variant], (80,))
    sizes += compile_triton_for_gpu("wsseg_fast.kernels.pairwise_constraint", "_grad_kernel", grad, [variant], (80,))
    assert all(size > 1000 for size in sizes)
