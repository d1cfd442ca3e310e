"""A disk that fills up mid-command: one line and a clean exit, no partial file, and the next run
ends with the outputs of an undisturbed one."""

import os

import pytest
import torch

from tests.faults.injectors import leftovers
from tests.pipelines.synthetic_shapes import make_shapes_dataset
from tests.pipelines.test_pseudo_label import snapshot
from tests.pipelines.test_student import TINY
from wsseg_fast.cli import main
from wsseg_fast.data import make_demo

# pycocotools 2.0 calls np.array(copy=False) on NumPy 2: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    make_demo(out, images=4, seed=0)
    return out


def _one_error_line(err: str, command: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wsseg-fast {command}: error: "), err
    assert "no space left on device" in lines[0].lower() and "Traceback" not in err


def _whole_or_absent(out, clean) -> None:
    """Every output the failed run left is the undisturbed run's file, byte for byte (none truncated)."""
    for name, data in snapshot(out).items():
        if name not in ("manifest.json", "pseudo_labels.json", "report.json", "report.md"):  # rewritten each run
            assert data == snapshot(clean)[name], name


# Writes of a box run on 4 images: 0 settings.json, then per image its label PNG and part JSON (1-8),
# 9 pseudo_labels.json, 10 manifest.json, 11 report.json, 12 report.md.
@pytest.mark.parametrize("after", [0, 3, 8, 12])
def test_pseudo_label_on_a_full_disk(demo, tmp_path, capsys, disk_full, after):
    args = ["pseudo-label", "--coco", str(demo / "annotations.json"), "--method", "box", "--quiet", "--threads", "1"]
    assert main(args + ["--out", str(tmp_path / "clean")]) == 0
    capsys.readouterr()
    fault = disk_full(after)
    assert main(args + ["--out", str(tmp_path / "full")]) == 2
    _one_error_line(capsys.readouterr().err, "pseudo-label")
    assert fault.failed and not leftovers(tmp_path)
    _whole_or_absent(tmp_path / "full", tmp_path / "clean")
    fault.free()
    assert main(args + ["--out", str(tmp_path / "full")]) == 0
    assert snapshot(tmp_path / "full") == snapshot(tmp_path / "clean")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), n=8)


def _student_args(shapes, out) -> list:
    return [
        "train-student",
        "--images",
        str(shapes / "images"),
        "--pseudo",
        str(shapes / "box"),
        "--out",
        str(out),
        "--size",
        str(TINY["size"]),
        "--widths",
        ",".join(map(str, TINY["widths"])),
        "--batch-size",
        str(TINY["batch_size"]),
        "--epochs",
        "2",
        "--workers",
        "0",
        "--quiet",
    ]


def _same_weights(a, b) -> None:
    a, b = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert a["epoch"] == b["epoch"] and a["history"] == b["history"] or _no_seconds(a, b)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def _no_seconds(a, b) -> bool:
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a["history"]]
    return strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b["history"]]


# Writes of a 2-epoch run: 0 config.yaml, 1 last.pt and 2 log.jsonl of epoch 1, 3 and 4 of epoch 2.
@pytest.mark.parametrize("after", [0, 1, 2, 3, 4])
def test_train_student_on_a_full_disk(shapes, tmp_path, capsys, disk_full, after):
    assert main(_student_args(shapes, tmp_path / "clean")) == 0
    capsys.readouterr()
    fault = disk_full(after)
    assert main(_student_args(shapes, tmp_path / "full")) == 2
    _one_error_line(capsys.readouterr().err, "train-student")
    assert fault.failed and not leftovers(tmp_path)
    fault.free()
    assert main(_student_args(shapes, tmp_path / "full")) == 0
    _same_weights(tmp_path / "full" / "last.pt", tmp_path / "clean" / "last.pt")
    assert len((tmp_path / "full" / "log.jsonl").read_text().splitlines()) == 2
    assert sorted(os.listdir(tmp_path / "full")) == sorted(os.listdir(tmp_path / "clean"))
