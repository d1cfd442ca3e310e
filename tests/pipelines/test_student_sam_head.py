"""The student stage on the job's embedding cache: a ``sam-head`` student, every later stage reading
what a ``--backend onnxruntime`` pseudo-label job stored (nothing encoded again), the ResNet34 U-Net,
soft CAM maps and the plateau schedule. One demo job (tiny SAM, random weights) feeds the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from wsseg_fast.cli import main
from wsseg_fast.data import make_demo
from wsseg_fast.errors import CheckpointError
from wsseg_fast.models.student import build_trunk
from wsseg_fast.pipelines.cam import CamConfig, train_cam
from wsseg_fast.pipelines.evaluate import evaluate
from wsseg_fast.pipelines.finetune import FinetuneConfig, finetune
from wsseg_fast.pipelines.label_maps import read_label, read_soft
from wsseg_fast.pipelines.prompter import PrompterConfig, train_prompter
from wsseg_fast.pipelines.pseudo_label import JobConfig, run_pseudo_label
from wsseg_fast.pipelines.student import StudentConfig, head_losses, load_student, predict, train_student
from wsseg_fast.pipelines.student.data import NO_SOFT
from wsseg_fast.pipelines.training import RunDirError
from wsseg_fast.sam.engine import MissingEmbeddingError
from wsseg_fast.sam.settings import EncoderSettings

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    """A 6-image demo labelled by ``sam-box`` with the onnxruntime encoder into ``job/cache``."""
    root = tmp_path_factory.mktemp("samhead")
    make_demo(root, images=6, seed=3)
    summary = run_pseudo_label(JobConfig(**_job_flags(root), method="sam-box", threads=1), progress=False)
    assert summary["labelled"] == 6 and summary["run"]["encoded"] == 6
    return root


def _job_flags(root: Path) -> dict:
    return dict(coco=str(root / "annotations.json"), out=str(root / "labels"), **_encoder(root))


def _encoder(root: Path, **kw) -> dict:
    """The job's encoder settings; later stages add ``encode=False`` (a miss is an error)."""
    return dict(model="tiny", backend="onnxruntime", cache=str(root / "cache"), **kw)


def _entries(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root / "cache" / "embeddings"))


def _sam_head(root: Path, out: Path, sources: dict, **kw) -> StudentConfig:
    flags = _encoder(root, encode=False) | dict(size=32, head_width=16, batch_size=3, lr=3e-3, epochs=1) | kw
    return StudentConfig(images=str(root / "images"), sources=sources, out=str(out), arch="sam-head", **flags)


def test_every_stage_after_an_onnxruntime_job_encodes_nothing(job, tmp_path, capsys):
    entries = _entries(job)
    reads = _encoder(job, encode=False)
    coco = str(job / "annotations.json")
    finetune(FinetuneConfig(coco=coco, out=str(tmp_path / "ft"), epochs=1, threads=1, **reads))
    prompter = dict(num_queries=4, d_model=16, nhead=2, dim_feedforward=16, num_encoder_layers=1, num_decoder_layers=1)
    train_prompter(
        PrompterConfig(coco=coco, out=str(tmp_path / "p"), epochs=1, batch_size=2, threads=1, **prompter, **reads)
    )
    train_cam(CamConfig(coco=coco, out=str(tmp_path / "cam"), epochs=1, hidden=8, batch_size=2, **reads))
    student = train_student(_sam_head(job, tmp_path / "s", {"gt": str(job / "gt")}))
    predict(student, job / "images", tmp_path / "pred", encoder=EncoderSettings(**reads), progress=False)
    assert _entries(job) == entries
    log = capsys.readouterr().out
    assert log.count("embeddings: 6 from the cache, 0 encoded") >= 4, log  # cam, prompter, finetune, student
    # Without the job's backend the entries are other numerics: --no-encode says so in one line.
    with pytest.raises(MissingEmbeddingError, match="no embedding in the cache.*backend torch") as error:
        train_student(_sam_head(job, tmp_path / "t", {"gt": str(job / "gt")}, backend="torch"))
    assert "\n" not in str(error.value)


def test_sam_head_learns_the_demo_shapes_from_cached_features(job, tmp_path):
    gt = {"gt": str(job / "gt")}
    cfg = _sam_head(job, tmp_path / "s", gt, epochs=40, size=128, head_width=32, batch_size=2, lr=1e-2)
    checkpoint = train_student(cfg, progress=False)
    history = torch.load(checkpoint, weights_only=True)["history"]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"], [h["loss"] for h in history]
    written = predict(checkpoint, job / "images", tmp_path / "pred", encoder=EncoderSettings(**_encoder(job)))
    assert read_label(written[0]).shape == (240, 320)  # each image at its own size
    result = evaluate(tmp_path / "pred", job / "gt")
    # Measured 0.62 (features of a random tiny SAM: the image branch does much of it); background
    # everywhere scores 0.13, and so did runs too short to fit.
    assert result["miou"] > 0.45, result


