"""box_constraint_loss: every backend against the reference, the reference against LTNtorch."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import backends_here, device_of
from wsseg_fast import reference
from wsseg_fast.ops import box_constraint_loss

BACKENDS = backends_here("box_constraint_loss")
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}


def random_case(seed: int, batch=3, classes=4, height=19, width=23, n=5, dtype=torch.float64):
    """Boxes touching and crossing the border, overlapping boxes of one class, several
    classes, padding rows and a degenerate box."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(batch, classes, height, width, generator=g, dtype=torch.float64)
    xy0 = torch.rand(batch, n, 2, generator=g) * torch.tensor([width, height]) - 2
    size = torch.rand(batch, n, 2, generator=g) * torch.tensor([width, height]) * 0.7 + 0.3
    boxes = torch.cat([xy0, xy0 + size], dim=-1).double()
    labels = torch.randint(0, classes, (batch, n), generator=g)
    labels[:, 1] = labels[:, 0]  # two boxes of one class per image
    labels[-1, -1] = -1  # padding
    boxes[-1, -1] = float("nan")  # ... whose values are ignored
    boxes[0, 2] = torch.tensor([-3.0, 0.0, float(width + 4), float(height)])  # the whole image
    if n > 3 and batch > 1:
        boxes[1, 3] = torch.tensor([5.0, 5.0, 5.0, 9.0])  # zero area: ignored
    return probs.to(dtype), boxes, labels


def loss_and_grad(probs, boxes, labels, backend, **kwargs):
    device = device_of(backend)
    x = probs.detach().to(device).requires_grad_()
    loss = box_constraint_loss(x, boxes.to(device), labels.to(device), backend=backend, **kwargs)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach().cpu(), grad.cpu()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(
    "params", [dict(), dict(p_forall=3.0, p_exists=1.5), dict(stable=False)], ids=["default", "p", "unstable"]
)
def test_backend_matches_reference(backend, dtype, params):
    small = {}
    if backend == "triton":  # the interpreter is slow: one small case per dtype, the variants in float32
        if params and dtype != torch.float32:
            pytest.skip("variants are run in float32 under the Triton interpreter")
        small = dict(batch=2, classes=3, height=11, width=13, n=4)
    for seed in range(3 if backend != "triton" else 1):
        probs, boxes, labels = random_case(seed, dtype=dtype, **small)
        if not params.get("stable", True):
            probs = probs.clamp(0.02, 0.98)  # the unstable p-means have infinite slopes at 0
        expected = loss_and_grad(probs.double(), boxes, labels, "torch", **params)
        loss, grad = loss_and_grad(probs, boxes, labels, backend, **params)
        assert grad.dtype == dtype and loss.dtype == (torch.float32 if dtype == torch.float16 else dtype)
        torch.testing.assert_close(loss.double(), expected[0], **TOL[dtype])
        torch.testing.assert_close(grad.double(), expected[1], **TOL[dtype])


