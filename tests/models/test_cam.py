"""The CAM classifier and its loss (random weights, tiny inputs)."""

from __future__ import annotations

import pytest
import torch

from wsseg_fast.models.cam import CamClassifier, cam_loss, masked_mean, valid_cells


def test_shapes_and_cams_are_the_head_on_the_features():
    torch.manual_seed(0)
    net = CamClassifier(8, 3, hidden=6, num_subclasses=5)
    x = torch.randn(2, 8, 4, 5)
    logits, sub, cams = net(x)
    assert logits.shape == (2, 3) and sub.shape == (2, 5) and cams.shape == (2, 3, 4, 5)
    assert torch.allclose(cams, net.cams(x))
    # image logits = mean of the CAMs (global average pooling)
    assert torch.allclose(logits, cams.mean((2, 3)), atol=1e-6)
    assert CamClassifier(8, 3)(x)[1] is None


def test_masked_mean_averages_only_valid_cells():
    maps = torch.randn(2, 3, 4, 4)
    valid = torch.zeros(2, 1, 4, 4)
    valid[0, :, :2, :3] = 1
    valid[1] = 1
    out = masked_mean(maps, valid)
    assert torch.allclose(out[0], maps[0, :, :2, :3].mean((1, 2)), atol=1e-6)
    assert torch.allclose(out[1], maps[1].mean((1, 2)), atol=1e-6)


def _bce(logits, targets):  # plain formula
    p = torch.sigmoid(logits.double())
    return -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()


def test_loss_terms_match_plain_bce():
    torch.manual_seed(1)
    logits, sub = torch.randn(4, 3), torch.randn(4, 6)
    t, ts = (torch.rand(4, 3) > 0.5).double(), (torch.rand(4, 6) > 0.5).double()
    terms = cam_loss(logits, t, sub, ts)
    assert torch.allclose(terms["bce"].double(), _bce(logits, t), atol=1e-6)
    assert torch.allclose(terms["sub_bce"].double(), 0.5 * _bce(sub, ts), atol=1e-6)
    assert torch.allclose(terms["total"], terms["bce"] + terms["sub_bce"])
    assert set(cam_loss(logits, t)) == {"bce", "total"}


def test_bad_inputs_raise_one_clear_error():
    with pytest.raises(ValueError, match="num_classes"):
        CamClassifier(8, 0)
    with pytest.raises(ValueError, match=r"\[B, 8, h, w\]"):
        CamClassifier(8, 2)(torch.randn(1, 7, 4, 4))


def test_valid_cells_cover_the_resized_image():
    assert valid_cells((64, 48), 64, 4) == (4, 3)
    assert valid_cells((1024, 768), 1024, 64) == (64, 48)
    assert valid_cells((1024, 770), 1024, 64) == (64, 49)  # a partly covered cell counts
