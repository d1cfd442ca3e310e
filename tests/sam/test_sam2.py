"""SAM 2.1 (wsseg_fast.sam.sam2) against Meta's own SAM2ImagePredictor, on seeded random weights."""

import hashlib
import importlib
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("sam2")

from sam2.build_sam import build_sam2
from sam2.sam2_image_predictor import SAM2ImagePredictor

import wsseg_fast.sam
from wsseg_fast.errors import CheckpointError
from wsseg_fast.sam.model import build_sam
from wsseg_fast.sam.prompting import input_frame_boxes
from wsseg_fast.sam.sam2 import (
    INSTALL,
    MODELS,
    TRUNKS,
    _trunk,
    build_sam2_model,
    sam2_unavailable,
    sam2_weights_id,
)

NAME = "sam2.1_hiera_t"


@pytest.fixture(scope="module")
def model():
    return build_sam2_model(NAME)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def predictor(model, image):
    """The official predictor on build_sam2's own model holding our weights (so our config composition is
    checked too: the strict load fails on any key or shape it builds differently)."""
    official = build_sam2(MODELS[NAME], device="cpu")
    official.load_state_dict(model.module.state_dict())
    predictor = SAM2ImagePredictor(official)
    predictor.set_image(image)
    return predictor


@pytest.fixture(scope="module")
def levels(model, image):
    x, _ = model.preprocess(image)
    with torch.inference_mode():
        return model.encode(x[None])


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    """The official format ({"model": state_dict}) of weights that are not the seeded init."""
    g = torch.Generator().manual_seed(1)
    state = {
        k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
        for k, v in model.module.state_dict().items()
    }
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": state}, path)
    return path, state


@pytest.fixture
def no_init(monkeypatch):
    """Builds that skip drawing random weights (shapes and keys only): Linear/Conv init is most of a build."""
    monkeypatch.setattr(torch.Tensor, "uniform_", lambda self, *args, **kwargs: self)


def test_preprocess_and_encode_match_set_image(model, predictor, image, levels):
    x, input_size = model.preprocess(image)
    assert input_size == (1024, 1024)
    assert torch.equal(x, predictor._transforms(image))
    features = [predictor._features["image_embed"], *predictor._features["high_res_feats"]]
    assert [tuple(t.shape) for t in levels] == [(1, 256, 64, 64), (1, 32, 256, 256), (1, 64, 128, 128)]
    assert [tuple(t.shape[1:]) for t in levels] == list(model.level_shapes)
    for ours, theirs in zip(levels, features):
        assert torch.equal(ours, theirs)


def _ours(model, levels, image, box=None, points=None, labels=None, mask=None, multimask=False):
    """Our path, prompts in original pixels mapped to the S x S input frame as an integrator would."""
    h, w = image.shape[:2]
    size = (model.img_size, model.img_size)
    boxes = None if box is None else input_frame_boxes(torch.tensor(box, dtype=torch.float32).view(-1, 4), (h, w), size)
    if points is not None:
        points = torch.tensor(points, dtype=torch.float32) * torch.tensor([size[1] / w, size[0] / h])
    with torch.inference_mode():
        sparse, dense = model.prompt(boxes, points, labels, None if mask is None else torch.from_numpy(mask))
        low_res, iou = model.decode(levels, sparse, dense, multimask)
        return model.upsample(low_res, size, (h, w)), iou


BOX = [30.0, 40, 180, 150]
CASES = {
    "box": {"box": [BOX]},
    "points": {"points": [[[100.0, 80], [150, 120]]], "labels": [[1, 0]]},
    "box+points": {"box": [BOX], "points": [[[100.0, 80]]], "labels": [[0]]},
    "boxes": {"box": [BOX, [0.0, 0, 299, 199], [200, 20, 290, 190]]},
    "points of 2 objects": {"points": [[[100.0, 80], [10, 10]], [[250, 150], [20, 190]]], "labels": [[1, 0], [1, -1]]},
}


@pytest.mark.parametrize("multimask", [False, True], ids=["single", "multimask"])
@pytest.mark.parametrize("case", list(CASES))
def test_decode_matches_the_predictor(model, predictor, image, levels, case, multimask):
    prompts = CASES[case]
    masks, iou, _ = predictor.predict(
        point_coords=None if "points" not in prompts else np.array(prompts["points"]),
        point_labels=None if "labels" not in prompts else np.array(prompts["labels"]),
        box=None if "box" not in prompts else np.array(prompts["box"]),
        multimask_output=multimask,
        return_logits=True,
    )
    logits, scores = _ours(model, levels, image, multimask=multimask, **prompts)
    n = len(prompts.get("box", prompts.get("points")))
    assert logits.shape == (n, 3 if multimask else 1, 200, 300)
    np.testing.assert_allclose(logits.reshape(masks.shape).numpy(), masks, rtol=0, atol=1e-4)
    np.testing.assert_allclose(scores.reshape(iou.shape).numpy(), iou, rtol=0, atol=1e-5)


