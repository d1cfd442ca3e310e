"""The CAM classifier and its loss (random weights, tiny inputs)."""

from __future__ import annotations

import pytest
import torch

from wsseg_fast.models.cam import (
    CamClassifier,
    CamDecoder,
    cam_loss,
    masked_mean,
    perceptual_loss,
    resnet50_body,
    valid_cells,
    vgg16_features,
)


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


def test_decoder_reconstructs_at_four_times_the_cam_grid_in_unit_range():
    torch.manual_seed(0)
    out = CamDecoder(3, width=8)(torch.randn(2, 3, 5, 6))
    assert out.shape == (2, 3, 20, 24) and 0 <= out.min() and out.max() <= 1


def test_perceptual_loss_matches_a_plain_pytorch_computation():
    torch.manual_seed(0)
    vgg = vgg16_features()  # random weights: the formula, not the features, is under test
    assert not any(p.requires_grad for p in vgg.parameters()) and not vgg.training
    recon = torch.rand(2, 3, 16, 16, requires_grad=True)
    target = torch.rand(2, 3, 16, 16)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    plain = ((vgg((recon - mean) / std) - vgg((target - mean) / std)) ** 2).mean()
    loss = perceptual_loss(vgg, recon, target)
    assert torch.allclose(loss, plain, rtol=1e-5)
    loss.backward()
    assert recon.grad.abs().sum() > 0  # the loss reaches the reconstruction
    assert perceptual_loss(vgg, target, target) == 0
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        perceptual_loss(vgg, recon, target[:, :, :8])


def test_resnet_backbone_cams_at_stride_32_and_weights_of_another_network_refused(tmp_path):
    torch.manual_seed(0)
    net = CamClassifier(2048, 3, hidden=8, backbone=resnet50_body())
    logits, _, cams = net(torch.randn(2, 3, 64, 96))
    assert logits.shape == (2, 3) and cams.shape == (2, 3, 2, 3)
    with pytest.raises(ValueError, match=r"images must be \[B, 3, h, w\]"):
        net(torch.randn(1, 2048, 2, 2))
    body = resnet50_body()
    torch.save({"conv1.weight": body[0].weight}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="--backbone-weights .*partial.pt: not a state dict of torchvision's resnet50"):
        resnet50_body(str(tmp_path / "partial.pt"))
    torch.save(vgg16_features(layers=2).state_dict(), tmp_path / "vgg.pt")
    with pytest.raises(ValueError, match="not a state dict of torchvision's resnet50"):
        resnet50_body(str(tmp_path / "vgg.pt"))
    # a torchvision resnet50 state dict (fc included) loads
    full = {
        f"{name}.{k}": v
        for name, m in zip(("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"), body)
        for k, v in m.state_dict().items()
    }
    full["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(full, tmp_path / "r50.pt")
    assert torch.equal(resnet50_body(str(tmp_path / "r50.pt"))[0].weight, body[0].weight)
    # VGG weights: whole vgg16 or its features alone
    torch.save({"features." + k: v for k, v in vgg16_features().state_dict().items()}, tmp_path / "vgg16.pt")
    assert len(vgg16_features(str(tmp_path / "vgg16.pt")).state_dict()) == 8
    with pytest.raises(ValueError, match="--vgg-weights .*not a state dict of torchvision's vgg16"):
        vgg16_features(str(tmp_path / "r50.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="--vgg-weights .*junk.pt: not a torch state dict"):
        vgg16_features(str(tmp_path / "junk.pt"))
