"""pretrain-sam: promptable pre-training of SAM (tiny) on generated shapes."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from wsseg_fast.cli import main
from wsseg_fast.data import CocoWeakDataset, make_demo
from wsseg_fast.data.weak import encode_rle, mask_bbox
from wsseg_fast.errors import ConfigError, DataError
from wsseg_fast.pipelines.pretrain import (
    MAX_JITTER_PX,
    PretrainConfig,
    _lr_at,
    corrective_click,
    mirrored,
    prepare_samples,
    pretrain_sam,
    sample_prompts,
    zoomed,
)
from wsseg_fast.pipelines.training import RunDirError
from wsseg_fast.sam.model import build_sam, load_state_dict_file, preprocess
from wsseg_fast.sam.prompting import MIN_ZOOM, zoom_factor, zoom_window
from wsseg_fast.sam.registry import build_model

TINY = build_model("tiny", with_encoder=False)  # what prepare_samples and zoomed read: the input frame

# pycocotools 2.0 calls np.array(copy=False) on NumPy 2: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ptdemo")
    make_demo(out, images=4, seed=5)
    return out


def config(shapes, out, **kw) -> PretrainConfig:
    return PretrainConfig(
        **{
            "coco": str(shapes / "annotations.json"),
            "out": str(out),
            "epochs": 2,
            "max_instances": 4,
            "threads": 1,
            **kw,
        }
    )


def test_prompts_lie_on_their_instances():
    masks = torch.zeros(3, 16, 16)
    masks[0, 2:6, 3:9] = 1
    masks[1, 10:15, 10:12] = 1
    masks[2, 7, 7] = 0.3  # a sliver: its best pixel
    boxes = torch.tensor([[12.0, 8, 36, 24], [40, 40, 48, 60], [28, 28, 32, 32]])  # input frame (64 = 4 x 16)
    g = torch.Generator().manual_seed(0)
    use_box, jittered, points = sample_prompts(masks, boxes, 64, 0.5, 0.1, g)
    assert points.shape == (3, 1, 2) and jittered.shape == (3, 4) and use_box.dtype == torch.bool
    cells = (points[:, 0] / 4).floor().long()
    assert masks[0, cells[0, 1], cells[0, 0]] == 1 and masks[1, cells[1, 1], cells[1, 0]] == 1
    assert (cells[2] == 7).all()
    assert ((jittered - boxes).abs() <= MAX_JITTER_PX * 64 + 1e-5).all()
    assert (jittered[:, 2:] > jittered[:, :2]).all() and (jittered >= 0).all() and (jittered <= 64).all()
    again = sample_prompts(masks, boxes, 64, 0.5, 0.1, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((use_box, jittered, points), again))  # seeded
    assert (
        sample_prompts(masks, boxes, 64, 1.0, 0.1, g)[0].all()
        and not sample_prompts(masks, boxes, 64, 0.0, 0.1, g)[0].any()
    )


def test_corrective_clicks_point_at_the_error():
    target = torch.zeros(2, 8, 8)
    target[:, 2:6, 2:6] = 1
    logits = torch.full((2, 8, 8), -5.0)
    logits[0, 2:6, 2:4] = 5  # instance 0: its right half missed
    logits[1, 0:6, 2:6] = 5  # instance 1: two rows too many
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        points, labels = corrective_click(logits, target, 32, g)
        cells = (points[:, 0] / 4).floor().long()
        assert (
            labels[0, 0] == 1 and target[0, cells[0, 1], cells[0, 0]] == 1 and logits[0, cells[0, 1], cells[0, 0]] < 0
        )
        assert (
            labels[1, 0] == 0 and target[1, cells[1, 1], cells[1, 0]] == 0 and logits[1, cells[1, 1], cells[1, 0]] > 0
        )


def test_loss_falls_and_the_weights_load_everywhere(shapes, tmp_path):
    path = pretrain_sam(config(shapes, tmp_path / "run", epochs=4, lr=1e-3), progress=False)
    log = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]
    state = load_state_dict_file(path)
    sam = build_sam("tiny", path)  # the same loader as every command's --checkpoint
    assert all(torch.equal(v, state[k]) for k, v in sam.state_dict().items())
    assert not torch.equal(
        state["mask_decoder.iou_token.weight"], build_sam("tiny").state_dict()["mask_decoder.iou_token.weight"]
    )


def test_mirroring_keeps_masks_and_boxes_together(shapes, tmp_path):
    sample = prepare_samples(CocoWeakDataset(str(shapes / "annotations.json")), TINY, lambda message: None)[0]
    flipped = mirrored(sample)
    assert torch.equal(flipped.pixels, sample.pixels.flip(-1)) and torch.equal(mirrored(flipped).masks, sample.masks)
    assert torch.allclose(mirrored(flipped).boxes, sample.boxes)
    cell = 256 / sample.masks.shape[-1]
    for mask, box in zip(flipped.masks, flipped.boxes):  # each mirrored mask lies in its mirrored box
        xs = torch.nonzero(mask.sum(0) > 0)[:, 0].float()
        assert xs.min() * cell >= box[0] - cell and (xs.max() + 1) * cell <= box[2] + cell
    weights = pretrain_sam(config(shapes, tmp_path / "flip", epochs=1, hflip=True), progress=False)
    plain = pretrain_sam(config(shapes, tmp_path / "plain", epochs=1), progress=False)
    low = pretrain_sam(config(shapes, tmp_path / "low", epochs=1, loss_resolution="low"), progress=False)
    a, b, c = load_state_dict_file(weights), load_state_dict_file(plain), load_state_dict_file(low)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the flips changed what was trained on
    assert any(not torch.equal(c[k], b[k]) for k in c)  # so did the losses' resolution


def test_thin_things_keep_their_pixels_at_the_input_resolution(tmp_path):
    """A 3-px pole in a 512-px photo is 1.5 px at 256 px in: under half of every 4-px low-res
    pixel, so at the low resolution its target is empty and its box is taught an empty mask."""
    image = np.zeros((512, 512, 3), np.uint8)
    pole = np.zeros((512, 512), bool)
    pole[100:400, 201:204] = True
    (tmp_path / "images").mkdir()
    Image.fromarray(image).save(tmp_path / "images/a.png")
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": 512, "width": 512}],
        "categories": [{"id": 1, "name": "pole"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": mask_bbox(pole),
                "iscrowd": 0,
                "area": int(pole.sum()),
                "segmentation": encode_rle(pole),
            }
        ],
    }
    (tmp_path / "a.json").write_text(json.dumps(coco))
    dataset = CocoWeakDataset(str(tmp_path / "a.json"))
    [sample] = prepare_samples(dataset, TINY, lambda message: None)
    [low] = prepare_samples(dataset, TINY, lambda message: None, loss_resolution="low")
    assert sample.masks.dtype == torch.bool and sample.masks.shape == (1, 256, 256) and low.masks.shape == (1, 64, 64)
    columns = torch.nonzero(sample.masks[0].any(0))[:, 0]
    assert 1 <= len(columns) <= 2 and 100 <= columns.float().mean() <= 102  # 201-203 / 2
    assert sample.masks[0].sum(0).max() >= 140 and low.masks.max() < 0.5
    _, _, points = sample_prompts(sample.masks.float(), sample.boxes, 256, 1.0, 0.1, torch.Generator().manual_seed(0))
    assert sample.masks[0, int(points[0, 0, 1]), int(points[0, 0, 0])]  # a point on the pole itself


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (fp16 on a CPU is ~5x slower than fp32)")


def test_zoomed_windows_show_small_instances_larger(shapes, tmp_path):
    samples = prepare_samples(
        CocoWeakDataset(str(shapes / "annotations.json")), TINY, lambda message: None, keep_originals=True
    )
    sample = samples[0]
    image, boxes = sample.original.image, sample.original.boxes
    h, w = image.shape[:2]
    windows = {zoom_window(box, h, w) for box in boxes if zoom_factor(zoom_window(box, h, w), h, w) >= MIN_ZOOM}
    assert windows, "the demo has small instances"
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        view = zoomed(sample, TINY, "input", g)
        window = next(
            win
            for win in windows
            if torch.equal(
                view.pixels, preprocess(np.ascontiguousarray(image[win[1] : win[3], win[0] : win[2]]), 256)[0]
            )
        )
        x0, y0, x1, y1 = window
        inside = (boxes[:, 0] >= x0) & (boxes[:, 1] >= y0) & (boxes[:, 2] <= x1) & (boxes[:, 3] <= y1)
        assert len(view.masks) == inside.sum() >= 1 and view.masks.shape[1:] == (256, 256)
        scale = 256 / max(x1 - x0, y1 - y0)
        for mask, box, original in zip(view.masks, view.boxes, boxes[inside]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert xs.min() >= box[0] - 1 and xs.max() < box[2] + 1 and ys.min() >= box[1] - 1 and ys.max() < box[3] + 1
            expected = torch.from_numpy(original - np.array([x0, y0, x0, y0], np.float32)) * scale
            assert torch.allclose(box, expected, atol=0.5)  # the same box, zoomed
    assert zoomed(sample, TINY, "low", g).masks.dtype == torch.float32  # shares of the low-res pixels
    sample.original.boxes = np.array([[0, 0, w, h]] * len(boxes), np.float32)  # nothing small: the whole image
    assert zoomed(sample, TINY, "input", g) is sample
    weights = pretrain_sam(config(shapes, tmp_path / "zoom", epochs=1, zoom=0.5), progress=False)
    assert build_sam("tiny", weights) is not None


@pytest.mark.parametrize("amp, device", [("off", "cpu"), ("bf16", "cpu"), pytest.param("fp16", "cuda", marks=CUDA)])
def test_resume_is_bit_exact(shapes, tmp_path, amp, device):
    straight = pretrain_sam(config(shapes, tmp_path / "a", amp=amp, device=device), progress=False)
    first = load_state_dict_file(
        pretrain_sam(config(shapes, tmp_path / "b", epochs=1, amp=amp, device=device), progress=False)
    )
    resumed = pretrain_sam(config(shapes, tmp_path / "b", amp=amp, device=device), progress=False)  # from epoch 2
    a, b = load_state_dict_file(straight), load_state_dict_file(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a) and all(v.dtype == torch.float32 for v in a.values())
    log = [json.loads(line) for line in (tmp_path / "a/log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(np.isfinite(r["loss"]) for r in log)
    if amp != "off":  # mixed precision computes in another precision, into fp32 weights
        fp32 = load_state_dict_file(
            pretrain_sam(config(shapes, tmp_path / "fp32", epochs=1, device=device), progress=False)
        )
        assert any(not torch.equal(first[k], fp32[k]) for k in first)
    with pytest.raises(RunDirError, match="other settings"):
        pretrain_sam(config(shapes, tmp_path / "b", lr=1e-2, amp=amp, device=device), progress=False)


def test_cosine_schedule_spans_the_run(shapes, tmp_path):
    cfg = config(shapes, tmp_path / "c", epochs=3, lr=1e-3, lr_schedule="cosine")
    assert [_lr_at(cfg, step, 8) for step in (0, 4, 8)] == pytest.approx([1e-3, 5e-4, 0.0])
    assert _lr_at(config(shapes, tmp_path, lr=1e-3), 7, 8) == 1e-3  # constant
    pretrain_sam(config(shapes, tmp_path / "c", epochs=1, lr=1e-3, lr_schedule="cosine"), progress=False)
    [record] = [json.loads(line) for line in (tmp_path / "c/log.jsonl").read_text().splitlines()]
    assert record["lr"] == pytest.approx(
        _lr_at(config(shapes, tmp_path, lr=1e-3, lr_schedule="cosine", epochs=1), 0, 1)
    )
    with pytest.raises(RunDirError, match="other settings"):  # more epochs would change the schedule already run
        pretrain_sam(cfg, progress=False)


def test_bad_inputs(shapes, tmp_path, capsys):
    coco = json.loads((shapes / "annotations.json").read_text())
    no_masks = {
        **coco,
        "annotations": [{k: v for k, v in a.items() if k != "segmentation"} for a in coco["annotations"]],
    }
    (tmp_path / "boxes_only.json").write_text(json.dumps(no_masks))
    with pytest.raises(DataError, match="segmentation"):
        pretrain_sam(
            config(shapes, tmp_path / "o", coco=str(tmp_path / "boxes_only.json"), images=str(shapes / "images"))
        )
    empty = {
        **coco,
        "annotations": [
            {**a, "segmentation": {"size": [a_h, a_w], "counts": [a_h * a_w]}}
            for a in coco["annotations"]
            for a_h, a_w in [(coco["images"][0]["height"], coco["images"][0]["width"])]
        ],
    }
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    with pytest.raises(DataError, match="no readable image has a non-empty instance mask"):
        pretrain_sam(config(shapes, tmp_path / "o", coco=str(tmp_path / "empty.json"), images=str(shapes / "images")))
    for bad, match in [
        ({"epochs": 0}, "epochs"),
        ({"clicks": -1}, "clicks"),
        ({"box_fraction": 2.0}, "box_fraction"),
        ({"model": "vit_x"}, "model"),
        ({"loss_resolution": "full"}, "loss_resolution"),
        ({"amp": "fp8"}, "amp"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"zoom": 1.5}, "zoom"),
    ]:
        with pytest.raises(ConfigError, match=match):
            pretrain_sam(config(shapes, tmp_path / "o", **bad))
    assert (
        main(
            [
                "pretrain-sam",
                "--coco",
                str(tmp_path / "boxes_only.json"),
                "--images",
                str(shapes / "images"),
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "segmentation" in err[0]