@pytest.mark.parametrize("with_box", [False, True], ids=["mask", "mask+box"])
def test_previous_mask_as_input(model, predictor, image, levels, with_box):
    _, iou, low_res = predictor.predict(box=np.array(BOX), multimask_output=True, return_logits=True)
    previous = low_res[np.argmax(iou)][None]  # [1, 256, 256], clamped to [-32, 32] by the predictor
    box = np.array(BOX) if with_box else None
    masks, iou, _ = predictor.predict(box=box, mask_input=previous, multimask_output=False, return_logits=True)
    logits, scores = _ours(model, levels, image, box=None if box is None else [BOX], mask=previous[None])
    np.testing.assert_allclose(logits.reshape(masks.shape).numpy(), masks, rtol=0, atol=1e-4)
    np.testing.assert_allclose(scores.reshape(iou.shape).numpy(), iou, rtol=0, atol=1e-5)


def test_decode_tokens_of_encoded_boxes_is_the_box_prompt(model, levels):
    boxes = torch.tensor([[50.0, 60, 700, 800], [0, 0, 1023, 1023]])
    tokens = model.encode_boxes(boxes)
    assert tokens.shape == (2, 2, 256)
    with torch.inference_mode():
        sparse, dense = model.prompt(boxes=boxes)
        assert torch.equal(tokens, sparse[:, :2])  # and then the one not-a-point token
        expected = model.decode(levels, sparse, dense, multimask=False)
        got = model.decode_tokens(levels, tokens)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    upsampled = model.upsample(got[0], (1024, 1024), (100, 50))
    assert upsampled.shape == (2, 1, 100, 50)


@pytest.mark.parametrize("name", list(MODELS))
def test_keys_and_shapes_match_build_sam2(name, no_init):
    ours = build_sam2_model(name).module
    theirs = build_sam2(MODELS[name], device="cpu")
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    assert {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(v.shape) for k, v in b.items()}
    assert _trunk(a) == TRUNKS[name][:2]
    for attr in (
        "dynamic_multimask_via_stability",
        "dynamic_multimask_stability_delta",
        "dynamic_multimask_stability_thresh",
    ):  # build_sam2's apply_postprocessing
        assert getattr(ours.sam_mask_decoder, attr) == getattr(theirs.sam_mask_decoder, attr)
    assert not ours.training and not ours.sam_mask_decoder.training


def test_random_init_is_deterministic_and_leaves_the_rng_alone(model):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    again = build_sam2_model(NAME, with_encoder=False)
    assert torch.equal(torch.get_rng_state(), before)
    ours, theirs = model.module.state_dict(), again.module.state_dict()
    assert set(ours) - set(theirs) == {k for k in ours if k.startswith(("image_encoder.", "memory_attention."))}
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)  # the same decoder with or without the encoder
    assert sam2_weights_id(NAME, None).startswith("random-init-seed0-per-part-sam2-1.")


def test_without_encoder(model, levels):
    lean = build_sam2_model(NAME, with_encoder=False)
    assert lean.image_encoder.state_dict().keys() == {
        "sam_mask_decoder.conv_s0.weight",
        "sam_mask_decoder.conv_s0.bias",
        "sam_mask_decoder.conv_s1.weight",
        "sam_mask_decoder.conv_s1.bias",
        "no_mem_embed",
    }
    with torch.inference_mode():
        a = lean.decode(levels, *lean.prompt(boxes=[[10.0, 20, 300, 400]]), multimask=True)
        b = model.decode(levels, *model.prompt(boxes=[[10.0, 20, 300, 400]]), multimask=True)
        with pytest.raises(RuntimeError, match="not built"):
            lean.encode(torch.zeros(1, 3, 1024, 1024))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # fp16 levels (a cache entry) decode as fp32
    low_res, _ = lean.decode([t.half() for t in levels], *lean.prompt(boxes=[[10.0, 20, 300, 400]]), multimask=False)
    assert low_res.dtype == torch.float32


