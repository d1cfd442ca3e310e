"""The pseudo-labelling job end to end on the demo dataset (tiny SAM, random weights)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from wsseg_fast.cli import main
from wsseg_fast.data import make_demo, read_label_png
from wsseg_fast.pipelines.methods import parse_options
from wsseg_fast.pipelines.pseudo_label import JobConfig, JobError, run_pseudo_label

# pycocotools 2.0 calls np.array(copy=False) on NumPy 2: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

DETERMINISTIC = ["labels", "parts", "pseudo_labels.json", "manifest.json", "report.json", "report.md", "settings.json"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    make_demo(out, images=4, seed=0)
    return out


def snapshot(out) -> dict:
    files = {}
    for name in DETERMINISTIC:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            for f in sorted(os.listdir(path)):
                files[f"{name}/{f}"] = open(os.path.join(path, f), "rb").read()
        elif os.path.exists(path):
            files[name] = open(path, "rb").read()
    return files


def test_box_baseline_and_report(demo, tmp_path):
    cfg = JobConfig(coco=str(demo / "annotations.json"), out=str(tmp_path / "out"), method="box")
    summary = run_pseudo_label(cfg, progress=False)
    assert summary["labelled"] == 4 and not summary["failed"]
    report = json.loads((tmp_path / "out/report.json").read_text())
    # filled boxes: the disc and the boxes of compact shapes score well, the rod and the ring poorly
    assert 0.3 < report["miou"] < 0.9
    assert report["per_class"]["disc"]["iou"] > report["per_class"]["ell"]["iou"]
    assert "| mIoU |" in (tmp_path / "out/report.md").read_text()
    label = read_label_png(tmp_path / "out/labels/demo_0000.png")
    gt = read_label_png(demo / "gt/demo_0000.png")
    assert label.shape == gt.shape and set(np.unique(label)) <= set(range(7))
    coco = json.loads((tmp_path / "out/pseudo_labels.json").read_text())
    assert len(coco["images"]) == 4 and all(a["segmentation"]["counts"] for a in coco["annotations"])
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert [e["file_name"] for e in manifest["images"]] == [f"demo_{i:04d}.png" for i in range(4)]


def test_sam_box_resume_and_determinism(demo, tmp_path):
    common = dict(coco=str(demo / "annotations.json"), method="sam-box", model="tiny", cache=str(tmp_path / "cache"))
    first = run_pseudo_label(JobConfig(out=str(tmp_path / "a"), **common), progress=False)
    assert first["run"]["encoded"] == 4 and first["run"]["cache_hits"] == 0
    again = run_pseudo_label(JobConfig(out=str(tmp_path / "a"), **common), progress=False)
    assert again["run"]["images_skipped_as_done"] == 4 and again["run"]["images_labelled"] == 0
    warm = run_pseudo_label(JobConfig(out=str(tmp_path / "b"), visualize=True, **common), progress=False)
    assert warm["run"]["cache_hits"] == 4 and warm["run"]["encoded"] == 0
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")  # cold and warm runs: same bytes
    assert len(os.listdir(tmp_path / "b/vis")) == 4
    # a lost label makes its image redo, nothing else
    os.unlink(tmp_path / "a/labels/demo_0002.png")
    redo = run_pseudo_label(JobConfig(out=str(tmp_path / "a"), **common), progress=False)
    assert redo["run"]["images_labelled"] == 1 and snapshot(tmp_path / "a") == snapshot(tmp_path / "b")
    with pytest.raises(JobError, match="other settings .*method"):
        run_pseudo_label(JobConfig(out=str(tmp_path / "a"), **{**common, "method": "box"}), progress=False)
    replaced = run_pseudo_label(
        JobConfig(out=str(tmp_path / "a"), overwrite=True, **{**common, "method": "box"}), progress=False
    )
    assert replaced["run"]["images_labelled"] == 4 and replaced["run"]["images_skipped_as_done"] == 0


def test_bad_image_is_skipped_and_reported(demo, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo, data)
    (data / "images/demo_0001.png").write_bytes(b"not a png")
    code = main(
        [
            "pseudo-label",
            "--coco",
            str(data / "annotations.json"),
            "--out",
            str(tmp_path / "out"),
            "--method",
            "box",
            "--quiet",
        ]
    )
    assert code == 3
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert len(manifest["images"]) == 3 and manifest["failed"][0]["file_name"] == "demo_0001.png"
    assert "cannot be read" in manifest["failed"][0]["error"]


def test_method_options():
    assert parse_options("sam-box", ["multimask=true", "box_margin=4"])["multimask"] is True
    with pytest.raises(ValueError, match="keys: multimask"):
        parse_options("sam-box", ["nope=1"])
    with pytest.raises(ValueError, match="true/false"):
        parse_options("sam-box", ["multimask=maybe"])
    with pytest.raises(ValueError, match="unknown method"):
        parse_options("magic", [])


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert (
        main(["pseudo-label", "--coco", str(tmp_path / "none.json"), "--out", str(tmp_path / "o"), "--method", "box"])
        == 2
    )
    assert "annotation file not found" in capsys.readouterr().err
    assert main(["pseudo-label", "--coco", "x.json", "--out", "o", "--method-option", "bad"]) == 2


@pytest.mark.slow
def test_sigkill_midway_then_resume_gives_identical_outputs(demo, tmp_path):
    """A run killed with SIGKILL mid-image and re-run == an uninterrupted run, byte for byte."""
    args = [
        sys.executable,
        "-m",
        "wsseg_fast",
        "pseudo-label",
        "--coco",
        str(demo / "annotations.json"),
        "--method",
        "sam-point",
        "--model",
        "tiny",
        "--no-cache",
        "--quiet",
    ]
    env = {**os.environ, "WSSEG_FAST_TEST_DELAY": "0.5"}  # seconds per image, so the kill lands midway
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        args + ["--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120

    def finished():
        return [f for f in os.listdir(killed / "parts") if f.endswith(".json")] if (killed / "parts").exists() else []

    while time.time() < deadline and len(finished()) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    parts = finished()
    assert 2 <= len(parts) < 4, parts  # really midway
    assert not (killed / "manifest.json").exists()
    common = dict(
        coco=str(demo / "annotations.json"),
        method="sam-point",
        model="tiny",
        options=parse_options("sam-point", []),
        cache=None,
    )
    with pytest.raises(JobError, match="embedding differ"):  # cached (fp16-stored) embeddings would not match
        run_pseudo_label(JobConfig(out=str(killed), **{**common, "cache": str(tmp_path / "cache")}), progress=False)
    resumed = run_pseudo_label(JobConfig(out=str(killed), **common), progress=False)
    assert resumed["run"]["images_skipped_as_done"] == len(parts)
    clean = tmp_path / "clean"
    run_pseudo_label(JobConfig(out=str(clean), **common), progress=False)
    assert snapshot(killed) == snapshot(clean)
    leftovers = [f for d in ("labels", "parts") for f in os.listdir(killed / d) if f.startswith(".tmp-")]
    assert not leftovers


@pytest.mark.slow
def test_ray_executor_gives_the_local_outputs(demo, tmp_path):
    pytest.importorskip("ray.data")
    common = dict(
        coco=str(demo / "annotations.json"),
        method="sam-box",
        model="tiny",
        cache=str(tmp_path / "cache"),
        options=parse_options("sam-box", []),
    )
    local = run_pseudo_label(JobConfig(out=str(tmp_path / "local"), **common), progress=False)
    assert local["run"]["encoded"] == 4
    remote = run_pseudo_label(
        JobConfig(
            out=str(tmp_path / "ray"), executor="ray", workers=2, **{**common, "cache": str(tmp_path / "cache2")}
        ),
        progress=False,
    )
    assert remote["run"]["encoded"] == 4 and remote["labelled"] == 4
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")


def test_finetuned_decoder_changes_the_labels(demo, tmp_path):
    import torch

    from wsseg_fast.sam import build_sam

    sam = build_sam("tiny")
    with torch.no_grad():
        for p in sam.mask_decoder.parameters():
            p.add_(0.05)
    torch.save(sam.mask_decoder.state_dict(), tmp_path / "decoder.pth")
    common = dict(
        coco=str(demo / "annotations.json"),
        method="sam-box",
        model="tiny",
        cache=str(tmp_path / "cache"),
        options=parse_options("sam-box", ["fallback=false", "clip_to_box=false"]),
    )
    run_pseudo_label(JobConfig(out=str(tmp_path / "base"), **common), progress=False)
    tuned = run_pseudo_label(
        JobConfig(out=str(tmp_path / "tuned"), finetuned=str(tmp_path / "decoder.pth"), **common), progress=False
    )
    assert tuned["run"]["cache_hits"] == 4  # the decoder is not part of the embedding key
    assert snapshot(tmp_path / "base")["labels/demo_0000.png"] != snapshot(tmp_path / "tuned")["labels/demo_0000.png"]
    settings = json.loads((tmp_path / "tuned/settings.json").read_text())
    assert settings["finetuned"] is not None


def test_batched_encoding_and_point_prompts(demo, tmp_path):
    common = dict(coco=str(demo / "annotations.json"), model="tiny", cache=None)
    for method, options in (("sam-box", []), ("sam-point", ["with_box=true"])):
        opts = parse_options(method, options)
        one = run_pseudo_label(
            JobConfig(out=str(tmp_path / f"{method}-1"), method=method, options=opts, **common), progress=False
        )
        three = run_pseudo_label(
            JobConfig(out=str(tmp_path / f"{method}-3"), method=method, options=opts, batch_size=3, **common),
            progress=False,
        )
        assert one["run"]["encoded"] == three["run"]["encoded"] == 4  # no cache: always encoded
        assert snapshot(tmp_path / f"{method}-1") == snapshot(tmp_path / f"{method}-3")


@pytest.fixture(scope="module")
def one_image(demo):
    """The first demo image, a tiny SAM engine and the image's embedding."""
    from wsseg_fast.data import CocoWeakDataset
    from wsseg_fast.sam import SamEngine

    dataset = CocoWeakDataset(str(demo / "annotations.json"))
    image = dataset.load_image(dataset.images[0])
    engine = SamEngine("tiny")
    return image, engine, engine.embed([image])[0]


