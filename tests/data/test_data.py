"""The demo dataset and the COCO loader."""

import filecmp
import json

import numpy as np
import pytest
import torch

from wsseg_fast.data import CocoWeakDataset, DataError, ImageLoadError, make_demo, read_label_png
from wsseg_fast.data.demo import CATEGORIES
from wsseg_fast.logic.weak_labels import rasterise_polyline

# pycocotools 2.0 calls np.array(copy=False) on NumPy 2: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    make_demo(out, images=4, seed=3)
    return out


def test_demo_is_deterministic(demo, tmp_path):
    make_demo(tmp_path, images=4, seed=3)
    cmp = filecmp.dircmp(demo, tmp_path)
    assert not cmp.diff_files and not cmp.left_only
    for sub in ("images", "gt"):
        assert not filecmp.dircmp(demo / sub, tmp_path / sub).diff_files
    make_demo(tmp_path / "other", images=4, seed=4)
    assert (tmp_path / "other/annotations.json").read_bytes() != (demo / "annotations.json").read_bytes()


def test_demo_contents(demo):
    ds = CocoWeakDataset(demo / "annotations.json")
    assert ds.class_names == ["background", *CATEGORIES]
    assert len(ds) == 4
    pairs = 0
    for record in ds.images:
        image = ds.load_image(record)
        gt = read_label_png(demo / "gt" / f"{record.stem}.png")
        assert image.shape == (240, 320, 3) and gt.shape == (240, 320)
        np.testing.assert_array_equal(ds.gt_label_map(record, 240, 320), gt)  # COCO segmentation == GT PNG
        assert sorted(record.tags) == sorted({a["category_id"] for a in record.annotations})
        for a in record.annotations:
            x, y, w, h = a["bbox"]
            px, py = a["points"][0]
            assert x <= px < x + w and y <= py < y + h
            assert gt[py, px] == ds.class_index[a["category_id"]]  # the point is on the visible object
            for stroke in a["scribbles"]:  # drawn as polylines (as the knowledge base does), on the object
                drawn = rasterise_polyline(torch.tensor(stroke, dtype=torch.float64)).round().long()
                assert all(gt[sy, sx] == gt[py, px] for sx, sy in drawn.tolist())
            assert a["area"] < 0.85 * w * h or a["category_id"] in (1, 2)  # boxes are poor masks
        cats = [a["category_id"] for a in record.annotations]
        if 1 in cats:  # the cup lies inside the disc's box
            disc, cup = (next(a["bbox"] for a in record.annotations if a["category_id"] == c) for c in (1, 2))
            assert disc[0] <= cup[0] and cup[0] + cup[2] <= disc[0] + disc[2]
            pairs += 1
    assert pairs >= 1


def test_coco_errors(tmp_path, demo):
    with pytest.raises(DataError, match="not found"):
        CocoWeakDataset(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"images": [}')
    with pytest.raises(DataError, match="not valid JSON: .* line 1"):
        CocoWeakDataset(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(DataError, match="expected a COCO object"):
        CocoWeakDataset(tmp_path / "list.json")
    coco = json.loads((demo / "annotations.json").read_text())
    coco["annotations"][0]["category_id"] = 99
    (tmp_path / "cat.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match="annotation #0"):
        CocoWeakDataset(tmp_path / "cat.json", demo / "images")


def test_unreadable_and_missing_images(tmp_path, demo):
    coco = json.loads((demo / "annotations.json").read_text())
    coco["images"][1]["file_name"] = "missing.png"
    coco["images"][2]["file_name"] = "broken.png"
    (tmp_path / "images").mkdir()
    for im in coco["images"]:
        src = demo / "images" / im["file_name"]
        if src.exists():
            (tmp_path / "images" / im["file_name"]).write_bytes(src.read_bytes())
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "a.json").write_text(json.dumps(coco))
    ds = CocoWeakDataset(tmp_path / "a.json")
    assert ds.load_image(ds.images[0]).shape == (240, 320, 3)
    with pytest.raises(ImageLoadError, match="missing.png .*not found"):
        ds.load_image(ds.images[1])
    with pytest.raises(ImageLoadError, match="broken.png .*cannot be read"):
        ds.load_image(ds.images[2])


def test_polygon_segmentation(tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 10}],
        "categories": [{"id": 7, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 2, 4, 4], "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]]}
        ],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco))
    ds = CocoWeakDataset(tmp_path / "c.json")
    label = ds.gt_label_map(ds.images[0], 10, 10)
    assert label.max() == 1 and 12 <= (label == 1).sum() <= 25
    boxes, classes = ds.boxes(ds.images[0])
    assert boxes.tolist() == [[2, 2, 6, 6]] and classes.tolist() == [1]