def test_predict_heads_all_and_new_images_through_the_engine(job, tmp_path):
    sources = {"gt": str(job / "gt"), "box": str(job / "labels" / "labels")}
    checkpoint = train_student(_sam_head(job, tmp_path / "s", sources, epochs=2), progress=False)
    model, meta = load_student(checkpoint)
    assert meta["arch"] == "sam-head" and meta["heads"] == ["gt", "box"] and meta["sam"]["model"] == "tiny"
    out = tmp_path / "pred"
    settings = EncoderSettings(**_encoder(job, encode=False))
    predict(checkpoint, job / "images", out, heads=["all"], encoder=settings, progress=False)
    primary = predict(checkpoint, job / "images", tmp_path / "primary", encoder=settings, progress=False)
    for path in primary:
        assert torch.equal(read_label(path), read_label(out / "gt" / path.name))
        assert read_label(out / "box" / path.name).shape == read_label(path).shape
    # An image the cache has never seen is encoded through the same engine, once.
    fresh = tmp_path / "fresh"
    make_demo(fresh, images=1, seed=99)
    settings = EncoderSettings(**_encoder(job))
    predict(checkpoint, fresh / "images", tmp_path / "f1", encoder=settings, progress=False)
    entries = _entries(job)
    predict(checkpoint, fresh / "images", tmp_path / "f2", encoder=EncoderSettings(**_encoder(job, encode=False)))
    assert _entries(job) == entries
    assert (tmp_path / "f1" / "demo_0000.png").read_bytes() == (tmp_path / "f2" / "demo_0000.png").read_bytes()


def test_bad_inputs_give_one_line(job, tmp_path, capsys):
    with pytest.raises(ValueError, match="sam-head: size must be even, got 255"):
        _sam_head(job, tmp_path / "odd", {"gt": str(job / "gt")}, size=255)
    ck = tmp_path / "s"
    train_student(_sam_head(job, ck, {"gt": str(job / "gt")}), progress=False)
    # A run directory holding a student of another architecture.
    unet = StudentConfig(images=str(job / "images"), sources={"gt": str(job / "gt")}, out=str(ck), size=32, epochs=1)
    with pytest.raises(RunDirError, match="other settings.*arch"):
        train_student(unet, progress=False)
    # Features of another SAM: the head was trained on the tiny SAM's random weights.
    other = tmp_path / "other_sam.pth"
    from wsseg_fast.sam import build_model

    torch.manual_seed(5)
    torch.save({k: torch.randn_like(v) for k, v in build_model("tiny").module.state_dict().items()}, other)
    args = ["predict", "--checkpoint", str(ck / "last.pt"), "--images", str(job / "images"), "--out"]
    args += [str(tmp_path / "p"), "--sam-checkpoint", str(other), "--cache", str(job / "cache"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "trained on the features of SAM tiny" in err and "\n" not in err, err
    # --no-encode where the cache holds nothing.
    args = ["predict", "--checkpoint", str(ck / "last.pt"), "--images", str(job / "images"), "--out"]
    args += [str(tmp_path / "q"), "--backend", "onnxruntime", "--cache", str(tmp_path / "empty"), "--no-encode"]
    assert main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--no-encode" in err and "\n" not in err, err


def test_resnet34_unet_shapes_and_encoder_weights(job, tmp_path):
    trunk = build_trunk("resnet34", widths=())
    x = torch.randn(2, 3, 40, 56)
    assert trunk(x).shape[0] == 2 and trunk(x).shape[-2:] == (40, 56)  # any size: padded, then cropped back
    torch.manual_seed(1)
    reference = torchvision.models.resnet34()
    torch.save(reference.state_dict(), tmp_path / "r34.pth")  # what a user saves from torchvision
    trunk.load_encoder_weights(str(tmp_path / "r34.pth"))
    assert torch.equal(trunk.encoder.layer4[2].conv2.weight, reference.layer4[2].conv2.weight)
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="bad.pth.*resnet34") as error:
        trunk.load_encoder_weights(str(tmp_path / "bad.pth"))
    assert "\n" not in str(error.value)
    # Seed 003's recipe trains from them; the run records which weights it started from.
    cfg = StudentConfig(
        images=str(job / "images"),
        sources={"gt": str(job / "gt")},
        out=str(tmp_path / "r"),
        encoder="resnet34",
        encoder_weights=str(tmp_path / "r34.pth"),
        optimizer="adam",
        lr=1e-4,
        schedule="plateau",
        size=32,
        epochs=1,
    )
    model, meta = load_student(train_student(cfg, progress=False))
    assert meta["encoder"] == "resnet34" and meta["encoder_weights"].startswith("blake2b:")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 7, 32, 32)


