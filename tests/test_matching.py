"""HungarianMatcher and PromptSetCriterion against DETR's per-image matcher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsseg_fast.matching import HungarianMatcher, PromptSetCriterion, assignment_to_pairs
from wsseg_fast.reference.matching import match_per_image


def make_batch(batch, queries, classes, sizes, seed=0, k=2, d=16):
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(batch, queries, classes + 1, generator=g),
        "pred_prompts": torch.randn(batch, queries, k, d, generator=g),
    }
    targets = [
        {"labels": torch.randint(0, classes, (n,), generator=g), "prompts": torch.randn(n, k, d, generator=g)}
        for n in sizes
    ]
    return outputs, targets


def pair_cost(outputs, targets, pairs):
    """Total cost of `pairs` under the reference matcher's cost (float64)."""
    total = 0.0
    for b, (q, t) in enumerate(pairs):
        prob = outputs["pred_logits"][b].double().softmax(-1)
        pred = outputs["pred_prompts"][b].flatten(1).double()
        tgt = targets[b]["prompts"].flatten(1).double()
        cost = -10 * prob[:, targets[b]["labels"]] + torch.cdist(pred, tgt)
        total += float(cost[q, t].sum())
    return total


@pytest.mark.parametrize("sizes", [[3, 0, 7, 25], [1, 1, 1, 1], [30, 2, 40, 5]])
def test_same_total_cost_as_per_image_scipy(sizes):
    """Q=25 queries; images with no target, with T < Q, and with T > Q (only Q matched)."""
    for seed in range(5):
        outputs, targets = make_batch(len(sizes), 25, 7, sizes, seed=seed)
        ours = HungarianMatcher()(outputs, targets)
        theirs = match_per_image(outputs, targets)
        for (q, t), size in zip(ours, sizes):
            assert len(q) == len(t) == min(25, size)
            assert torch.all(q[1:] > q[:-1])  # sorted by query, distinct
            assert len(set(t.tolist())) == len(t)
        assert pair_cost(outputs, targets, ours) == pytest.approx(pair_cost(outputs, targets, theirs), rel=1e-6)


def test_match_tensor_form_and_pairs_agree():
    outputs, targets = make_batch(3, 10, 4, [4, 0, 10])
    assignment = HungarianMatcher().match(outputs, targets)
    assert assignment.shape == (3, 10)
    assert (assignment[1] == -1).all() and (assignment[0] >= 0).sum() == 4 and (assignment[2] >= 0).all()
    for b, (q, t) in enumerate(assignment_to_pairs(assignment, [4, 0, 10])):
        assert torch.equal(assignment[b, q], t)


def test_empty_targets_and_queries():
    outputs, targets = make_batch(2, 5, 3, [0, 0])
    pairs = HungarianMatcher()(outputs, targets)
    assert all(len(q) == 0 for q, _ in pairs)


def test_criterion_values_match_a_direct_computation():
    classes, queries = 4, 6
    outputs, targets = make_batch(2, queries, classes, [2, 3], seed=3)
    outputs = {k: v.requires_grad_() for k, v in outputs.items()}
    criterion = PromptSetCriterion(classes, no_object_weight=0.5)
    losses = criterion(outputs, targets)
    pairs = match_per_image(outputs, targets)
    target_class = torch.full((2, queries), classes)
    reg = torch.zeros(2, queries)
    for b, (q, t) in enumerate(pairs):
        target_class[b, q] = targets[b]["labels"][t]
        reg[b, q] = F.smooth_l1_loss(outputs["pred_prompts"][b, q], targets[b]["prompts"][t], reduction="none").mean(
            (1, 2)
        )
    weight = torch.tensor([1.0] * classes + [0.5])
    expected_cls = 5 * F.cross_entropy(outputs["pred_logits"].transpose(1, 2), target_class, weight=weight)
    expected_reg = 20 * reg.sum() / reg.numel()
    assert float(losses["loss_cls"]) == pytest.approx(float(expected_cls), rel=1e-5)
    assert float(losses["loss_reg"]) == pytest.approx(float(expected_reg), rel=1e-5)
    losses["loss"].backward()
    assert outputs["pred_logits"].grad.abs().sum() > 0 and outputs["pred_prompts"].grad.abs().sum() > 0


def test_bad_inputs_are_named():
    outputs, targets = make_batch(2, 5, 3, [1, 2])
    with pytest.raises(ValueError, match="outputs hold 2 images but targets 1"):
        HungarianMatcher()(outputs, targets[:1])
    with pytest.raises(ValueError, match=r"targets\[1\] needs 'labels'"):
        HungarianMatcher()(outputs, [targets[0], {"labels": torch.zeros(1, dtype=torch.long)}])
    bad = dict(targets[0], prompts=torch.zeros(1, 3, 16))
    with pytest.raises(ValueError, match="tokens of shape"):
        HungarianMatcher()(outputs, [bad, targets[1]])
    with pytest.raises(ValueError, match="num_classes"):
        PromptSetCriterion(5)(outputs, targets)
    with pytest.raises(ValueError, match="pred_logits"):
        HungarianMatcher()({"pred_logits": torch.zeros(2, 5)}, targets)
