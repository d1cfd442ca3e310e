import math

import pytest
import torch

from wsseg_fast.metrics import SegmentationMeter, confusion_matrix, markdown_table, scores


def test_hand_computed_example():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 3]])
    cm = confusion_matrix(pred, target, num_classes=4)
    assert cm.sum() == 7  # the ignored pixel is not counted
    r = scores(cm, ["bg", "a", "b", "c"])
    # class 0: tp 1, target 2, pred 2 -> IoU 1/3; class 1: tp 2, target 3, pred 3 -> 2/4
    # class 2: tp 1, target 2, pred 1 -> 1/2; class 3: absent from target, predicted once -> IoU 0
    assert r["per_class"]["bg"]["iou"] == pytest.approx(1 / 3)
    assert r["per_class"]["a"]["iou"] == pytest.approx(1 / 2)
    assert r["per_class"]["b"]["iou"] == pytest.approx(1 / 2)
    assert r["per_class"]["c"]["iou"] == 0.0
    assert math.isnan(r["per_class"]["c"]["acc"])  # no target pixels: recall undefined
    assert r["miou"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2 + 0) / 4)
    assert r["macc"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert r["pixel_accuracy"] == pytest.approx(4 / 7)
    assert r["per_class"]["a"]["dice"] == pytest.approx(2 * 2 / (3 + 3))
    assert "| a | 50.00 |" in markdown_table(r)


def test_perfect_prediction_and_absent_classes():
    target = torch.randint(0, 3, (5, 7))
    r = scores(confusion_matrix(target, target, num_classes=5))
    assert r["miou"] == 1.0 and r["pixel_accuracy"] == 1.0
    assert math.isnan(r["per_class"]["4"]["iou"])  # absent everywhere: excluded from the mean


def test_meter_accumulates_like_one_big_image():
    g = torch.Generator().manual_seed(0)
    preds = [torch.randint(0, 4, (6, 5), generator=g) for _ in range(3)]
    targets = [torch.randint(0, 4, (6, 5), generator=g) for _ in range(3)]
    meter = SegmentationMeter(4)
    for p, t in zip(preds, targets):
        meter.update(p, t)
    whole = scores(confusion_matrix(torch.cat(preds), torch.cat(targets), 4))
    assert meter.compute() == whole


def test_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="pred has labels outside"):
        confusion_matrix(torch.full((2, 2), 7), torch.zeros(2, 2, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), 2)
