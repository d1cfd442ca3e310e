"""The weight-free methods for real photos: logic-refine, GrabCut, and the CRF refinement,
on toy images whose right answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks import real_photos
from wsseg_fast.data import make_demo
from wsseg_fast.data.labels import write_label_png
from wsseg_fast.data.weak import make_weak_from_layout
from wsseg_fast.pipelines.classic import crf_refine
from wsseg_fast.pipelines.logic_refine import OPTIONS, refine
from wsseg_fast.pipelines.methods import METHODS, MethodInput, parse_options, resolve
from wsseg_fast.pipelines.pseudo_label import JobConfig, JobError, run_pseudo_label

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def toy(seed: int = 0):
    """A red L on textured grey: its box is twice its area; one point and one scribble on it."""
    rng = np.random.default_rng(seed)
    image = np.clip(110 + 12 * rng.standard_normal((64, 80, 3)), 0, 255)
    truth = np.zeros((64, 80), bool)
    truth[10:50, 20:30] = True
    truth[40:50, 20:60] = True
    image[truth] = np.clip([200, 40, 40] + 12 * rng.standard_normal((int(truth.sum()), 3)), 0, 255)
    ann = {"bbox": [20, 10, 40, 40], "category_id": 1, "points": [[25, 30]], "scribbles": [[[25, 15], [25, 45], [55, 45]]]}
    return image.astype(np.uint8), truth, ann


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def run_method(name, image, ann, **options):
    boxes = np.array([[ann["bbox"][0], ann["bbox"][1], ann["bbox"][0] + ann["bbox"][2], ann["bbox"][1] + ann["bbox"][3]]],
                     np.float32)
    ctx = MethodInput(image, boxes, np.array([1]), [ann], parse_options(name, [f"{k}={v}" for k, v in options.items()]))
    label, _ = resolve(METHODS[name].fn(ctx), *image.shape[:2])
    return label == 1


def test_logic_refine_recovers_the_object_that_the_box_overstates():
    image, truth, ann = toy()
    box = run_method("box", image, ann)
    refined = run_method("logic-refine", image, ann)
    assert iou(box, truth) == pytest.approx(700 / 1600)
    assert iou(refined, truth) > 0.85
    assert not (refined & ~box).any()  # nothing outside the box


@pytest.mark.parametrize("options", [{"colour_weight": 0.0}, {"box_weight": 0.0}, {"pairwise_weight": 1.0},
                                     {"superpixels": 30}, {"object_colour": "seeds"}, {"object_colour": "both"},
                                     {"rounds": 2}, {"scale": 0.5, "steps": 5}])
def test_every_step_can_be_switched(options):
    image, truth, ann = toy(1)
    mask = run_method("logic-refine", image, ann, **options)
    assert mask.any() and not mask[:, :20].any()  # runs, and stays in the box


def test_without_colour_the_tight_box_stays_full():
    """No colour evidence: the box prior and tightness keep the whole box (the honest answer)."""
    image, truth, ann = toy(2)
    mask = run_method("logic-refine", image, ann, colour_weight=0.0, border=0.0)
    assert mask[10:50, 20:60].mean() > 0.95


def test_sam_logits_join_as_a_term():
    image, truth, ann = toy(3)
    boxes = np.array([[20, 10, 60, 50]], np.float32)
    sam = np.where(truth, 10.0, -10.0)[None].astype(np.float32)
    with_sam = refine(image, boxes, [ann], {**OPTIONS, "colour_weight": 0.0, "sam_weight": 2.0}, sam)[0] > 0
    assert iou(with_sam, truth) > 0.9


def test_bad_option():
    image, _, ann = toy()
    with pytest.raises(ValueError, match="object_colour"):
        run_method("logic-refine", image, ann, object_colour="sky")


def test_grabcut_finds_a_distinct_object():
    pytest.importorskip("cv2")
    image, truth, ann = toy(4)
    mask = run_method("grabcut", image, ann)
    assert iou(mask, truth) > 0.8


def test_crf_moves_a_boundary_to_the_colour_edge():
    rng = np.random.default_rng(0)
    image = np.clip(60 + 5 * rng.standard_normal((40, 60, 3)), 0, 255)
    image[:, 30:] += 120
    label = np.zeros((40, 60), np.uint8)
    label[:, 27:] = 2  # the boundary 3 px left of the colour edge
    label[0, :] = 255
    refined = crf_refine(image.astype(np.uint8), label)
    truth = np.where(np.arange(60)[None] >= 30, 2, 0)
    assert (refined[1:] != truth[None, 0]).sum() < 0.7 * (label[1:] != truth[None, 0]).sum()
    assert (refined[0] == 255).all() and set(np.unique(refined)) == {0, 2, 255}
    assert (crf_refine(image.astype(np.uint8), np.zeros((40, 60), np.uint8)) == 0).all()  # one class: unchanged


def test_refine_crf_in_the_job(tmp_path):
    make_demo(tmp_path / "demo", images=2, seed=4)
    cfg = JobConfig(coco=str(tmp_path / "demo/annotations.json"), out=str(tmp_path / "out"), method="box",
                    refine="crf", threads=1)
    summary = run_pseudo_label(cfg, progress=False)
    assert summary["labelled"] == 2
    settings = json.loads((tmp_path / "out/settings.json").read_text())
    assert settings["refine"] == "crf"
    with pytest.raises(JobError, match="refine"):  # other settings: refused, not mixed
        run_pseudo_label(JobConfig(coco=cfg.coco, out=cfg.out, method="box", threads=1), progress=False)
    with pytest.raises(JobError, match="refine must be"):
        run_pseudo_label(JobConfig(coco=cfg.coco, out=str(tmp_path / "o2"), method="box", refine="bilateral"))


def test_real_photos_benchmark_runs_on_a_converted_dataset(tmp_path):
    """benchmarks/real_photos.py on a tiny dataset converted by make-weak (CamVid is not needed)."""
    for i in range(2):
        image, truth, _ = toy(i)
        (tmp_path / "src/images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "src/images" / f"t{i}.png")
        write_label_png(tmp_path / "src/labels" / f"t{i}.png", truth.astype(np.uint8))
    make_weak_from_layout(tmp_path / "weak", tmp_path / "src", "generic", ["thing"], class_names=["background", "thing"])
    assert real_photos.main([str(tmp_path / "weak"), "--out", str(tmp_path / "results"), "--work", str(tmp_path / "work"),
                             "--rows", "box", "logic-refine"]) == 0
    rows = {r["name"]: r for r in json.loads((tmp_path / "results/real_photos.json").read_text())["rows"]}
    assert rows["logic-refine"]["miou"] > rows["box"]["miou"] + 0.1
    assert "| logic-refine |" in (tmp_path / "results/real_photos.md").read_text()
