"""`wsseg-fast experiment demo` end to end at a toy size (the real run is in the README)."""

import json

import torch

from wsseg_fast.cli import main
from wsseg_fast.io import file_digest
from wsseg_fast.pipelines.experiments.demo import ROW_NAMES, DemoExperimentConfig, run_demo_experiment
from wsseg_fast.sam.model import build_sam


def test_demo_experiment_writes_every_row_and_resumes(tmp_path):
    """With a SAM checkpoint (as from pretrain-sam), which every SAM step uses."""
    weights = build_sam("tiny").state_dict()
    weights["mask_decoder.iou_token.weight"] += 1  # not the random init
    torch.save(weights, tmp_path / "standin.pth")
    cfg = DemoExperimentConfig(
        out=str(tmp_path / "exp"),
        train_images=2,
        test_images=2,
        finetune_epochs=1,
        prompter_epochs=2,
        loss_scale=0.25,
        student_epochs=1,
        student_size=32,
        student_widths=(8, 16),
        threads=1,
        checkpoint=str(tmp_path / "standin.pth"),
    )
    report = run_demo_experiment(cfg, progress=False)
    for job in ("test_sam_box", "test_prompter"):
        settings = json.loads((tmp_path / "exp" / job / "settings.json").read_text())
        assert settings["weights"] == "blake2b:" + file_digest(tmp_path / "standin.pth"), job
        if job == "test_sam_box":  # the prompter's upper bound: SAM's masks as the prompter gets them, unclipped
            assert (settings["options"]["clip_to_box"], settings["options"]["fallback"]) == (False, False)
    stage1 = torch.load(tmp_path / "exp" / "finetune" / "last.pt", weights_only=True)
    assert stage1["settings"]["checkpoint"] == cfg.checkpoint  # sbr's weights are stage 1's, started from it
    saved = json.loads((tmp_path / "exp" / "report.json").read_text())
    assert [r["name"] for r in saved["rows"]] == list(ROW_NAMES)
    for row in saved["rows"]:
        assert 0.0 <= row["miou"] <= 1.0
    assert set(saved["goals"]) >= {"sbr_minus_box", "student_sbr_over_student_gt"}
    assert (tmp_path / "exp" / "report.md").read_text().startswith("# Demo experiment")
    assert (tmp_path / "exp" / "report.png").stat().st_size > 0
    # A re-run finds every step finished: same numbers, and the students are not retrained.
    ckpt = tmp_path / "exp" / "students" / "student_gt" / "last.pt"
    before = ckpt.stat().st_mtime_ns
    again = run_demo_experiment(cfg, progress=False)
    assert [r["miou"] for r in again["rows"]] == [r["miou"] for r in report["rows"]]
    assert ckpt.stat().st_mtime_ns == before


def test_bad_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    assert main(["experiment", "demo", "--out", str(tmp_path / "exp"), "--checkpoint", str(tmp_path / "bad.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.pth" in err[0]
