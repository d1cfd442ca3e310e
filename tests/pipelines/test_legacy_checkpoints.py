"""Checkpoints written before the shared run directory still load.

The files in tests/fixtures/legacy were written by wsseg_fast at commit 7e49136 (the last commit
before the run-directory convention): a student (``train_student``, unet, widths 4,8, 32 px,
demo classes), a CAM classifier (``train_cam``, tiny SAM backbone, hidden 8) and a prompter
(``train_prompter``, tiny SAM, d_model 16), each trained one epoch on ``make_demo(images=2, seed=3)``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wsseg_fast.data import make_demo
from wsseg_fast.pipelines.cam import CamConfig, load_cam, train_cam
from wsseg_fast.pipelines.prompter import load_prompter
from wsseg_fast.pipelines.student import load_student, predict
from wsseg_fast.pipelines.training import RunDirError

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"


def test_a_legacy_student_predicts(tmp_path):
    model, meta = load_student(LEGACY / "student_last.pt")
    assert meta["arch"] == "unet" and meta["widths"] == [4, 8] and meta["epoch"] == 1
    make_demo(tmp_path / "demo", images=1, seed=0)
    [written] = predict(LEGACY / "student_last.pt", tmp_path / "demo" / "images", tmp_path / "pred", progress=False)
    assert written.exists()


def test_a_legacy_cam_classifier_loads():
    net, meta = load_cam(str(LEGACY / "cam_last.pt"), "sam", "tiny")
    assert meta["version"] == 2 and meta["hidden"] == 8
    logits, _, cams = net(torch.zeros(1, 256, 16, 16), torch.ones(1, 1, 16, 16))
    assert logits.shape == (1, meta["num_classes"]) and torch.isfinite(cams).all()


def test_a_legacy_prompter_loads():
    prompter, meta = load_prompter(LEGACY / "prompter.pt", model="tiny")
    assert meta["class_names"][0] == "background"
    out = prompter(torch.zeros(1, 256, 16, 16))
    assert np.isfinite(out["pred_logits"].detach().numpy()).all()


def test_a_legacy_run_is_not_resumed_but_refused_in_one_line(tmp_path):
    make_demo(tmp_path / "demo", images=2, seed=3)
    out = tmp_path / "cam"
    out.mkdir()
    (out / "last.pt").write_bytes((LEGACY / "cam_last.pt").read_bytes())
    with pytest.raises(RunDirError, match="not a cam checkpoint of this version"):
        train_cam(
            CamConfig(
                coco=str(tmp_path / "demo" / "annotations.json"),
                out=str(out),
                model="tiny",
                hidden=8,
                cache=None,
                epochs=2,
            ),
            progress=False,
        )
