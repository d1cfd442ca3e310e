import numpy as np
import pytest
import torch

from wsseg_fast.ops.color import rgb_to_lab, to_unit_rgb


def test_rgb_to_lab_matches_scikit_image():
    skcolor = pytest.importorskip("skimage.color")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 17, 9), dtype=torch.uint8, generator=g)
    images[0, :, 0, :3] = 0  # the dark branch of both nonlinearities
    ours = rgb_to_lab(images)
    for b in range(2):
        theirs = skcolor.rgb2lab(images[b].permute(1, 2, 0).numpy())
        np.testing.assert_allclose(ours[b].permute(1, 2, 0).numpy(), theirs, atol=2e-3)


def test_uint8_and_float_inputs_agree():
    images = torch.randint(0, 256, (1, 3, 5, 5), dtype=torch.uint8)
    torch.testing.assert_close(rgb_to_lab(images), rgb_to_lab(images.double() / 255))


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(1, 4, 2, 2), r"\[B, 3, H, W\]"),
        (torch.zeros(3, 2, 2), r"\[B, 3, H, W\]"),
        (torch.full((1, 3, 2, 2), 2.0), r"\[0, 1\]"),
        (torch.full((1, 3, 2, 2), float("nan")), r"\[0, 1\]"),
    ],
)
def test_bad_images_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        to_unit_rgb(bad, "images")


def test_integer_non_uint8_raises():
    with pytest.raises(TypeError, match="uint8"):
        to_unit_rgb(torch.zeros(1, 3, 2, 2, dtype=torch.int32), "images")
