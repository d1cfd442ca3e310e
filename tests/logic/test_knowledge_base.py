"""Knowledge bases compiled from COCO-style weak annotations."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from tests.helpers import backends_here, device_of
from wsseg_fast.logic import KnowledgeBase, compile_knowledge_base, forall, implies_reichenbach, sat_agg

NAMES = ["background", "disc", "cup"]


def refuge_like(height=16, width=20):
    """Two images: a disc box containing a cup box, points, a scribble, tags."""
    anns = [
        {
            "annotations": [
                {"bbox": [4, 3, 10, 9], "category_id": 1, "points": [[8, 7]]},
                {"bbox": [7, 5, 4, 4], "category_id": 2, "scribbles": [[[7.5, 6.0], [10.0, 8.0]]]},
            ],
            "tags": ["background"],
        },
        [{"bbox": [0, 0, 6, 5], "category_id": 1}, {"category_id": 2}],  # a tag-only annotation
    ]
    masks = torch.zeros(2, 3, height, width)
    masks[0, 1, 3:12, 4:14] = 1
    masks[0, 2, 5:9, 7:11] = 1
    masks[1, 1, 0:5, 0:6] = 1
    masks[1, 2, 1:3, 1:3] = 1
    masks[:, 0] = 1 - masks[:, 1]
    return anns, masks


def test_compiles_every_kind_and_trains():
    anns, masks = refuge_like()
    images = torch.rand(2, 3, 16, 20)
    kb = compile_knowledge_base(
        anns,
        3,
        (16, 20),
        class_names=NAMES,
        images=images,
        exhaustive=False,
        priors={"contains": [("cup", "disc")], "excludes": [("background", "cup")], "box_size": (0.3, 1.0)},
        weights={"pairwise": 0.5},
    )
    assert kb.names() == [
        "boxes",
        "box_size",
        "points",
        "scribbles",
        "tags_present",
        "contains[cup->disc]",
        "excludes[background,cup]",
        "pairwise",
    ]
    logits = torch.zeros(2, 3, 16, 20, requires_grad=True)
    loss, sat = kb(torch.sigmoid(logits))
    loss.backward()
    assert set(sat) == set(kb.names()) and all(0 <= v <= 1 for v in sat.values())
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # the masks the annotations describe satisfy the knowledge base better than a blank guess
    good, _ = kb(masks.clamp(0.02, 0.98))
    assert good < loss


def test_loss_is_one_minus_satagg_and_weights_repeat():
    anns, masks = refuge_like()
    kb = compile_knowledge_base(anns, 3, (16, 20), class_names=NAMES, weights={"points": 2.0})
    probs = torch.rand(2, 3, 16, 20, dtype=torch.float64)
    truths = kb.truths(probs)
    loss, _ = kb(probs)
    values = list(truths.values()) + [truths["points"]]  # weight 2 = counted twice
    torch.testing.assert_close(loss, 1 - sat_agg(torch.stack(values)))
    ltn_ops = pytest.importorskip("ltn.fuzzy_ops")
    torch.testing.assert_close(loss, 1 - ltn_ops.SatAgg()(*values))


def test_points_and_scribbles_read_the_right_pixels():
    anns = [{"bbox": [0, 0, 2, 2], "category_id": 1, "points": [[8, 7], [3.9, 2.2]], "scribbles": [[[2, 10], [5, 10]]]}]
    kb = compile_knowledge_base(anns, 3, (16, 20))
    probs = torch.full((1, 3, 16, 20), 0.5, dtype=torch.float64)
    probs[0, 1, 7, 8] = probs[0, 1, 2, 3] = 0.9
    probs[0, 1, 10, 2:6] = 0.2
    truths = kb.truths(probs)
    torch.testing.assert_close(truths["points"], forall(torch.tensor([0.9, 0.9], dtype=torch.float64)))
    torch.testing.assert_close(truths["scribbles"], forall(torch.full((4,), 0.2, dtype=torch.float64)))


def test_coco_boxes_are_scaled_and_exhaustive_tags():
    # annotated at 160 x 200, probs at 16 x 20: the box [40, 30, 100, 90] -> x 4..14, y 3..12
    anns = [{"bbox": [40, 30, 100, 90], "category_id": 7}]
    kb = compile_knowledge_base(
        anns, 3, (16, 20), category_map={7: 1}, annotation_size=(160, 200), exhaustive=True, background=0
    )
    assert kb.names() == ["boxes", "tags_present", "tags_absent"]
    _, masks = refuge_like()
    good = masks[:1].clone()
    good[0, 2] = 0  # the cup is absent in this annotation
    bad = good.roll(5, dims=3)
    assert kb(good.clamp(0.01, 0.99))[1]["boxes"] > kb(bad.clamp(0.01, 0.99))[1]["boxes"]
    assert kb(good.clamp(0.01, 0.99))[1]["tags_absent"] > 0.98


def test_user_formula_and_batch_checks():
    kb = KnowledgeBase(batch_size=2, num_classes=3, image_size=(4, 5))
    kb.add("cup->disc", lambda p: forall(implies_reichenbach(p[:, 2], p[:, 1])))
    probs = torch.rand(2, 3, 4, 5, requires_grad=True)
    loss, sat = kb(probs)
    loss.backward()
    assert probs.grad[:, 0].abs().sum() == 0 and probs.grad[:, 1:].abs().sum() > 0
    with pytest.raises(ValueError, match=r"\[2, 3, 4, 5\]"):
        kb(torch.rand(1, 3, 4, 5))
    with pytest.raises(ValueError, match="exists"):
        kb.add("cup->disc", lambda p: p.mean())


@pytest.mark.interpreter_heavy
@pytest.mark.parametrize("backend", backends_here("box_constraint_loss"))
def test_nan_and_out_of_range_probabilities(backend, monkeypatch):
    """On every backend of the fused formulas: a NaN anywhere in probs makes every truth and the
    loss NaN; a value beyond 1e-3 outside [0, 1] raises naming probs. The knowledge base checks
    probs once; its fused box and pairwise formulas do not check again."""
    for module in ("box_constraint", "pairwise_constraint"):
        monkeypatch.setattr(sys.modules[f"wsseg_fast.ops.{module}"], "check_truth_values", None)
    anns, masks = refuge_like()
    images = torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(0))
    kb = compile_knowledge_base(
        anns, 3, (16, 20), class_names=NAMES, images=images, priors={"box_size": (0.2, 1.0)}, backend=backend
    )
    probs = masks.clamp(0.1, 0.9).to(device_of(backend))
    assert torch.isfinite(kb(probs)[0])
    for where in [(0, 1, 5, 8), (1, 2, 15, 19)]:  # inside a box; a corner no box, point or scribble reads
        nan = probs.clone()
        nan[where] = float("nan")
        assert all(truth.isnan() for truth in kb.truths(nan).values())
        loss, satisfaction = kb(nan)
        assert loss.isnan() and all(math.isnan(v) for v in satisfaction.values())
    for bad in (1.2, -0.1):
        wrong = probs.clone()
        wrong[1, 0, 0, 0] = bad
        with pytest.raises(ValueError, match=r"KnowledgeBase: `probs` must be truth values in \[0, 1\]"):
            kb(wrong)


def test_bad_annotations_raise():
    with pytest.raises(ValueError, match="class name"):
        compile_knowledge_base([{"category_id": 1}], 3, (8, 8), priors={"contains": [("cup", "disc")]})
    with pytest.raises(ValueError, match="bbox"):
        compile_knowledge_base([{"bbox": [0, 0, -1, 2], "category_id": 1}], 3, (8, 8))
    with pytest.raises(ValueError, match="channel"):
        compile_knowledge_base([{"bbox": [0, 0, 1, 2], "category_id": 5}], 3, (8, 8))
    with pytest.raises(ValueError, match="category_map"):
        compile_knowledge_base([{"category_id": 5}], 3, (8, 8), category_map={1: 1})
    with pytest.raises(TypeError, match="annotations"):
        compile_knowledge_base("boxes", 3, (8, 8))
