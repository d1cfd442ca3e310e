"""The operators against LTNtorch (the test-only oracle): values and gradients."""

from __future__ import annotations

import pytest
import torch

from wsseg_fast import fuzzy

ltn_ops = pytest.importorskip("ltn.fuzzy_ops")


def _pair(seed: int):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(5, 7, generator=g, dtype=torch.float64)
    b = torch.rand(5, 7, generator=g, dtype=torch.float64)
    a[0, :3] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)  # the edges of [0, 1]
    b[0, :3] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    return a.requires_grad_(), b.requires_grad_()


def _assert_same(ours, theirs, inputs):
    torch.testing.assert_close(ours, theirs.to(ours.dtype))
    w = torch.rand_like(ours)
    g1 = torch.autograd.grad((ours * w).sum(), inputs, allow_unused=True)
    g2 = torch.autograd.grad((theirs * w).sum(), inputs, allow_unused=True)
    for x, y in zip(g1, g2):
        if x is None or y is None:
            assert x is None and y is None or float((x if x is not None else y).abs().sum()) == 0
        else:
            torch.testing.assert_close(x, y, equal_nan=True)  # unstable Goguen: 0/0 in both


BINARY = [
    ("and_prod", lambda s: ltn_ops.AndProd(stable=s), True),
    ("and_luk", lambda s: ltn_ops.AndLuk(), False),
    ("and_min", lambda s: ltn_ops.AndMin(), False),
    ("or_prob_sum", lambda s: ltn_ops.OrProbSum(stable=s), True),
    ("or_luk", lambda s: ltn_ops.OrLuk(), False),
    ("or_max", lambda s: ltn_ops.OrMax(), False),
    ("implies_reichenbach", lambda s: ltn_ops.ImpliesReichenbach(stable=s), True),
    ("implies_goguen", lambda s: ltn_ops.ImpliesGoguen(stable=s), True),
    ("implies_kleene_dienes", lambda s: ltn_ops.ImpliesKleeneDienes(), False),
    ("implies_godel", lambda s: ltn_ops.ImpliesGodel(), False),
    ("implies_luk", lambda s: ltn_ops.ImpliesLuk(), False),
]


CASES = [(name, theirs, has, stable) for name, theirs, has in BINARY for stable in ((True, False) if has else (True,))]


@pytest.mark.parametrize(
    "name,theirs,has_stable,stable", CASES, ids=[f"{c[0]}-{'stable' if c[3] else 'plain'}" for c in CASES]
)
def test_connectives_match_ltn(name, theirs, has_stable, stable):
    a, b = _pair(1)
    ours = getattr(fuzzy, name)
    out = ours(a, b, stable=stable) if has_stable else ours(a, b)
    _assert_same(out, theirs(stable)(a, b), (a, b))


def test_negation_and_equivalence_match_ltn():
    a, b = _pair(2)
    _assert_same(fuzzy.negation(a), ltn_ops.NotStandard()(a), (a,))
    theirs = ltn_ops.Equiv(ltn_ops.AndProd(), ltn_ops.ImpliesReichenbach())(a, b)
    _assert_same(fuzzy.equivalence(a, b), theirs, (a, b))
    theirs = ltn_ops.Equiv(ltn_ops.AndMin(), ltn_ops.ImpliesGodel())(a, b)
    _assert_same(fuzzy.equivalence(a, b, fuzzy.and_min, fuzzy.implies_godel), theirs, (a, b))


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("stable", [True, False])
@pytest.mark.parametrize("dim", [None, 0, 1, (0, 1)])
def test_quantifiers_match_ltn(p, stable, dim):
    a, _ = _pair(3)
    a = a.detach().clamp(0.05, 0.95).requires_grad_()  # unstable p-means have infinite slopes at the edges
    mask = torch.rand(a.shape, generator=torch.Generator().manual_seed(4)) > 0.3
    mask[:, 0] = True  # no empty domain along either dim: LTN gives NaN there
    for ours, theirs in ((fuzzy.pmean, ltn_ops.AggregPMean), (fuzzy.pmean_error, ltn_ops.AggregPMeanError)):
        _assert_same(ours(a, dim, p=p, stable=stable), theirs(p=p, stable=stable)(a, dim=dim), (a,))
        _assert_same(
            ours(a, dim, p=p, stable=stable, mask=mask), theirs(p=p, stable=stable)(a, dim=dim, mask=mask), (a,)
        )


def test_sat_agg_matches_ltn():
    truths = torch.rand(6, dtype=torch.float64, requires_grad=True)
    theirs = ltn_ops.SatAgg()(*truths.unbind())
    _assert_same(fuzzy.sat_agg(truths), theirs, (truths,))
    # weights are a multiset: weight 2 = the formula counted twice
    doubled = ltn_ops.SatAgg()(*truths.unbind(), truths[0])
    weights = torch.tensor([2.0, 1, 1, 1, 1, 1], dtype=torch.float64)
    torch.testing.assert_close(fuzzy.sat_agg(truths, weights), doubled)


def test_empty_domains():
    x = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[0, 1] = True
    forall = fuzzy.forall(x, 1, mask=mask)
    exists = fuzzy.exists(x, 1, mask=mask)
    assert forall[1:].tolist() == [1.0, 1.0] and exists[1:].tolist() == [0.0, 0.0]
    (forall.sum() + exists.sum()).backward()
    assert torch.isfinite(x.grad).all() and (x.grad[1:] == 0).all() and x.grad[0, 1] != 0
    empty = torch.zeros(0, dtype=torch.float64)
    assert fuzzy.forall(empty).item() == 1.0 and fuzzy.exists(empty).item() == 0.0


def test_mask_errors_name_the_argument():
    x = torch.rand(3, 4)
    with pytest.raises(ValueError, match="mask"):
        fuzzy.forall(x, mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask"):
        fuzzy.exists(x, mask=torch.ones(3, 4))
