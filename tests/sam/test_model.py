"""build_sam / build_image_encoder / checkpoints: weights the test saves itself."""

import pytest
import torch

from wsseg_fast.cache import EmbeddingCache
from wsseg_fast.sam import (
    CheckpointError,
    SamEngine,
    build_image_encoder,
    build_model,
    build_sam,
    load_finetuned,
    predict_masks,
)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    sam = build_sam("tiny")
    with torch.no_grad():  # not the seeded init, so loading is really tested
        for p in sam.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(sam.state_dict(), path)
    return path, sam


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoint_round_trip(tiny_checkpoint):
    path, original = tiny_checkpoint
    loaded = build_sam("tiny", path)
    assert _same(loaded, original)
    assert torch.equal(loaded.pixel_mean, original.pixel_mean) and not loaded.training


def test_parts_match_the_whole_model(tiny_checkpoint):
    path, original = tiny_checkpoint
    assert _same(build_image_encoder("tiny", path), original.image_encoder)
    without = build_sam("tiny", path, with_encoder=False)
    assert _same(without.mask_decoder, original.mask_decoder) and _same(without.prompt_encoder, original.prompt_encoder)
    # random weights too: the decoder's init does not depend on building the encoder
    assert _same(build_sam("tiny", with_encoder=False).mask_decoder, build_sam("tiny").mask_decoder)
    assert _same(build_image_encoder("tiny"), build_sam("tiny").image_encoder)


def test_official_architectures_have_the_official_shapes():
    # built on the meta device through a checkpoint-less path would allocate 2.5 GB for vit_h: check vit_b sizes only
    sam = build_sam("vit_b", with_encoder=False)
    assert sam.image_encoder.img_size == 1024 and sam.prompt_encoder.image_embedding_size == (64, 64)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        build_sam("tiny", tmp_path / "nope.pth")


def test_truncated_checkpoint(tiny_checkpoint, tmp_path):
    data = tiny_checkpoint[0].read_bytes()
    bad = tmp_path / "cut.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        build_sam("tiny", bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or not"):
        build_sam("tiny", garbage)


def test_mismatched_checkpoint(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match=r"does not match SAM vit_b: .*missing keys.*shape mismatches"):
        build_sam("vit_b", tiny_checkpoint[0])
    partial = {k: v for k, v in tiny_checkpoint[1].state_dict().items() if not k.startswith("mask_decoder.iou")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="missing keys"):
        build_sam("tiny", tmp_path / "partial.pth")


def test_bad_model_name():
    with pytest.raises(ValueError, match="model must be one of"):
        build_sam("vit_x")


def test_load_finetuned_decoder(tiny_checkpoint, tmp_path):
    path, original = tiny_checkpoint
    sam = build_model("tiny")
    torch.save(original.mask_decoder.state_dict(), tmp_path / "decoder.pth")
    load_finetuned(sam, tmp_path / "decoder.pth")
    assert _same(sam.mask_decoder, original.mask_decoder)
    sam = build_model("tiny")
    load_finetuned(sam, path)  # a whole-model file: its mask_decoder.* and prompt_encoder.* keys
    assert _same(sam.mask_decoder, original.mask_decoder)
    torch.save(original.prompt_encoder.state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="mask decoder"):
        load_finetuned(sam, tmp_path / "wrong.pth")


def test_small_stand_in_size(tiny_checkpoint, tmp_path):
    # the pretrain-sam stand-in: 384 px in, a 24x24 embedding grid, 96x96 low-res masks
    sam = build_sam("small")
    assert sam.image_encoder.img_size == 384 and sam.prompt_encoder.image_embedding_size == (24, 24)
    with torch.no_grad():
        embedding = sam.image_encoder(torch.zeros(1, 3, 384, 384))[0]
        masks = predict_masks(
            build_model("small", with_encoder=False),
            embedding,
            boxes=torch.tensor([[10.0, 20, 200, 300]]),
            output_size=(96, 96),
        )
    assert embedding.shape == (256, 24, 24) and masks.low_res_logits.shape == (1, 1, 96, 96)
    path = tmp_path / "small.pth"
    torch.save(sam.state_dict(), path)
    assert _same(build_sam("small", path), sam)
    engine = SamEngine("small", str(path), backend="torch", cache=EmbeddingCache(tmp_path / "cache"))
    assert (
        engine.identity["weights"] != SamEngine("small", backend="torch").identity["weights"]
    )  # cache keys see the file
    with pytest.raises(CheckpointError, match="does not match SAM small"):
        build_sam("small", tiny_checkpoint[0])


def test_a_sam2_checkpoint_for_a_sam1_model_and_unknown_names_are_one_line(tmp_path):
    pytest.importorskip("sam2")
    torch.save({"sam_mask_decoder.iou_token.weight": torch.zeros(1, 256)}, tmp_path / "sam2.pt")
    with pytest.raises(CheckpointError, match="is a SAM 2 checkpoint .* not SAM 1"):
        build_model("vit_b", tmp_path / "sam2.pt", with_encoder=False)
    with pytest.raises(ValueError, match="model must be one of vit_h, .*sam2.1_hiera_t"):
        SamEngine("vit_x")
