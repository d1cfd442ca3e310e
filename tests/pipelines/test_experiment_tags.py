"""`wsseg-fast experiment demo-tags` end to end at a toy size (the real run is in docs/tags.md)."""

import json

from wsseg_fast.cli import main
from wsseg_fast.pipelines.experiments.tags import (
    TAG_CLASSIFIERS,
    TagsExperimentConfig,
    run_tags_experiment,
)


def test_tags_experiment_writes_the_ablation_walks_and_student_and_resumes(tmp_path):
    cfg = TagsExperimentConfig(
        out=str(tmp_path / "exp"),
        train_images=2,
        test_images=2,
        cam_epochs=1,
        walk_steps=2,
        points_per_side=2,
        student_epochs=1,
        student_size=32,
        student_widths=(8, 16),
        threads=1,
    )
    report = run_tags_experiment(cfg, progress=False)
    saved = json.loads((tmp_path / "exp" / "report.json").read_text())
    names = [r["name"] for r in saved["rows"]]
    best = saved["best_classifier"]
    assert names[:4] == list(TAG_CLASSIFIERS) and best in TAG_CLASSIFIERS
    assert names[4:6] == [f"cam-rw ({best})", f"cam-sam-rw ({best})"]
    assert names[6] == f"student ({saved['student_source']})" and saved["student_source"] in names[:6]
    assert all(0.0 <= r["miou"] <= 1.0 for r in saved["rows"])
    assert set(saved["gains"]) == {"ssc", "subclass", "recon", "cam-rw", "cam-sam-rw"}
    assert saved["vgg_weights"] == "random"
    log = (tmp_path / "exp" / "cam" / "cam_ssc_recon" / "log.jsonl").read_text()
    assert '"recon"' in log and '"ssc"' in log
    assert (tmp_path / "exp" / "report.md").read_text().startswith("# Demo experiment: image tags only")
    assert (tmp_path / "exp" / "report.png").stat().st_size > 0
    ckpt = tmp_path / "exp" / "students" / "student_tags" / "last.pt"
    before = ckpt.stat().st_mtime_ns
    again = run_tags_experiment(cfg, progress=False)  # every step finished: same numbers, nothing retrained
    assert [r["miou"] for r in again["rows"]] == [r["miou"] for r in report["rows"]]
    assert ckpt.stat().st_mtime_ns == before


def test_bad_vgg_weights_are_one_line(tmp_path, capsys):
    (tmp_path / "vgg.pt").write_bytes(b"junk")
    assert (
        main(["experiment", "demo-tags", "--out", str(tmp_path / "e"), "--vgg-weights", str(tmp_path / "vgg.pt")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--vgg-weights" in err[0]
