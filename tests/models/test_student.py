import pytest
import torch

from wsseg_fast.models.student import MultiHeadUNet, UNet, build_student


@pytest.mark.parametrize("shape", [(32, 32), (37, 45), (1, 1)])
def test_unet_keeps_any_size(shape):
    model = UNet(4, widths=(4, 8, 16))
    out = model(torch.randn(2, 3, *shape))
    assert out.shape == (2, 4, *shape)


def test_unet_gradients_reach_every_parameter():
    model = UNet(3, widths=(4, 8))
    model(torch.randn(1, 3, 20, 12)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_multihead_returns_every_head_and_predicts_with_the_primary():
    torch.manual_seed(0)
    model = MultiHeadUNet(3, heads=("pseudo", "gt", "box"), widths=(4, 8)).eval()
    x = torch.randn(2, 3, 17, 23)
    out = model(x)
    assert list(out) == ["pseudo", "gt", "box"]
    assert all(v.shape == (2, 3, 17, 23) for v in out.values())
    torch.testing.assert_close(model.predict(x), out["gt"])
    assert not torch.equal(out["gt"], out["box"])  # separate heads


def test_build_student_and_bad_arguments():
    assert isinstance(build_student("unet", 2, widths=(4, 8)), UNet)
    assert isinstance(build_student("multihead", 2, widths=(4, 8), heads=("gt",)), MultiHeadUNet)
    with pytest.raises(ValueError, match="arch"):
        build_student("resnet", 2)
    with pytest.raises(ValueError, match="num_classes"):
        UNet(0)
    with pytest.raises(ValueError, match="widths"):
        UNet(2, widths=(8,))
    with pytest.raises(ValueError, match="primary"):
        MultiHeadUNet(2, heads=("cam", "box"))
    with pytest.raises(ValueError, match="distinct"):
        MultiHeadUNet(2, heads=("gt", "gt"))
