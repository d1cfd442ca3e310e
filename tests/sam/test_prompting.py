"""predict_masks: many prompts of one image in one decoder call == one call per prompt."""

import numpy as np
import pytest
import torch

from wsseg_fast.sam import Embedding, build_model, build_sam, predict_masks
from wsseg_fast.sam.model import preprocess
from wsseg_fast.sam.prompting import MAX_ZOOM, ZOOM_CONTEXT, zoom_factor, zoom_window


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return build_model("tiny", with_encoder=False)


@pytest.fixture(scope="module")
def embedding():
    g = torch.Generator().manual_seed(1)
    return Embedding(torch.randn(256, 16, 16, generator=g), original_size=(120, 200), input_size=(154, 256))


def test_batched_equals_one_by_one(sam, embedding):
    boxes = torch.tensor([[10.0, 5, 80, 60], [50, 40, 190, 110], [0, 0, 199, 119]])
    with torch.inference_mode():
        together = predict_masks(sam, embedding, boxes=boxes, multimask_output=True)
        alone = [predict_masks(sam, embedding, boxes=b[None], multimask_output=True) for b in boxes]
    assert together.logits.shape == (3, 3, 120, 200) and together.scores.shape == (3, 3)
    assert together.low_res_logits.shape == (3, 3, 64, 64)
    for i, one in enumerate(alone):
        torch.testing.assert_close(together.logits[i], one.logits[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(together.scores[i], one.scores[0], atol=1e-5, rtol=1e-5)


def test_prompts_are_mapped_to_the_input_frame(sam, embedding):
    # a box in original pixels == the same box scaled (as SAM's ResizeLongestSide) to the input frame
    box = np.array([[20.0, 10, 120, 90]])
    with torch.inference_mode():
        a = predict_masks(sam, embedding, boxes=box)
        b = predict_masks(sam, embedding.tensor, boxes=box * np.array([256 / 200, 154 / 120] * 2))
    torch.testing.assert_close(a.low_res_logits, b.low_res_logits, atol=1e-5, rtol=1e-5)
    assert b.logits.shape[-2:] == (256, 256)  # the input frame: one resize, bit-equal to SAM's two
    assert torch.equal(
        b.logits, sam.module.postprocess_masks(b.low_res_logits, input_size=(256, 256), original_size=(256, 256))
    )


def test_output_size_upsamples_the_low_res_masks_once(sam, embedding):
    box = np.array([[20.0, 10, 120, 90]])
    with torch.inference_mode():
        full = predict_masks(sam, embedding, boxes=box)
        half = predict_masks(sam, embedding, boxes=box, output_size=(60, 100))
    torch.testing.assert_close(half.low_res_logits, full.low_res_logits)
    expected = sam.module.postprocess_masks(full.low_res_logits, input_size=(154, 256), original_size=(60, 100))
    torch.testing.assert_close(half.logits, expected)
    assert half.logits.shape[-2:] == (60, 100)


def test_points_masks_and_gradients(sam, embedding):
    points = torch.tensor([[[30.0, 30], [60, 50]], [[100, 80], [0, 0]]])
    labels = torch.tensor([[1, 0], [1, -1]])
    out = predict_masks(sam, embedding, points=points, point_labels=labels)
    assert out.masks.dtype == torch.bool and out.masks.shape == (2, 1, 120, 200)
    refined = predict_masks(sam, embedding, points=points, point_labels=labels, mask_inputs=out.low_res_logits.detach())
    assert refined.logits.shape == (2, 1, 120, 200)
    refined.logits.mean().backward()  # fine-tuning needs gradients to the decoder
    assert sam.mask_decoder.iou_token.weight.grad is not None
    sam.module.zero_grad(set_to_none=True)


def test_bad_prompts(sam, embedding):
    with pytest.raises(ValueError, match="boxes must be"):
        predict_masks(sam, embedding, boxes=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="go together"):
        predict_masks(sam, embedding, points=torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="give boxes"):
        predict_masks(sam, embedding)
    with pytest.raises(ValueError, match="embedding must be"):
        predict_masks(sam, torch.zeros(256, 64, 64), boxes=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="point sets for"):
        predict_masks(
            sam, embedding, boxes=torch.zeros(2, 4), points=torch.zeros(3, 1, 2), point_labels=torch.ones(3, 1)
        )


def test_preprocess_matches_segment_anything():
    from segment_anything.utils.transforms import ResizeLongestSide

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 151, 3), dtype=np.uint8)
    ours, size = preprocess(image, 256)
    sam = build_sam("tiny", with_encoder=False)
    resized = ResizeLongestSide(256).apply_image(image)
    theirs = sam.preprocess(torch.from_numpy(resized).permute(2, 0, 1).float())
    assert size == resized.shape[:2]
    torch.testing.assert_close(ours, theirs)
    with pytest.raises(TypeError, match="uint8"):
        preprocess(image.astype(np.float32), 256)


@pytest.mark.parametrize(
    "box, height, width",
    [
        ((100, 100, 114, 114), 360, 480),
        ((200, 50, 206, 200), 360, 480),
        ((0, 0, 20, 20), 360, 480),
        ((470, 350, 480, 360), 360, 480),
        ((10, 10, 300, 300), 360, 480),
        ((5, 2, 30, 600), 640, 40),
    ],
)
def test_zoom_windows_hold_their_box_inside_the_image(box, height, width):
    x0, y0, x1, y1 = window = zoom_window(box, height, width)
    assert 0 <= x0 <= box[0] and 0 <= y0 <= box[1] and box[2] <= x1 <= width and box[3] <= y1 <= height
    side = max(ZOOM_CONTEXT * max(box[2] - box[0], box[3] - box[1]), max(height, width) / MAX_ZOOM)
    assert x1 - x0 == min(width, np.ceil(side)) and y1 - y0 == min(height, np.ceil(side))  # square unless clipped
    assert 1 <= zoom_factor(window, height, width) <= MAX_ZOOM
    if x1 - x0 < width:  # centred on the box, unless the image's border is nearer
        assert abs((x0 + x1) - (box[0] + box[2])) <= 1 or x0 == 0 or x1 == width
