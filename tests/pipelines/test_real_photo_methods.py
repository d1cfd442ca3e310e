"""The weight-free methods for real photos: logic-refine, GrabCut, and the CRF refinement,
on toy images whose right answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import real_photos
from wsseg_fast.cli import main
from wsseg_fast.data import make_demo
from wsseg_fast.data.labels import write_label_png
from wsseg_fast.data.weak import make_weak_from_layout
from wsseg_fast.errors import ConfigError
from wsseg_fast.logic import class_truths
from wsseg_fast.pipelines.crf import crf_refine
from wsseg_fast.pipelines.methods import METHODS, MethodError, MethodInput, parse_options, resolve
from wsseg_fast.pipelines.methods.logic_refine import OPTIONS, _Coupling, refine
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
    ann = {
        "bbox": [20, 10, 40, 40],
        "category_id": 1,
        "points": [[25, 30]],
        "scribbles": [[[25, 15], [25, 45], [55, 45]]],
    }
    return image.astype(np.uint8), truth, ann


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def run_method(name, image, ann, **options):
    boxes = np.array(
        [[ann["bbox"][0], ann["bbox"][1], ann["bbox"][0] + ann["bbox"][2], ann["bbox"][1] + ann["bbox"][3]]], np.float32
    )
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


@pytest.mark.parametrize(
    "options",
    [
        {"colour_weight": 0.0},
        {"box_weight": 0.0},
        {"pairwise_weight": 1.0},
        {"superpixels": 30},
        {"object_colour": "seeds"},
        {"object_colour": "both"},
        {"rounds": 2},
        {"scale": 0.5, "steps": 5},
    ],
)
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


def nested(seed: int = 0):
    """A blue disc-square with a red cup-square inside; the disc's scribble and the cup's point."""
    rng = np.random.default_rng(seed)
    image = np.clip(120 + 10 * rng.standard_normal((64, 64, 3)), 0, 255)
    image[12:52, 12:52] = np.clip([40, 60, 200] + 10 * rng.standard_normal((40, 40, 3)), 0, 255)
    image[26:38, 26:38] = np.clip([210, 40, 40] + 10 * rng.standard_normal((12, 12, 3)), 0, 255)
    boxes = np.array([[12, 12, 52, 52], [26, 26, 38, 38]], np.float32)
    anns = [
        {"bbox": [12, 12, 40, 40], "category_id": 1, "scribbles": [[[15, 15], [15, 48], [48, 48]]]},
        {"bbox": [26, 26, 12, 12], "category_id": 2, "points": [[32, 32]]},
    ]
    return image.astype(np.uint8), boxes, anns


def refine_nested(tmp_path, rules: str, **options):
    image, boxes, anns = nested()
    if rules:
        (tmp_path / "priors.yaml").write_text(rules)
        options["priors"] = str(tmp_path / "priors.yaml")
    logits = refine(
        image, boxes, anns, {**OPTIONS, **options}, classes=np.array([1, 2]), class_names=("background", "disc", "cup")
    )
    p = 1 / (1 + np.exp(-logits))
    return p[0, 26:38, 26:38].mean(), p[1, 26:38, 26:38].mean()  # the disc and the cup over the cup


def test_class_priors_couple_the_instances(tmp_path):
    disc, cup = refine_nested(tmp_path, "")
    assert disc > 0.9 and cup > 0.9  # alone, the disc's box covers the cup
    disc_x, cup_x = refine_nested(tmp_path, "excludes: [[cup, disc]]\n")
    assert disc_x < 0.5 and cup_x > 0.9  # never both: the bigger box gives way
    disc_1, _ = refine_nested(tmp_path, "one_class_per_pixel: true\n")
    assert disc_1 < 0.5
    disc_s, _ = refine_nested(tmp_path, "", object_colour="seeds")  # the disc's colours from its blue scribble
    disc_c, cup_c = refine_nested(tmp_path, "contains: [[cup, disc]]\n", object_colour="seeds")
    assert disc_s < 0.1 and disc_c > disc_s + 0.15 and cup_c > 0.9  # cup -> disc fills the disc's hole
    assert refine_nested(tmp_path, "excludes: [[cup, disc]]\n", prior_weight=0.0)[0] == disc  # weight 0: off
    assert refine_nested(tmp_path, "excludes: [[cup, disc]]\n", scale=0.5)[0] < 0.5  # scaled crops too


@pytest.mark.parametrize(
    "rules", [{"contains": [["cup", "disc"]]}, {"one_class_per_pixel": True}], ids=["contains", "one-class"]
)
def test_sparse_class_truths_match_the_dense_ones(rules):
    """The priors' loss on the boxes' pixels equals the knowledge base on class_truths of the pasted maps."""
    torch.manual_seed(0)
    h, w = 20, 24
    bounds = [(2, 12, 3, 15), (6, 18, 10, 22), (0, 5, 0, 4)]
    classes = torch.tensor([1, 2, 1])
    names = ["background", "disc", "cup"]
    coupling = _Coupling((rules, classes, names), bounds, h, w)
    sizes = [(y1 - y0, x1 - x0) for y0, y1, x0, x1 in bounds]
    z = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    dense = torch.full((3, h, w), -60.0, dtype=torch.float64)
    covered = torch.zeros(h, w, dtype=torch.bool)
    for i, (y0, y1, x0, x1) in enumerate(bounds):
        dense[i, y0:y1, x0:x1] = z[i, 0, : y1 - y0, : x1 - x0]
        covered[y0:y1, x0:x1] = True
    truths = class_truths(dense, classes, 3)[:, covered]
    torch.testing.assert_close(coupling.loss(z, sizes), coupling.kb(truths[None, :, :, None])[0])


def test_bad_class_priors(tmp_path):
    for text, match in [("excludes: [[cup, lid]]", "unknown class 'lid'"), ("containz: []", "unknown prior kinds")]:
        with pytest.raises(MethodError, match="--method-option priors: .*" + match):
            refine_nested(tmp_path, text)
    with pytest.raises(MethodError, match="cannot read"):
        refine_nested(tmp_path, "", priors=str(tmp_path / "missing.yaml"))
    image, boxes, anns = nested()
    with pytest.raises(MethodError, match="class names"):
        refine(image, boxes, anns, {**OPTIONS, "priors": str(tmp_path / "priors.yaml")})


def test_class_priors_in_the_job(tmp_path):
    make_demo(tmp_path / "demo", images=2, seed=4)
    (tmp_path / "priors.yaml").write_text("contains: [[cup, disc]]\n")
    cfg = JobConfig(
        coco=str(tmp_path / "demo/annotations.json"),
        out=str(tmp_path / "out"),
        method="logic-refine",
        options=parse_options("logic-refine", [f"priors={tmp_path / 'priors.yaml'}", "steps=5"]),
        threads=1,
    )
    assert run_pseudo_label(cfg, progress=False)["labelled"] == 2
    # The job keeps the file by its content: the same path with other priors is other settings.
    assert json.loads((tmp_path / "out" / "settings.json").read_text())["files"]["priors"]
    (tmp_path / "priors.yaml").write_text("excludes: [[cup, ring]]\n")
    with pytest.raises(JobError, match=r"other settings \(files differ\)"):
        run_pseudo_label(cfg, progress=False)
    (tmp_path / "bad.yaml").write_text("contains: [[cup, lid]]\n")
    cfg.options = parse_options("logic-refine", [f"priors={tmp_path / 'bad.yaml'}"])
    cfg.out = str(tmp_path / "out2")
    with pytest.raises(MethodError, match=r"contains\[cup->lid\]: unknown class 'lid'"):
        run_pseudo_label(cfg, progress=False)
    assert not (tmp_path / "out2").exists()  # refused before the first image: nothing written


@pytest.mark.parametrize("method", ["logic-refine", "sam-logic-refine"])
def test_contradictory_priors_stop_the_job_before_it_starts(tmp_path, capsys, method):
    make_demo(tmp_path / "demo", images=1, seed=4)
    (tmp_path / "priors.yaml").write_text("contains: [[cup, disc]]\none_class_per_pixel: true\n")
    args = ["pseudo-label", "--coco", str(tmp_path / "demo/annotations.json"), "--out", str(tmp_path / "out")]
    args += ["--method", method, "--model", "tiny", "--method-option", f"priors={tmp_path / 'priors.yaml'}"]
    assert main(args) == 2
    err = capsys.readouterr().err.removeprefix(
        "note: no --checkpoint: SAM tiny has random weights; the masks only exercise the pipeline\n"
    )
    assert err.startswith("wsseg-fast pseudo-label: error: --method-option priors: ") and err.count("\n") == 1
    assert "contains[cup->disc] and one_class_per_pixel contradict each other" in err
    assert not (tmp_path / "out").exists()


def test_grabcut_finds_a_distinct_object():
    pytest.importorskip("cv2")
    image, truth, ann = toy(4)
    mask = run_method("grabcut", image, ann)
    assert iou(mask, truth) > 0.8


def ring_misleads(seed: int = 0):
    """A red object on the left of its box; the box's right third is blue sky, which fills the image's
    top 40 rows but is nowhere in the 20-pixel ring around the box (grey road)."""
    rng = np.random.default_rng(seed)
    image = np.empty((100, 120, 3))
    image[:40] = (60, 90, 220)  # sky
    image[40:] = (110, 110, 110)  # road
    image[62:77, 75:90] = (60, 90, 220)  # the sky seen through the object's box
    image[62:77, 45:75] = (210, 40, 40)  # the object
    image = np.clip(image + 6 * rng.standard_normal(image.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((100, 120), bool)
    truth[62:77, 45:75] = True
    return image, truth, {"bbox": [45, 62, 45, 15], "category_id": 1}


def test_grabcut_with_the_whole_image_beats_the_crop_where_the_ring_misleads():
    pytest.importorskip("cv2")
    image, truth, ann = ring_misleads()
    whole = run_method("grabcut", image, ann)  # the default: the whole image outside the box is background
    crop = run_method("grabcut", image, ann, margin=20)
    assert iou(whole, truth) > 0.95
    assert iou(crop, truth) < 0.8  # the ring holds no sky: the sky in the box stays object


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
    cfg = JobConfig(
        coco=str(tmp_path / "demo/annotations.json"), out=str(tmp_path / "out"), method="box", refine="crf", threads=1
    )
    summary = run_pseudo_label(cfg, progress=False)
    assert summary["labelled"] == 2
    settings = json.loads((tmp_path / "out/settings.json").read_text())
    assert settings["refine"] == "crf"
    with pytest.raises(JobError, match="refine"):  # other settings: refused, not mixed
        run_pseudo_label(JobConfig(coco=cfg.coco, out=cfg.out, method="box", threads=1), progress=False)
    with pytest.raises(ConfigError, match="refine must be"):
        run_pseudo_label(JobConfig(coco=cfg.coco, out=str(tmp_path / "o2"), method="box", refine="bilateral"))


def test_real_photos_benchmark_runs_on_a_converted_dataset(tmp_path):
    """benchmarks/real_photos.py on a tiny dataset converted by make-weak (CamVid is not needed)."""
    for i in range(2):
        image, truth, _ = toy(i)
        (tmp_path / "src/images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "src/images" / f"t{i}.png")
        write_label_png(tmp_path / "src/labels" / f"t{i}.png", truth.astype(np.uint8))
    make_weak_from_layout(
        tmp_path / "weak", tmp_path / "src", "generic", ["thing"], class_names=["background", "thing"]
    )
    assert (
        real_photos.main(
            [
                str(tmp_path / "weak"),
                "--out",
                str(tmp_path / "results"),
                "--work",
                str(tmp_path / "work"),
                "--rows",
                "box",
                "logic-refine",
            ]
        )
        == 0
    )
    rows = {r["name"]: r for r in json.loads((tmp_path / "results/real_photos.json").read_text())["rows"]}
    assert rows["logic-refine"]["miou"] > rows["box"]["miou"] + 0.1
    assert "| logic-refine |" in (tmp_path / "results/real_photos.md").read_text()