def test_soft_cam_maps_the_sigmoid_loss_and_a_multihead_student(job, tmp_path):
    coco = str(job / "annotations.json")
    cam = train_cam(CamConfig(coco=coco, out=str(tmp_path / "cam"), epochs=1, hidden=8, batch_size=2, **_encoder(job)))
    out = tmp_path / "camjob"
    run_pseudo_label(
        JobConfig(**{**_job_flags(job), "out": str(out)}, method="cam", options={"cam": cam}, threads=1), progress=False
    )
    soft = read_soft(out / "soft" / "demo_0000.npz")
    assert soft.shape == (7, 240, 320) and 0 <= soft.min() and soft.max() <= 1
    hard = read_label(out / "labels" / "demo_0000.png")
    # Where the label map has a (tagged) class, that class tops the soft map (up to its 1/255 steps).
    fg = hard > 0
    assert fg.any() and (soft.gather(0, hard[None])[0][fg] >= soft.max(0).values[fg] - 1 / 255).all()
    # The sigmoid loss of a soft head is a plain per-class BCE over the images that have a soft map.
    torch.manual_seed(0)
    logits, target = torch.randn(2, 7, 8, 8), torch.rand(2, 7, 8, 8)
    target[1] = NO_SOFT
    [loss] = head_losses({"cam": logits}, {"cam": target}, ["cam"]).values()
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits[:1], target[:1]))
    sources = {"gt": str(job / "gt"), "cam": str(out / "soft")}
    cfg = StudentConfig(
        images=str(job / "images"), sources=sources, out=str(tmp_path / "mh"), arch="multihead", size=32, widths=(8, 16)
    )
    cfg.epochs, cfg.gt_fraction = 2, 0.5
    train_student(cfg, progress=False)
    meta = load_student(tmp_path / "mh")[1]
    assert meta["soft_heads"] == ["cam"]


def test_plateau_schedule_halves_on_a_plateau_and_resumes_exactly(job, tmp_path):
    def config(out, epochs):
        return StudentConfig(
            images=str(job / "images"),
            sources={"gt": str(job / "gt")},
            out=str(out),
            size=32,
            widths=(8, 16),
            epochs=epochs,
            optimizer="adam",
            lr=0.3,  # so large that the loss stops improving within a few epochs
            schedule="plateau",
            plateau_patience=0,
        )

    full = torch.load(train_student(config(tmp_path / "full", 6), progress=False), weights_only=True)
    losses, lrs = [h["loss"] for h in full["history"]], [h["lr"] for h in full["history"]]
    replay = torch.optim.lr_scheduler.ReduceLROnPlateau(
        torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.3), factor=0.5, patience=0
    )
    expected = []
    for loss in losses:
        expected.append(replay.optimizer.param_groups[0]["lr"])
        replay.step(loss)
    assert lrs == pytest.approx(expected) and min(lrs) < 0.3, (losses, lrs)
    train_student(config(tmp_path / "split", 3), progress=False)
    split = torch.load(train_student(config(tmp_path / "split", 6), progress=False), weights_only=True)
    assert [h["lr"] for h in split["history"]] == lrs
    for k, v in full["model"].items():
        assert torch.equal(v, split["model"][k]), k
    assert split["plateau"] == full["plateau"]


def test_sam_head_reads_sam2_levels_and_checks_its_inputs():
    from wsseg_fast.models.sam_head import SamFeatureHead

    torch.manual_seed(0)
    shapes = [(16, 4, 4), (8, 16, 16), (8, 8, 8)]  # SAM 2.1's embedding, 4g and 2g levels, in cache order
    head = SamFeatureHead(3, shapes, heads=["gt", "box"], primary="gt", size=16, image_branch=True, width=8)
    levels = [torch.randn(2, *s) for s in shapes]
    image = torch.randn(2, 3, 16, 16)
    out = head(*levels, image)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"gt": (2, 3, 16, 16), "box": (2, 3, 16, 16)}
    torch.testing.assert_close(head.predict(*levels, image), out["gt"])
    out["gt"].sum().backward()
    assert all(head.skips[k].weight.grad.abs().sum() > 0 for k in ("2", "4"))  # both levels reach the logits
    with pytest.raises(ValueError, match=r"expected \[B, 8, 16, 16\]"):
        head(levels[0], levels[2], levels[1], image)
    with pytest.raises(ValueError, match="expected 3 feature level"):
        head(*levels)
    with pytest.raises(ValueError, match="neither 2x nor 4x"):
        SamFeatureHead(3, [(16, 4, 4), (8, 12, 12)])
