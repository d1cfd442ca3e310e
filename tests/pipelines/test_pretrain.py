"""pretrain-sam: promptable pre-training of SAM (tiny) on generated shapes."""

import json

import pytest
import torch

from wsseg_fast.cli import main
from wsseg_fast.data import make_demo
from wsseg_fast.pipelines.pretrain import (
    MAX_JITTER_PX,
    PretrainConfig,
    PretrainError,
    corrective_click,
    pretrain_sam,
    sample_prompts,
)
from wsseg_fast.sam.model import build_sam, load_state_dict_file


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ptdemo")
    make_demo(out, images=4, seed=5)
    return out


def config(shapes, out, **kw) -> PretrainConfig:
    return PretrainConfig(**{"coco": str(shapes / "annotations.json"), "out": str(out), "epochs": 2, "max_instances": 4,
                             "threads": 1, **kw})


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
    assert sample_prompts(masks, boxes, 64, 1.0, 0.1, g)[0].all() and not sample_prompts(masks, boxes, 64, 0.0, 0.1, g)[0].any()


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
        assert labels[0, 0] == 1 and target[0, cells[0, 1], cells[0, 0]] == 1 and logits[0, cells[0, 1], cells[0, 0]] < 0
        assert labels[1, 0] == 0 and target[1, cells[1, 1], cells[1, 0]] == 0 and logits[1, cells[1, 1], cells[1, 0]] > 0


def test_loss_falls_and_the_weights_load_everywhere(shapes, tmp_path):
    path = pretrain_sam(config(shapes, tmp_path / "run", epochs=4, lr=1e-3), progress=False)
    log = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]
    state = load_state_dict_file(path)
    sam = build_sam("tiny", path)  # the same loader as every command's --checkpoint
    assert all(torch.equal(v, state[k]) for k, v in sam.state_dict().items())
    assert not torch.equal(state["mask_decoder.iou_token.weight"], build_sam("tiny").state_dict()["mask_decoder.iou_token.weight"])


def test_resume_is_bit_exact(shapes, tmp_path):
    straight = pretrain_sam(config(shapes, tmp_path / "a"), progress=False)
    pretrain_sam(config(shapes, tmp_path / "b", epochs=1), progress=False)
    resumed = pretrain_sam(config(shapes, tmp_path / "b"), progress=False)  # picks up at epoch 2
    a, b = load_state_dict_file(straight), load_state_dict_file(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(PretrainError, match="other settings"):
        pretrain_sam(config(shapes, tmp_path / "b", lr=1e-2), progress=False)


def test_bad_inputs(shapes, tmp_path, capsys):
    coco = json.loads((shapes / "annotations.json").read_text())
    no_masks = {**coco, "annotations": [{k: v for k, v in a.items() if k != "segmentation"} for a in coco["annotations"]]}
    (tmp_path / "boxes_only.json").write_text(json.dumps(no_masks))
    with pytest.raises(PretrainError, match="segmentation"):
        pretrain_sam(config(shapes, tmp_path / "o", coco=str(tmp_path / "boxes_only.json"), images=str(shapes / "images")))
    empty = {**coco, "annotations": [{**a, "segmentation": {"size": [a_h, a_w], "counts": [a_h * a_w]}}
                                     for a in coco["annotations"]
                                     for a_h, a_w in [(coco["images"][0]["height"], coco["images"][0]["width"])]]}
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    with pytest.raises(PretrainError, match="no readable image has a non-empty instance mask"):
        pretrain_sam(config(shapes, tmp_path / "o", coco=str(tmp_path / "empty.json"), images=str(shapes / "images")))
    for bad, match in [({"epochs": 0}, "epochs"), ({"clicks": -1}, "clicks"), ({"box_fraction": 2.0}, "box_fraction"),
                       ({"model": "vit_x"}, "model")]:
        with pytest.raises(PretrainError, match=match):
            pretrain_sam(config(shapes, tmp_path / "o", **bad))
    assert main(["pretrain-sam", "--coco", str(tmp_path / "boxes_only.json"), "--images", str(shapes / "images"),
                 "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "segmentation" in err[0]