def run_method(one_image, method: str, boxes: np.ndarray, options: list[str]):
    from wsseg_fast.pipelines.methods import METHODS, MethodInput

    image, engine, embedding = one_image
    ctx = MethodInput(
        image=image,
        boxes=boxes,
        classes=np.arange(1, len(boxes) + 1),
        annotations=[{}] * len(boxes),
        engine=engine,
        embedding=embedding,
        options=parse_options(method, options),
    )
    return METHODS[method].fn(ctx)


@pytest.mark.parametrize("method, options", [("sam-box", []), ("sbr", ["colour_refine=false"])])
def test_zoom_redecodes_small_boxes_on_their_windows(one_image, method, options):
    from wsseg_fast.pipelines.methods.sam import OUTSIDE_WINDOW_LOGIT
    from wsseg_fast.sam.prompting import MIN_ZOOM, zoom_factor, zoom_window

    image, engine, _ = one_image
    h, w = image.shape[:2]
    boxes = np.array([[10, 12, 30, 40], [0, 0, w - 1, h - 1]], np.float32)  # a small box and the whole image
    plain, zoomed = (
        run_method(one_image, method, boxes, ["fallback=false", f"zoom={zoom}", *options]) for zoom in (False, True)
    )
    window = zoom_window(boxes[0], h, w)
    assert zoom_factor(window, h, w) >= MIN_ZOOM and zoom_factor(zoom_window(boxes[1], h, w), h, w) < MIN_ZOOM
    assert np.array_equal(zoomed.masks[1], plain.masks[1]) and np.array_equal(
        zoomed.pixel_scores[1], plain.pixel_scores[1]
    )
    x0, y0, x1, y1 = window
    outside = np.ones((h, w), bool)
    outside[y0:y1, x0:x1] = False
    assert np.allclose(zoomed.pixel_scores[0][outside], 1 / (1 + np.exp(-OUTSIDE_WINDOW_LOGIT)))
    assert not np.allclose(zoomed.pixel_scores[0][~outside], plain.pixel_scores[0][~outside])  # decoded anew
    unzoomed = run_method(one_image, method, boxes, ["fallback=false", "zoom=true", "zoom_min=100", *options])
    assert np.array_equal(unzoomed.pixel_scores, plain.pixel_scores)  # zoom_min: only boxes enlarged that much
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])  # ... from the window's own embedding
    [window_embedding] = engine.embed([crop])
    expected = engine.predict(window_embedding, boxes=boxes[:1] - np.array([x0, y0, x0, y0], np.float32))
    assert np.allclose(zoomed.pixel_scores[0][y0:y1, x0:x1], torch.sigmoid(expected.logits[0, 0]).numpy(), atol=1e-6)


def test_min_score_falls_back_to_the_boxes_sam_doubts(one_image):
    from wsseg_fast.pipelines.methods import box_masks
    from wsseg_fast.sam import SamEngine

    image, _, embedding = one_image
    engine = SamEngine("tiny")
    with torch.no_grad():  # the untrained IoU head scores about 0: lift it to a trained one's range
        engine.model.mask_decoder.iou_prediction_head.layers[-1].bias += 0.5
    h, w = image.shape[:2]
    boxes = np.array([[10, 12, 60, 70], [30, 5, 120, 90]], np.float32)
    trusted = run_method((image, engine, embedding), "sam-box", boxes, ["clip_to_box=false", "fallback=false"])
    threshold = float(trusted.scores.mean())  # between the two scores
    assert threshold > 0 and (trusted.scores < threshold).sum() == 1
    doubted = run_method((image, engine, embedding), "sam-box", boxes, ["clip_to_box=false", f"min_score={threshold}"])
    filled = box_masks(boxes, h, w)
    for i, score in enumerate(trusted.scores):
        assert np.array_equal(doubted.masks[i], filled[i] if score < threshold else trusted.masks[i])
    assert not np.array_equal(trusted.masks, doubted.masks)
