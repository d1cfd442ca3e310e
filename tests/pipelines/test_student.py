"""Student training, prediction and the CLI on the synthetic shapes dataset.

Every run is tiny (32 px, widths 8-16-32) so the whole file stays fast."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.helpers import torchrun_two_cpu_processes
from tests.pipelines.synthetic_shapes import make_shapes_dataset
from wsseg_fast.cli import main
from wsseg_fast.pipelines.evaluate import evaluate
from wsseg_fast.pipelines.label_maps import read_image, read_label, write_label
from wsseg_fast.pipelines.student import (
    StudentConfig,
    StudentDataset,
    balanced_class_weights,
    head_losses,
    load_student,
    predict,
    predict_logits,
    train_student,
)
from wsseg_fast.pipelines.training import RunDirError

TINY = dict(size=32, widths=(8, 16, 32), batch_size=4, lr=3e-3)


@pytest.fixture
def shapes(tmp_path) -> Path:
    return make_shapes_dataset(tmp_path / "shapes")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions gain nothing from threads; on a busy machine extra threads only wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(root: Path, out: Path, **kw) -> StudentConfig:
    sources = kw.pop("sources", {"pseudo": str(root / "gt")})
    return StudentConfig(images=str(root / "images"), sources=sources, out=str(out), **{**TINY, **kw})


def _multihead(root: Path, out: Path, **kw) -> StudentConfig:
    sources = {"pseudo": str(root / "box"), "gt": str(root / "gt")}
    return _config(root, out, arch="multihead", sources=sources, gt_fraction=0.25, **kw)


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_student_learns_the_shapes(shapes, tmp_path):
    config = _config(
        shapes, tmp_path / "ck", epochs=15, val_images=str(shapes / "images"), val_labels=str(shapes / "gt")
    )
    checkpoint = train_student(config)
    assert checkpoint == tmp_path / "ck" / "last.pt"
    written = predict(checkpoint, shapes / "images", tmp_path / "pred", progress=False)
    assert len(written) == 12 and read_label(written[0]).shape == (32, 32)
    result = evaluate(tmp_path / "pred", shapes / "gt")
    assert result["miou"] > 0.6, result  # measured 0.79 at 16 images; chance is ~0.2
    history = torch.load(checkpoint, weights_only=True)["history"]
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    # The per-epoch validation scores the same predictions.
    assert history[-1]["val"]["miou"] == pytest.approx(result["miou"])
    assert history[-1]["val"]["miou"] > history[0]["val"]["miou"]


def test_resume_after_an_interruption_equals_an_uninterrupted_run(shapes, tmp_path):
    full = train_student(_multihead(shapes, tmp_path / "full", epochs=2))

    def crash(epoch, model, record):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_student(_multihead(shapes, tmp_path / "split", epochs=2), on_epoch_end=crash)
    assert torch.load(tmp_path / "split" / "last.pt", weights_only=True)["epoch"] == 1
    split = train_student(_multihead(shapes, tmp_path / "split", epochs=2))  # re-running resumes
    a, b = torch.load(full, weights_only=True), torch.load(split, weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    _assert_same_state(a["model"], b["model"])
    assert a["history"][1]["loss"] == b["history"][1]["loss"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        _assert_same_state(sa, sb)
    # Resuming a finished run trains nothing more; a changed set-up is refused.
    assert train_student(_multihead(shapes, tmp_path / "split", epochs=2)) == split
    with pytest.raises(RunDirError, match="other settings.*widths"):
        train_student(_multihead(shapes, tmp_path / "split", epochs=3, widths=(8, 16)))


def test_multihead_gt_subset_and_final_phase(shapes, tmp_path):
    snapshots = []
    config = _multihead(shapes, tmp_path / "ck", epochs=5, final_fraction=0.2)
    train_student(
        config, on_epoch_end=lambda e, m, r: snapshots.append(({k: v.clone() for k, v in m.state_dict().items()}, r))
    )
    meta = load_student(tmp_path / "ck")[1]
    assert meta["heads"] == ["pseudo", "gt"] and meta["primary"] == "gt"
    assert len(meta["gt_subset"]) == 3  # round(0.25 * 12)
    assert [r["final_phase"] for _, r in snapshots] == [False] * 4 + [True]

    def changed(i, prefix):
        return any(
            not torch.equal(snapshots[i][0][k], snapshots[i - 1][0][k]) for k in snapshots[i][0] if k.startswith(prefix)
        )

    assert changed(3, "heads.pseudo.") and changed(3, "heads.gt.")
    assert not changed(4, "heads.pseudo.")  # the last 20%: only the GT head (and the trunk) train
    assert changed(4, "heads.gt.") and changed(4, "trunk.")
    # The subset is a function of the seed, the same on every run.
    other = _multihead(shapes, tmp_path / "other", epochs=1, seed=1)
    train_student(other)
    again = _multihead(shapes, tmp_path / "again", epochs=1, seed=1)
    train_student(again)
    subsets = [load_student(tmp_path / d)[1]["gt_subset"] for d in ("other", "again")]
    assert subsets[0] == subsets[1] and subsets[0] != meta["gt_subset"]


def test_each_head_learns_only_from_images_that_have_its_source():
    torch.manual_seed(0)
    logits = {h: torch.randn(2, 3, 4, 4, requires_grad=True) for h in ("gt", "box")}
    targets = {"gt": torch.randint(0, 3, (2, 4, 4)), "box": torch.full((2, 4, 4), 255)}
    targets["gt"][1] = 255  # image 1 has no gt label; no image has a box label
    losses = head_losses(logits, targets, ["gt", "box"])
    torch.testing.assert_close(losses["gt"], F.cross_entropy(logits["gt"][:1], targets["gt"][:1]))
    assert losses["box"].item() == 0
    (losses["gt"] + losses["box"]).backward()
    assert logits["gt"].grad[1].abs().sum() == 0 and logits["gt"].grad[0].abs().sum() > 0
    assert logits["box"].grad.abs().sum() == 0


def test_class_weights_weigh_each_class_in_the_loss():
    torch.manual_seed(0)
    logits = {"pseudo": torch.randn(2, 3, 4, 4)}
    targets = {"pseudo": torch.randint(0, 3, (2, 4, 4))}
    weights = {"pseudo": torch.tensor([0.5, 1.0, 2.0])}
    expected = F.cross_entropy(logits["pseudo"], targets["pseudo"], weight=weights["pseudo"], reduction="sum") / 32
    torch.testing.assert_close(head_losses(logits, targets, ["pseudo"], weights)["pseudo"], expected)


def test_balanced_class_weights_favour_rare_classes(tmp_path):
    labels = np.zeros((8, 8), np.uint8)
    labels[:2] = 1  # 16 pixels of class 1, 48 of background, none of class 2
    write_label(tmp_path / "a.png", torch.from_numpy(labels))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a_image.png")
    dataset = StudentDataset([tmp_path / "a_image.png"], [[tmp_path / "a.png", None]], ["pseudo", "gt"], 3, 8, False)
    weights = balanced_class_weights(dataset, ["pseudo", "gt"], 0.5)
    w = weights["pseudo"]
    torch.testing.assert_close(w[1] / w[0], torch.tensor(3.0).sqrt())  # freq 1/4 vs 3/4, exponent 0.5
    torch.testing.assert_close((torch.tensor([48.0, 16.0, 0.0]) * w).sum() / 64, torch.tensor(1.0))  # mean pixel: 1
    assert torch.isfinite(weights["gt"]).all()  # a head without any label still gets finite weights
    assert torch.allclose(balanced_class_weights(dataset, ["pseudo", "gt"], 0.0)["pseudo"], torch.ones(3))


def test_class_balanced_training_runs_and_resumes_exactly(shapes, tmp_path):
    with pytest.raises(ValueError, match="class_balance"):
        train_student(_config(shapes, tmp_path / "bad", epochs=1, class_balance=-1.0))
    whole = train_student(_config(shapes, tmp_path / "whole", epochs=2, class_balance=0.5))
    train_student(_config(shapes, tmp_path / "split", epochs=1, class_balance=0.5))
    split = train_student(_config(shapes, tmp_path / "split", epochs=2, class_balance=0.5))
    _assert_same_state(torch.load(whole, weights_only=True)["model"], torch.load(split, weights_only=True)["model"])


def test_workers_and_mixed_precision(shapes, tmp_path):
    a = train_student(_config(shapes, tmp_path / "w0", epochs=1))
    b = train_student(_config(shapes, tmp_path / "w2", epochs=1, workers=2))
    _assert_same_state(torch.load(a, weights_only=True)["model"], torch.load(b, weights_only=True)["model"])
    for amp in ("bf16", "fp16"):  # fp16 also runs the gradient scaler
        c = train_student(_config(shapes, tmp_path / amp, epochs=1, amp=amp))
        assert math.isfinite(torch.load(c, weights_only=True)["history"][0]["loss"])
    with pytest.raises(ValueError, match="amp"):
        train_student(_config(shapes, tmp_path / "x", amp="fp8"))


def test_predict_returns_each_image_at_its_own_size(shapes, tmp_path):
    checkpoint = train_student(_multihead(shapes, tmp_path / "ck", epochs=1))
    images = tmp_path / "odd"
    images.mkdir()
    for name, (h, w) in {"a": (40, 48), "b": (19, 33)}.items():
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            images / f"{name}.jpg"
        )
    written = predict(checkpoint, images, tmp_path / "pred", batch_size=1, progress=False)
    assert [p.name for p in written] == ["a.png", "b.png"]
    assert read_label(written[0]).shape == (40, 48) and read_label(written[1]).shape == (19, 33)
    # The multi-head student predicts with its GT head.
    model, meta = load_student(checkpoint)
    image = read_image(images / "a.jpg")
    logits = predict_logits(model, meta, [image])[0]
    with torch.no_grad():
        x = torch.nn.functional.interpolate(
            (
                (image.permute(2, 0, 1)[None].float() / 255 - torch.tensor(meta["mean"]).view(1, 3, 1, 1))
                / torch.tensor(meta["std"]).view(1, 3, 1, 1)
            ),
            size=(32, 32),
            mode="bilinear",
            antialias=True,
        )
        gt_head = F.interpolate(model(x)["gt"], size=(40, 48), mode="bilinear")[0]
    torch.testing.assert_close(logits, gt_head, atol=1e-4, rtol=1e-4)
    assert torch.equal(read_label(written[0]), logits.argmax(0))


def test_bad_configurations(shapes, tmp_path):
    two = {"gt": str(shapes / "gt"), "box": str(shapes / "box")}
    with pytest.raises(ValueError, match="exactly one source"):
        train_student(_config(shapes, tmp_path / "a", sources=two))
    with pytest.raises(ValueError, match="gt_fraction"):
        train_student(_config(shapes, tmp_path / "a", gt_fraction=0.1))
    with pytest.raises(ValueError, match="go together"):
        train_student(_config(shapes, tmp_path / "a", val_images=str(shapes / "images")))
    with pytest.raises(ValueError, match="multiple of 4"):
        train_student(_config(shapes, tmp_path / "a", size=30))
    with pytest.raises(ValueError, match="does not exist"):
        train_student(_config(shapes, tmp_path / "a", sources={"pseudo": str(tmp_path / "none")}))
    with pytest.raises(ValueError, match="outside"):
        train_student(_config(shapes, tmp_path / "a", num_classes=2, epochs=1))
    write_label(shapes / "gt" / "img000.png", torch.zeros(5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="img000.png' is \\(5, 5\\)"):
        train_student(_config(shapes, tmp_path / "b", epochs=1, batch_size=12))
    with pytest.raises(ValueError, match="not a student checkpoint"):
        torch.save({"x": 1}, tmp_path / "x.pt")
        load_student(tmp_path / "x.pt")


def test_cli_train_predict_evaluate(shapes, tmp_path, capsys):
    ck, pred, report = tmp_path / "ck", tmp_path / "pred", tmp_path / "report.json"
    assert (
        main(
            [
                "train-student",
                "--images",
                str(shapes / "images"),
                "--pseudo",
                str(shapes / "box"),
                "--source",
                f"gt={shapes / 'gt'}",
                "--arch",
                "multihead",
                "--gt-fraction",
                "0.5",
                "--loss-weight",
                "pseudo=0.5",
                "--out",
                str(ck),
                "--size",
                "32",
                "--widths",
                "8,16",
                "--epochs",
                "2",
                "--workers",
                "0",
                "--val-images",
                str(shapes / "images"),
                "--val-gt",
                str(shapes / "gt"),
            ]
        )
        == 0
    )
    assert "val mIoU" in capsys.readouterr().out
    # the run's saved settings repeat it: the same weights, bit for bit
    assert main(["train-student", "--config", str(ck / "config.yaml"), "--out", str(tmp_path / "again")]) == 0
    first, again = (
        torch.load(ck / "last.pt", weights_only=True),
        torch.load(tmp_path / "again" / "last.pt", weights_only=True),
    )
    assert all(torch.equal(first["model"][k], again["model"][k]) for k in first["model"])
    assert (
        main(["predict", "--checkpoint", str(ck / "last.pt"), "--images", str(shapes / "images"), "--out", str(pred)])
        == 0
    )
    assert main(["evaluate", "--pred", str(pred), "--gt", str(shapes / "gt"), "--out", str(report)]) == 0
    assert 0 <= json.loads(report.read_text())["miou"] <= 1
    assert main(["train-student", "--images", str(shapes / "images"), "--source", "gt", "--out", str(ck)]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err


_DDP_SCRIPT = """
import json, os, sys, torch
from wsseg_fast.pipelines.student import StudentConfig, train_student
config = StudentConfig(**json.loads(sys.argv[1]))
seen = []
checkpoint = train_student(config, on_epoch_end=lambda e, m, r: seen.append((m, r)))
model, record = seen[-1]
torch.save({"model": model.state_dict(), "record": record, "world": int(os.environ["WORLD_SIZE"])},
           os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.pt"))
"""


@pytest.mark.slow  # three processes that each import torch: ~25 s here, mostly imports
def test_torchrun_ddp_two_cpu_processes(shapes, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(_DDP_SCRIPT)
    ranks = tmp_path / "ranks"
    ranks.mkdir()
    config = dict(
        images=str(shapes / "images"),
        sources={"pseudo": str(shapes / "gt")},
        out=str(tmp_path / "ck"),
        arch="unet",
        epochs=2,
        size=32,
        widths=[8, 16],
        batch_size=2,
    )
    proc = torchrun_two_cpu_processes(script, json.dumps(config), str(ranks))
    assert proc.returncode == 0, proc.stderr[-4000:]
    states = [torch.load(ranks / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [s["world"] for s in states] == [2, 2]
    _assert_same_state(states[0]["model"], states[1]["model"])  # DDP kept the replicas equal
    assert states[0]["record"]["loss"] == states[1]["record"]["loss"]  # losses all-reduced
    assert sorted(os.listdir(tmp_path / "ck")) == ["config.yaml", "last.pt", "log.jsonl"]  # only rank 0 wrote
    model, meta = load_student(tmp_path / "ck" / "last.pt")
    assert meta["epoch"] == 2
    _assert_same_state(model.state_dict(), states[0]["model"])
    assert proc.stdout.count("epoch 2/2") == 1  # rank 0 reports


def test_multihead_without_a_gt_source_predicts_with_its_first_head(shapes, tmp_path):
    sources = {"pseudo": str(shapes / "gt"), "box": str(shapes / "box")}
    checkpoint = train_student(_config(shapes, tmp_path / "ck", arch="multihead", sources=sources, epochs=1))
    model, meta = load_student(checkpoint)
    assert meta["primary"] == model.primary == "pseudo"
    assert len(predict(checkpoint, shapes / "images", tmp_path / "pred", progress=False)) == 12