def test_reference_matches_ltntorch():
    """OUT and TIGHT written directly with LTNtorch's quantifiers and SatAgg."""
    ltn_ops = pytest.importorskip("ltn.fuzzy_ops")
    forall, exists = ltn_ops.AggregPMeanError(p=2), ltn_ops.AggregPMean(p=2)
    probs, boxes, labels = random_case(7)
    probs.requires_grad_()
    truths = []
    height, width = probs.shape[2:]
    for b in range(probs.shape[0]):
        items = []
        for k in range(boxes.shape[1]):
            if labels[b, k] < 0:
                continue
            x0, y0 = (max(0, int(torch.floor(v))) for v in boxes[b, k, :2])
            x1, y1 = min(width, int(torch.ceil(boxes[b, k, 2]))), min(height, int(torch.ceil(boxes[b, k, 3])))
            if x1 > x0 and y1 > y0:
                items.append((int(labels[b, k]), x0, y0, x1, y1))
        for c in sorted({item[0] for item in items}):
            inside = torch.zeros(height, width, dtype=torch.bool)
            for cls, x0, y0, x1, y1 in items:
                inside[y0:y1, x0:x1] |= cls == c
            if (~inside).any():
                truths.append(forall(ltn_ops.NotStandard()(probs[b, c]), dim=(0, 1), mask=~inside))
            else:
                truths.append(torch.ones((), dtype=probs.dtype))
        for c, x0, y0, x1, y1 in items:
            region = probs[b, c, y0:y1, x0:x1]
            truths.append(forall(torch.cat([exists(region, dim=1), exists(region, dim=0)]), dim=0))
    expected = 1 - ltn_ops.SatAgg()(*truths)
    ours = reference.box_constraint_loss(probs, boxes, labels)
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(torch.autograd.grad(ours, probs)[0], torch.autograd.grad(expected, probs)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_valid_box_gives_zero_with_zero_gradient(backend):
    probs = torch.rand(2, 3, 6, 7, dtype=torch.float64)
    padding = torch.tensor([[[0.0, 0, 3, 3], [2, 2, 2, 5]], [[9, 9, 12, 12], [1, 1, 4, 4]]], dtype=torch.float64)
    labels = torch.tensor([[-1, 0], [1, -1]])  # a degenerate box, a box outside, padding
    for args in [
        (probs, padding, labels),
        (probs[:0], padding[:0], labels[:0]),
        (probs, padding[:, :0], labels[:, :0]),
    ]:
        loss, grad = loss_and_grad(*args, backend)
        assert loss.item() == 0.0 and grad.shape == args[0].shape and not grad.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_raises_value_error(backend):
    probs, boxes, labels = random_case(0, dtype=torch.float32)
    nan_boxes = boxes.clone()
    nan_boxes[0, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        loss_and_grad(probs, nan_boxes, labels, backend)
    with pytest.raises(ValueError, match="labels"):
        loss_and_grad(probs, boxes, labels.clamp_min(0) + probs.shape[1] - 1 + (labels >= 0).long(), backend)
    with pytest.raises(ValueError, match="boxes"):
        box_constraint_loss(probs, boxes[..., :3], labels, backend=backend)
    with pytest.raises(ValueError, match="labels"):
        box_constraint_loss(probs, boxes, labels[:, :2], backend=backend)
    with pytest.raises(ValueError, match="probs"):
        box_constraint_loss(probs[0], boxes, labels, backend=backend)
    with pytest.raises(TypeError, match="labels"):
        box_constraint_loss(probs, boxes, labels.float(), backend=backend)
    with pytest.raises(ValueError, match="p_forall"):
        box_constraint_loss(probs, boxes, labels, p_forall=0.0, backend=backend)


def bad_value_case(dtype=torch.float32):
    """Class 0 has no box (the loss never reads its plane); class 1 has two boxes in image 0."""
    probs = torch.rand(2, 3, 9, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    boxes = torch.tensor([[[1.0, 1, 6, 5], [3, 2, 9, 8]], [[0, 0, 4, 4], [0, 0, 0, 0]]], dtype=torch.float64)
    return probs, boxes, torch.tensor([[1, 2], [1, -1]])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("params", [dict(), dict(p_forall=3.0, p_exists=1.5)], ids=["p2", "p"])
def test_nan_probs_give_nan(backend, params):
    """NaN in, NaN out, on every backend: a NaN the loss reads (inside a box, outside the boxes
    of its class) makes the loss and the gradient NaN by the kernels' own arithmetic (without the
    value check); a NaN it does not read (a class without a box) makes the loss NaN by the check."""
    probs, boxes, labels = bad_value_case()
    for where in [(0, 1, 2, 2), (0, 1, 8, 0), (1, 1, 8, 9)]:
        nan = probs.clone()
        nan[where] = float("nan")
        loss, grad = loss_and_grad(nan, boxes, labels, backend, check=False, **params)
        assert loss.isnan() and grad.isnan().any(), where
    unread = probs.clone()
    unread[0, 0, 4, 4] = float("nan")
    loss, grad = loss_and_grad(unread, boxes, labels, backend, **params)
    assert loss.isnan() and grad.isfinite().all()  # the gradient of what the loss reads
    assert loss_and_grad(unread, boxes, labels, backend, check=False, **params)[0].isfinite()


@pytest.mark.parametrize("backend", BACKENDS)
def test_probs_outside_0_1_raise(backend):
    probs, boxes, labels = bad_value_case()
    for bad in (1.3, -0.01, float("inf"), -float("inf")):
        wrong = probs.clone()
        wrong[0, 0, 4, 4] = bad  # a plane the loss does not even read
        with pytest.raises(ValueError, match=r"`probs` must be truth values in \[0, 1\]"):
            loss_and_grad(wrong, boxes, labels, backend)
    assert loss_and_grad(wrong, boxes, labels, backend, check=False)[0].isfinite()  # the plane is not read
    near = probs.clone()
    near[0, 1, 2, 2], near[0, 2, 3, 3] = 1.0005, -0.0005  # within the tolerance of 1e-3
    assert loss_and_grad(near, boxes, labels, backend)[0].isfinite()


@pytest.mark.parametrize("backend", BACKENDS)
def test_inverted_boxes_raise_and_empty_boxes_are_ignored(backend):
    probs, boxes, labels = bad_value_case()
    for inverted in ([6.0, 1, 1, 5], [1.0, 5, 6, 1]):
        wrong = boxes.clone()
        wrong[0, 1] = torch.tensor(inverted)
        with pytest.raises(ValueError, match=r"x1 >= x0 and y1 >= y0.*box \[0, 1\]"):
            loss_and_grad(probs, wrong, labels, backend)
    padding = boxes.clone()
    padding[1, 1] = torch.tensor([6.0, 1, 1, 5])  # an inverted padding row is not looked at
    expected = loss_and_grad(probs, boxes, labels, backend)
    torch.testing.assert_close(loss_and_grad(probs, padding, labels, backend), expected)
    # Zero width or height at integer coordinates covers no pixel: the box is ignored.
    empty = torch.cat([boxes, torch.tensor([[[4.0, 1, 4, 7]], [[2.0, 3, 8, 3]]], dtype=torch.float64)], dim=1)
    more = torch.cat([labels, torch.tensor([[2], [0]])], dim=1)
    torch.testing.assert_close(loss_and_grad(probs, empty, more, backend), expected)


def test_gradcheck_cpu():
    probs, boxes, labels = random_case(3, batch=2, classes=2, height=4, width=5, n=3)
    probs = probs.clamp(0.05, 0.95).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda p: box_constraint_loss(p, boxes, labels, backend="cpu", p_exists=3.0), (probs,)
    )


def test_opcheck():
    probs, boxes, labels = random_case(4, batch=2, classes=3, height=7, width=8, n=4)
    lines, outside, _ = torch.ops.wsseg_fast.box_constraint_stats(probs, boxes, labels, 2.0, 2.0, True)
    torch.library.opcheck(
        torch.ops.wsseg_fast.box_constraint_stats.default, (probs.requires_grad_(), boxes, labels, 2.0, 3.0, True)
    )
    torch.library.opcheck(
        torch.ops.wsseg_fast.box_constraint_grad.default,
        (torch.rand_like(lines), torch.rand_like(outside), probs.detach(), boxes, labels, 2.0, 2.0, False),
    )


def test_torch_compile_fullgraph_cpu():
    probs, boxes, labels = random_case(5, dtype=torch.float32)

    def step(logits):
        return box_constraint_loss(torch.sigmoid(logits), boxes, labels, backend="cpu")

    logits = torch.randn(probs.shape, requires_grad=True)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(logits)
    (grad,) = torch.autograd.grad(loss, logits)
    expected = step(logits)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, torch.autograd.grad(expected, logits)[0])
    nan = logits.detach().clone()
    nan[0, 0, 0, 0] = float("nan")  # the value check is traced without its raise: NaN still propagates
    assert compiled(nan.requires_grad_()).isnan()


@pytest.mark.slow
@pytest.mark.triton
def test_triton_kernels_compile_for_gpu():
    from tests.helpers import compile_triton_for_gpu

    common = {"N": "i32", "C": "i32", "H": "i32", "W": "i32", "p_forall": "fp32", "p_exists": "fp32"}
    ptrs = ["probs_ptr", "bounds_ptr", "labels_ptr", "valid_ptr", "rep_ptr"]
    kinds = {"probs_ptr": "*fp16", "bounds_ptr": "*i32", "labels_ptr": "*i32", "valid_ptr": "*i32", "rep_ptr": "*i32"}
    stats = dict({p: kinds[p] for p in ptrs}, lines_ptr="*fp32", outside_ptr="*fp32", count_ptr="*fp32", **common)
    grad = dict(
        {"grad_lines_ptr": "*fp32", "grad_outside_ptr": "*fp32"},
        **{p: kinds[p] for p in ptrs},
        grad_ptr="*fp16",
        **common,
    )
    variant = dict(STABLE=True, PF_IS_2=True, PE_IS_2=False, BLOCK_R=16, BLOCK_W=128)
    sizes = compile_triton_for_gpu("wsseg_fast.kernels.box_constraint", "_stats_kernel", stats, [variant], (80,))
    sizes += compile_triton_for_gpu("wsseg_fast.kernels.box_constraint", "_grad_kernel", grad, [variant], (80,))
    assert all(size > 1000 for size in sizes)
