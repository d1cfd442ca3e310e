"""CAM refinement: grid prompts through a tiny SAM, prompt affinity, PSA/IRN post-processing."""

from __future__ import annotations

import pytest
import torch

from wsseg_fast.cache import Embedding
from wsseg_fast.pipelines.cam_refine import (
    background_score,
    grid_points,
    grid_prompt_masks,
    normalize_cams,
    refine_cams,
)
from wsseg_fast.sam.model import Sam1Model, input_size


def test_grid_points_cover_the_whole_image():
    points = grid_points(4, 40, 80)
    assert points.shape == (16, 2)
    xs, ys = points[:, 0].unique(), points[:, 1].unique()
    torch.testing.assert_close(xs, torch.tensor([10.0, 30.0, 50.0, 70.0]))  # cell centres along W
    torch.testing.assert_close(ys, torch.tensor([5.0, 15.0, 25.0, 35.0]))  # and along H
    assert points[1].tolist() == [30.0, 5.0]  # row by row
    with pytest.raises(ValueError, match="points_per_side"):
        grid_points(0, 4, 4)


@pytest.mark.parametrize("multimask", [True, False])
def test_grid_prompt_masks_one_decoder_call(tiny_sam, multimask, monkeypatch):
    height, width = 48, 30  # not square: SAM pads the short side
    image = torch.rand(1, 3, tiny_sam.image_encoder.img_size, tiny_sam.image_encoder.img_size)
    with torch.no_grad():
        embedding = tiny_sam.image_encoder(image)
    model = Sam1Model("test", tiny_sam)
    cached = Embedding(embedding[0], (height, width), input_size((height, width), model.img_size))
    calls = []
    decoder = tiny_sam.mask_decoder.forward

    def counting(*args, **kwargs):
        calls.append(kwargs["sparse_prompt_embeddings"].shape[0])
        return decoder(*args, **kwargs)

    monkeypatch.setattr(tiny_sam.mask_decoder, "forward", counting)
    masks = grid_prompt_masks(model, cached, points_per_side=3, multimask_output=multimask)
    assert masks.shape == (9, height, width) and torch.isfinite(masks).all()
    assert calls == [9]  # every prompt in one decoder call on the one embedding
    # Same masks as prompting SAM one point at a time.
    point = grid_points(3, height, width)[4] * (tiny_sam.image_encoder.img_size / max(height, width))
    sparse, dense = tiny_sam.prompt_encoder(
        points=(point.view(1, 1, 2), torch.ones(1, 1, dtype=torch.int)), boxes=None, masks=None
    )
    with torch.no_grad():
        low, iou = decoder(
            image_embeddings=embedding,
            image_pe=tiny_sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
    low = low[:, iou.argmax(1)] if multimask else low
    one = tiny_sam.postprocess_masks(low, (64, 40), (height, width))[0, 0]
    torch.testing.assert_close(masks[4], one, rtol=1e-4, atol=1e-4)
    chunked = grid_prompt_masks(model, cached, points_per_side=3, multimask_output=multimask, points_per_batch=4)
    assert calls[-3:] == [4, 4, 1]
    torch.testing.assert_close(chunked, masks, rtol=1e-4, atol=1e-4)


def test_background_score():
    cams = torch.tensor([[[[0.0, 0.5, 1.0]]], [[[2.0, 4.0, 0.0]]]])
    normed = normalize_cams(cams)
    torch.testing.assert_close(normed[1, 0, 0], torch.tensor([0.5, 1.0, 0.0]))
    torch.testing.assert_close(background_score(normed[:1], alpha=2), torch.tensor([[[[1.0, 0.25, 0.0]]]]))


def two_region_image(height=16, width=20):
    features = torch.zeros(1, 3, height, width)
    features[..., width // 2 :] = 5.0
    cams = torch.zeros(1, 2, height, width)
    cams[0, 0, 1:15, 1:9] = 1.0  # class 0 over most of the left region
    cams[0, 1, 1:15, 11:19] = 1.0  # class 1 over most of the right one
    return features, cams


def test_refine_cams_fills_regions_from_features():
    features, cams = two_region_image()
    scores, labels = refine_cams(cams, features, steps=64, alpha=4)
    assert scores.shape == (1, 3, 16, 20) and labels.shape == (1, 16, 20)
    # The walk fills each region with its class (the CAM gaps included), never across the edge.
    assert (labels[0, :, :10] == 1).all() and (labels[0, :, 10:] == 2).all()
    # Without the walk, the gaps would be background.
    assert (refine_cams(cams, features, steps=0, alpha=4)[1][0, 0] == 0).all()


def test_refine_cams_from_masks_matches_features_path():
    """SAM-mask source: two masks, one per region, separate the classes the same way."""
    features, cams = two_region_image()
    logits = torch.full((1, 2, 16, 20), -10.0)
    logits[0, 0, :, :10] = 10
    logits[0, 1, :, 10:] = 10
    for aggregate, masks in (("stack", logits), ("sum", logits[:, :1])):  # "sum" of both would be flat
        _, labels = refine_cams(cams, masks, source_kind="masks", steps=64, alpha=4, mask_aggregate=aggregate)
        assert (labels[0, :, :10] == 1).all() and (labels[0, :, 10:] == 2).all()
    with pytest.raises(ValueError, match="source_kind"):
        refine_cams(cams, logits, source_kind="edges")
    with pytest.raises(ValueError, match="cams"):
        refine_cams(cams[..., :5], logits)
