import json

import pytest
import torch

from wsseg_fast.cli import main
from wsseg_fast.metrics import SegmentationMeter
from wsseg_fast.pipelines.evaluate import evaluate
from wsseg_fast.pipelines.label_maps import write_label


def _write(directory, maps):
    directory.mkdir(parents=True, exist_ok=True)
    for stem, labels in maps.items():
        write_label(directory / f"{stem}.png", torch.tensor(labels))


def test_evaluate_matches_one_confusion_matrix(tmp_path):
    gt = {"a": [[0, 0, 1], [1, 255, 2]], "b": [[2, 2], [0, 1]]}
    pred = {"a": [[0, 1, 1], [1, 2, 2]], "b": [[2, 0], [0, 0]]}
    _write(tmp_path / "gt", gt)
    _write(tmp_path / "pred", pred)
    result = evaluate(tmp_path / "pred", tmp_path / "gt")
    meter = SegmentationMeter(3)
    for k in gt:
        meter.update(torch.tensor(pred[k]), torch.tensor(gt[k]))
    expected = meter.compute()
    assert result["num_images"] == 2 and result["num_classes"] == 3
    for key in ("miou", "macc", "mdice", "pixel_accuracy"):
        assert result[key] == pytest.approx(expected[key])
    assert result["pixel_accuracy"] == pytest.approx(6 / 9)  # the ignored pixel is not counted
    perfect = evaluate(tmp_path / "gt", tmp_path / "gt")
    assert perfect["miou"] == 1.0 and perfect["mdice"] == 1.0


def test_evaluate_errors(tmp_path):
    _write(tmp_path / "gt", {"a": [[0, 1]], "b": [[1, 1]]})
    _write(tmp_path / "pred", {"a": [[0, 1]]})
    with pytest.raises(ValueError, match="1 of 2 ground-truth maps have no prediction"):
        evaluate(tmp_path / "pred", tmp_path / "gt")
    _write(tmp_path / "pred", {"b": [[1, 1, 1]]})
    with pytest.raises(ValueError, match="prediction b.png is"):
        evaluate(tmp_path / "pred", tmp_path / "gt")
    _write(tmp_path / "pred", {"b": [[1, 1]]})
    with pytest.raises(ValueError, match="class_names"):
        evaluate(tmp_path / "pred", tmp_path / "gt", class_names=["bg", "fg", "x"], num_classes=2)
    with pytest.raises(ValueError, match="outside"):
        evaluate(tmp_path / "pred", tmp_path / "gt", num_classes=1)


def test_evaluate_cli_writes_strict_json_and_markdown(tmp_path, capsys):
    _write(tmp_path / "gt", {"a": [[0, 1], [1, 1]]})
    _write(tmp_path / "pred", {"a": [[0, 1], [1, 0]]})
    out = tmp_path / "report" / "report.json"
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(tmp_path / "pred"),
                "--gt",
                str(tmp_path / "gt"),
                "--num-classes",
                "3",
                "--class-names",
                "bg",
                "fg",
                "other",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert report["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # class 'other' is absent: left out
    assert report["per_class"]["other"]["iou"] is None
    md = out.with_suffix(".md").read_text()
    assert "| fg | 66.67 |" in md and "mIoU" in capsys.readouterr().out
    assert main(["evaluate", "--pred", str(tmp_path / "nowhere"), "--gt", str(tmp_path / "gt"), "--out", str(out)]) == 2
