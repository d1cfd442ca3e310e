"""`wsseg-fast experiment demo` end to end at a toy size (the real run is in the README)."""

import json

from wsseg_fast.pipelines.experiment import ROW_NAMES, DemoExperimentConfig, run_demo_experiment


def test_demo_experiment_writes_every_row_and_resumes(tmp_path):
    cfg = DemoExperimentConfig(out=str(tmp_path / "exp"), train_images=2, test_images=2, finetune_epochs=1,
                               loss_scale=0.25, student_epochs=1, student_size=32, student_widths=(8, 16), threads=1)
    report = run_demo_experiment(cfg, progress=False)
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
