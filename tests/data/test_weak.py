"""Weak labels from dense masks (`wsseg-fast make-weak`), on generated label maps."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from wsseg_fast.cli import main
from wsseg_fast.data import CocoWeakDataset, make_demo, read_label_png
from wsseg_fast.data.labels import write_label_png
from wsseg_fast.data.weak import (
    WeakLabelError,
    make_weak,
    make_weak_from_coco,
    make_weak_from_layout,
    weak_labels,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
NAMES = ["sky", "road", "car", "person"]
VOID = 9


def _scene(seed: int) -> np.ndarray:
    """A 60x80 class map: sky, road, two cars (one touching the border), a person, a tiny
    car fragment (under min_area) and a void stripe."""
    label = np.zeros((60, 80), np.uint8)
    label[30:] = 1
    label[35:50, 5:30] = 2
    label[40:60, 60:80] = 2
    label[20:45, 40:46] = 3
    label[5:8, 70:73] = 2  # 9 px: too small for weak labels
    label[:, 0] = VOID
    label[10 + seed : 12 + seed, 50:60] = 3  # a second person (20 px: too small), the seed moves it
    return label


@pytest.fixture
def generic(tmp_path):
    root = tmp_path / "src"
    for i in range(3):
        rng = np.random.default_rng(i)
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        write_label_png(root / "labels" / f"im{i}.png", _scene(i))
    return root


def test_weak_labels_lie_on_the_mask():
    mask = np.zeros((40, 50), bool)
    mask[5:35, 10:20] = True
    mask[25:35, 10:45] = True  # an L
    points, strokes = weak_labels(mask, np.random.default_rng(0), points=3, scribble="short")
    assert len(points) == 3 and all(mask[y, x] for x, y in points)
    assert len(strokes) == 1 and len(strokes[0]) >= 2
    stroke = np.array(strokes[0])
    assert all(mask[y, x] for x, y in stroke)
    assert np.abs(np.diff(stroke, axis=0)).max() <= 1  # touching pixels: the polyline stays on the object
    _, skeleton = weak_labels(mask, scribble="skeleton")
    assert sum(map(len, skeleton)) > len(strokes[0])
    with pytest.raises(ValueError, match="scribble"):
        weak_labels(mask, scribble="long")


def test_generic_layout(generic, tmp_path):
    out = tmp_path / "weak"
    summary = make_weak_from_layout(
        out, generic, "generic", ["car", "person"], class_names=NAMES, void=VOID, points=2, seed=1
    )
    assert summary == {"images": 3, "instances": 9, "too_small": 6, "categories": ["car", "person"]}
    ds = CocoWeakDataset(out / "annotations.json")
    assert ds.class_names == ["background", "car", "person"]
    for record in ds.images:
        gt = read_label_png(out / "gt" / f"{record.stem}.png")
        label = _scene(int(record.stem[-1]))
        assert (gt[label == VOID] == 255).all()
        assert (gt[5:8, 70:73] == 255).all()  # the fragment has no weak label: ignored
        assert (gt[35:50, 5:30] == 1).all() and (gt[20:45, 40:46] == 2).all()
        assert record.tags == [1, 2]
        for ann in record.annotations:
            rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
            mask = mask_utils.decode(rle).astype(bool)
            assert ann["area"] == mask.sum()
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(mask)
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert len(ann["points"]) == 2 and all(mask[py, px] for px, py in ann["points"])
            assert all(mask[py, px] for px, py in ann["scribbles"][0])
            value = 2 if ann["category_id"] == 1 else 3
            assert (label[mask] == value).all()
        assert (out / "images" / record.file_name).read_bytes() == (generic / "images" / record.file_name).read_bytes()


def test_deterministic_for_a_seed(generic, tmp_path):
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        make_weak_from_layout(tmp_path / name, generic, "generic", "all", class_names=NAMES, points=3, seed=seed)
    assert (tmp_path / "a/annotations.json").read_bytes() == (tmp_path / "b/annotations.json").read_bytes()
    assert not filecmp.dircmp(tmp_path / "a/gt", tmp_path / "b/gt").diff_files
    assert (tmp_path / "a/annotations.json").read_bytes() != (tmp_path / "c/annotations.json").read_bytes()


def test_camvid_layout(tmp_path):
    root = tmp_path / "CamVid"
    for split in ("val", "valannot"):
        (root / split).mkdir(parents=True)
    label = np.full((36, 48), 3, np.uint8)  # road
    label[10:25, 5:20] = 8  # car
    label[5:30, 30:33] = 2  # pole
    label[0:3] = 11  # void
    Image.fromarray(np.zeros((36, 48, 3), np.uint8)).save(root / "val" / "f001.png")
    Image.fromarray(label, mode="L").save(root / "valannot" / "f001.png")
    make_weak_from_layout(
        tmp_path / "out", root, "camvid", ["pole", "sign", "car", "pedestrian", "bicyclist"], split="val", min_area=10
    )
    coco = json.loads((tmp_path / "out/annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["pole", "sign", "car", "pedestrian", "bicyclist"]
    assert sorted(a["category_id"] for a in coco["annotations"]) == [1, 3]
    gt = read_label_png(tmp_path / "out/gt/f001.png")
    assert (gt[0:3] == 255).all() and (gt[10:25, 5:20] == 3).all() and (gt[5:30, 30:33] == 1).all()
    assert gt[30, 40] == 0  # road is background here
    with pytest.raises(WeakLabelError, match="needs a split"):
        make_weak_from_layout(tmp_path / "x", root, "camvid", "all")


def test_voc_instances_are_the_objects(tmp_path):
    root = tmp_path / "VOC"
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("a\n")
    (root / "JPEGImages").mkdir()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(root / "JPEGImages/a.jpg")
    cls, obj = np.zeros((30, 40), np.uint8), np.zeros((30, 40), np.uint8)
    cls[5:20, 5:30], obj[5:20, 5:15], obj[5:20, 15:30] = 15, 1, 2  # two touching people: one component, two objects
    cls[20, :], obj[20, :] = 255, 255
    write_label_png(root / "SegmentationClass/a.png", cls)
    write_label_png(root / "SegmentationObject/a.png", obj)
    make_weak_from_layout(tmp_path / "out", root, "voc", ["person"], split="val", min_area=10)
    coco = json.loads((tmp_path / "out/annotations.json").read_text())
    assert sorted(a["bbox"] for a in coco["annotations"]) == [[5, 5, 10, 15], [15, 5, 15, 15]]
    assert (read_label_png(tmp_path / "out/gt/a.png")[20] == 255).all()


def test_from_coco_keeps_the_instances(tmp_path):
    make_demo(tmp_path / "demo", images=2, seed=2)
    make_weak_from_coco(tmp_path / "weak", tmp_path / "demo/annotations.json", tmp_path / "demo/images", min_area=1)
    demo = CocoWeakDataset(tmp_path / "demo/annotations.json")
    weak = CocoWeakDataset(tmp_path / "weak/annotations.json")
    assert weak.class_names == demo.class_names
    for a, b in zip(demo.images, weak.images):
        # the demo's cup lies inside its disc: painted largest first, the disc's instance loses the cup
        assert len(b.annotations) >= len(a.annotations)
        assert sorted(x["category_id"] for x in b.annotations) == sorted(x["category_id"] for x in a.annotations)
    with pytest.raises(WeakLabelError, match="segmentation"):
        bare = json.loads((tmp_path / "demo/annotations.json").read_text())
        for ann in bare["annotations"]:
            del ann["segmentation"]
        (tmp_path / "bare.json").write_text(json.dumps(bare))
        make_weak_from_coco(tmp_path / "x", tmp_path / "bare.json", tmp_path / "demo/images")


@pytest.mark.parametrize("things, message", [(["truck"], "unknown class 'truck'"), (["car", "car"], "twice")])
def test_bad_classes(generic, tmp_path, things, message):
    with pytest.raises(WeakLabelError, match=message):
        make_weak_from_layout(tmp_path / "o", generic, "generic", things, class_names=NAMES)


def test_bad_sources(generic, tmp_path):
    with pytest.raises(WeakLabelError, match="not a directory"):
        make_weak_from_layout(tmp_path / "o", tmp_path / "nowhere", "generic", "all", class_names=NAMES)
    write_label_png(generic / "labels" / "im0.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(WeakLabelError, match="label map for a"):
        make_weak_from_layout(tmp_path / "o", generic, "generic", "all", class_names=NAMES)
    with pytest.raises(WeakLabelError, match="no images"):
        make_weak(tmp_path / "o", [], NAMES, "all")


def test_cli(generic, tmp_path, capsys):
    assert (
        main(
            [
                "make-weak",
                str(generic),
                str(tmp_path / "o"),
                "--layout",
                "generic",
                "--class-names",
                *NAMES,
                "--things",
                "car",
                "person",
                "--void",
                str(VOID),
            ]
        )
        == 0
    )
    assert "9 instances of car, person" in capsys.readouterr().out
    assert (
        main(
            [
                "make-weak",
                str(generic),
                str(tmp_path / "o"),
                "--layout",
                "generic",
                "--class-names",
                *NAMES,
                "--things",
                "truck",
            ]
        )
        == 2
    )
    assert "unknown class 'truck'" in capsys.readouterr().err