def test_checkpoint_round_trip(checkpoint, tmp_path):
    path, state = checkpoint
    loaded = build_sam2_model(NAME, path).module.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    torch.save({k: v for k, v in state.items()}, tmp_path / "plain.pth")  # a plain state dict, without the encoder
    lean = build_sam2_model(NAME, tmp_path / "plain.pth", with_encoder=False).module.state_dict()
    assert all(torch.equal(lean[k], state[k]) for k in lean)
    assert sam2_weights_id(NAME, path).startswith("blake2b:")


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_bad_checkpoints(checkpoint, model, tmp_path):
    torch.save(build_sam("tiny").state_dict(), tmp_path / "sam1.pth")
    for with_encoder in (True, False):
        with pytest.raises(CheckpointError, match="is a SAM 1 .*sam2.1_hiera_tiny.pt") as exc_info:
            build_sam2_model(NAME, tmp_path / "sam1.pth", with_encoder=with_encoder)
        _one_line(exc_info)

    # another size: its decoder has the same shapes, so only its trunk tells (with or without the encoder)
    decoder = {k: v for k, v in model.module.state_dict().items() if not k.startswith("image_encoder.")}
    trunk = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(112, 3, 7, 7)}
    trunk.update({f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.zeros(112) for i in range(24)})
    torch.save({"model": {**decoder, **trunk}}, tmp_path / "bplus.pt")
    for with_encoder in (True, False):
        with pytest.raises(CheckpointError, match=r"is a sam2.1_hiera_b\+ checkpoint .*not sam2.1_hiera_t") as exc_info:
            build_sam2_model(NAME, tmp_path / "bplus.pt", with_encoder=with_encoder)
        _one_line(exc_info)

    sam20 = {k: v for k, v in decoder.items() if k != "no_obj_embed_spatial" and not k.startswith("obj_ptr_tpos")}
    torch.save({"model": sam20}, tmp_path / "sam2.0.pt")
    with pytest.raises(CheckpointError, match=r"SAM 2 \(2.0\)"):
        build_sam2_model(NAME, tmp_path / "sam2.0.pt", with_encoder=False)

    data = checkpoint[0].read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as exc_info:
        build_sam2_model(NAME, tmp_path / "cut.pt", with_encoder=False)
    _one_line(exc_info)
    with pytest.raises(CheckpointError, match="not found"):
        build_sam2_model(NAME, tmp_path / "nope.pt")
    partial = {k: v for k, v in decoder.items() if not k.startswith("sam_mask_decoder.iou_token")}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="does not match SAM 2.1 sam2.1_hiera_t .*missing keys") as exc_info:
        build_sam2_model(NAME, tmp_path / "partial.pt", with_encoder=False)
    _one_line(exc_info)


def test_unknown_name_lists_the_models():
    with pytest.raises(ValueError, match=r"sam2.1_hiera_t, sam2.1_hiera_s, sam2.1_hiera_b\+, sam2.1_hiera_l"):
        build_sam2_model("sam2.1_hiera_xl")


def test_sam2_missing(monkeypatch):
    assert sam2_unavailable() is None
    monkeypatch.setitem(sys.modules, "sam2", None)  # what `import sam2` and find_spec see when it is not installed
    monkeypatch.setattr(wsseg_fast.sam, "sam2", sys.modules["wsseg_fast.sam.sam2"])  # put back after the test
    monkeypatch.delitem(sys.modules, "wsseg_fast.sam.sam2")
    fresh = importlib.import_module("wsseg_fast.sam.sam2")  # imports without sam2
    assert INSTALL in fresh.sam2_unavailable()
    with pytest.raises(fresh.Sam2Unavailable, match="SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2"):
        fresh.build_sam2_model(NAME, with_encoder=False)


def _digest(state) -> str:
    h = hashlib.blake2b()
    for key, tensor in state.items():
        h.update(key.encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()


def test_same_weights_in_another_process(model):
    """Cached features stay valid across runs: another process (another hash seed) draws the same weights;
    importing the module there does not import sam2."""
    script = inspect.getsource(_digest) + (
        "import hashlib, sys\n"
        "import wsseg_fast.sam.sam2 as s\n"
        "assert 'sam2' not in sys.modules, 'importing wsseg_fast.sam.sam2 imported sam2'\n"
        "print(_digest(s.build_sam2_model(sys.argv[1]).module.state_dict()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, NAME],
        env={**os.environ, "PYTHONHASHSEED": "123"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == _digest(model.module.state_dict())


@pytest.fixture
def hydra_state():
    """Hydra's singletons as they were, put back after the test."""
    from hydra.core.singleton import Singleton

    saved = dict(Singleton._instances)
    yield
    Singleton._instances.clear()
    Singleton._instances.update(saved)


def test_hydra_global_state(hydra_state, tmp_path):
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()  # nobody initialised it (or someone cleared it)
    build_sam2_model(NAME, with_encoder=False)
    assert not GlobalHydra.instance().is_initialized()
    initialize_config_dir(str(tmp_path), version_base="1.3")  # a caller's own Hydra app
    mine = GlobalHydra.instance()
    for _ in range(2):
        build_sam2_model(NAME, with_encoder=False)
    assert GlobalHydra.instance() is mine and mine.is_initialized()
    assert {(s.provider, s.path) for s in mine.config_loader().get_sources()} >= {("main", str(tmp_path))}


def test_bad_inputs(model, levels):
    with pytest.raises(ValueError, match="give boxes, points"):
        model.prompt()
    with pytest.raises(ValueError, match="boxes must be"):
        model.prompt(boxes=[1.0, 2, 3, 4])
    with pytest.raises(ValueError, match="labels must be"):
        model.prompt(points=[[[1.0, 2]]], labels=[[1, 1]])
    with pytest.raises(ValueError, match=r"masks must be \[N, 1, 256, 256\]"):
        model.prompt(masks=torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="levels must be"):
        model.decode(levels[:1], *model.prompt(boxes=[[1.0, 2, 3, 4]]), multimask=False)
    with pytest.raises(ValueError, match="input_size must be"):
        model.upsample(torch.zeros(1, 1, 256, 256), (683, 1024), (200, 300))
    with pytest.raises(TypeError, match="uint8"):
        model.preprocess(np.zeros((4, 4, 3), dtype=np.float32))
