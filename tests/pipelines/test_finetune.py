"""Stage 1: fine-tuning SAM (tiny, random weights) under the weak-label constraints."""

import json

import pytest
import torch

from benchmarks import stage1_real
from wsseg_fast.cli import main
from wsseg_fast.data import CocoWeakDataset, make_demo
from wsseg_fast.errors import ConfigError
from wsseg_fast.logic import class_truths
from wsseg_fast.logic.priors import Contains, Pairwise, PriorsError, load_priors
from wsseg_fast.pipelines.finetune import FinetuneConfig, finetune
from wsseg_fast.pipelines.training import RunDirError
from wsseg_fast.sam.engine import SamEngine
from wsseg_fast.sam.model import build_sam, load_state_dict_file

NAMES = ["background", "disc", "cup", "crescent", "rod", "ring", "ell"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("ftdemo")
    make_demo(out, images=2, seed=3)
    (out / "priors.yaml").write_text("contains: [[cup, disc]]\nexcludes: [[rod, ring]]\n")
    return out


def config(demo, out, **kw) -> FinetuneConfig:
    base = dict(
        coco=str(demo / "annotations.json"),
        out=str(out),
        model="tiny",
        priors=str(demo / "priors.yaml"),
        epochs=1,
        lr=1e-3,
        loss_scale=0.25,
        threads=1,
    )
    return FinetuneConfig(**{**base, **kw})


def test_class_truths_is_the_fuzzy_or_of_instances():
    logits = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    classes = torch.tensor([1, 1, 2])
    t = class_truths(logits, classes, num_classes=4)
    p = logits.sigmoid()
    torch.testing.assert_close(t[1], 1 - (1 - p[0]) * (1 - p[1]))
    torch.testing.assert_close(t[2], p[2])
    torch.testing.assert_close(t[3], torch.zeros_like(t[3]))  # no instance of class 3
    torch.testing.assert_close(t[0], (1 - p).prod(0))  # background: no instance covers the pixel
    t.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_priors_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("contains: [[cup, disc]]\npairwise: true\n")
    assert load_priors(path, NAMES) == [Contains("cup", "disc"), Pairwise({})]
    assert load_priors(None, NAMES) == []
    for text, match in [
        ("containz: []", "unknown prior kinds"),
        ("contains: [[cup, lid]]", "unknown class 'lid'"),
        ("contains: [cup, disc]", "pairs"),
        ("contains: [cup", "not valid YAML"),
        ("- 1", "mapping"),
        ("box_size: [0.9, 0.2]", "box_size"),
    ]:
        path.write_text(text)
        with pytest.raises(PriorsError, match=match):
            load_priors(path, NAMES)
    with pytest.raises(PriorsError, match="cannot read"):
        load_priors(tmp_path / "missing.yaml", NAMES)


def test_contradictory_priors_are_one_line_before_training(demo, tmp_path, capsys):
    (tmp_path / "p.yaml").write_text("contains: [[cup, disc]]\nexcludes: [[disc, cup]]\n")
    args = ["finetune", "--coco", str(demo / "annotations.json"), "--model", "tiny", "--out", str(tmp_path / "ft")]
    assert main([*args, "--priors", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"wsseg-fast finetune: error: --priors: {tmp_path / 'p.yaml'}: contains[cup->disc] and excludes[disc,cup] "
        "contradict each other: a cup pixel would be both disc and cup, so cup could only be empty\n"
    )
    assert not (tmp_path / "ft" / "last.pt").exists()


def test_bad_settings(demo, tmp_path):
    with pytest.raises(ConfigError, match="train must be one of"):
        finetune(config(demo, tmp_path, train="encoder"), progress=False)
    with pytest.raises(ConfigError, match="epochs"):
        finetune(config(demo, tmp_path, epochs=0), progress=False)


def test_decoder_training_logs_constraints_resumes_exactly_and_is_deterministic(demo, tmp_path):
    whole = finetune(config(demo, tmp_path / "whole", epochs=2), progress=False)
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    sat = log[-1]["satisfaction"]
    assert {
        "boxes",
        "points",
        "scribbles",
        "tags_present",
        "tags_absent",
        "pairwise",
        "contains[cup->disc]",
        "excludes[rod,ring]",
    } <= set(sat)
    assert all(0.0 <= v <= 1.0 for v in sat.values())
    weights = load_state_dict_file(whole)
    assert weights and all(k.startswith("mask_decoder.") for k in weights)
    # The decoder moved away from the random initialisation.
    engine = SamEngine("tiny")
    assert any(not torch.equal(v, engine.model.module.state_dict()[k]) for k, v in weights.items())

    # One epoch, then a second run to two epochs, resumes to the same weights bit for bit.
    finetune(config(demo, tmp_path / "split", epochs=1), progress=False)
    split = finetune(config(demo, tmp_path / "split", epochs=2), progress=False)
    again = load_state_dict_file(split)
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    # Other settings in the same directory are refused rather than mixed.
    with pytest.raises(RunDirError, match="other settings"):
        finetune(config(demo, tmp_path / "split", epochs=3, lr=5e-4), progress=False)


def test_distillation_keeps_the_masks_near_the_starting_sam(demo, tmp_path):
    dataset = CocoWeakDataset(str(demo / "annotations.json"))
    base = SamEngine("tiny")

    def drift(weights) -> float:
        tuned = SamEngine("tiny", finetuned=str(weights))
        total = 0.0
        for record in dataset.images:
            image = dataset.load_image(record)
            [embedding] = base.embed([image])
            boxes = dataset.boxes(record)[0]
            total += float(
                (
                    torch.sigmoid(tuned.predict(embedding, boxes=boxes).logits)
                    - torch.sigmoid(base.predict(embedding, boxes=boxes).logits)
                )
                .abs()
                .mean()
            )
        return total / len(dataset.images)

    free = drift(finetune(config(demo, tmp_path / "free", epochs=3), progress=False))
    kept = drift(finetune(config(demo, tmp_path / "kept", epochs=3, distill=20.0), progress=False))
    assert kept < 0.5 * free, (kept, free)
    with pytest.raises(ConfigError, match="distill"):
        finetune(config(demo, tmp_path / "bad", distill=-1.0), progress=False)


def test_whole_model_training_feeds_sbr_pseudo_labels(demo, tmp_path, capsys):
    out = tmp_path / "ft"
    assert (
        main(
            [
                "finetune",
                "--coco",
                str(demo / "annotations.json"),
                "--model",
                "tiny",
                "--train",
                "all",
                "--priors",
                str(demo / "priors.yaml"),
                "--epochs",
                "1",
                "--loss-scale",
                "0.25",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    weights = load_state_dict_file(out / "finetuned.pth")
    assert any(k.startswith("image_encoder.") for k in weights)
    # A fine-tuned encoder makes the weights a whole model: new embeddings, not the base ones.
    engine = SamEngine("tiny", finetuned=str(out / "finetuned.pth"))
    assert engine.checkpoint == str(out / "finetuned.pth")
    assert (
        main(
            [
                "pseudo-label",
                "--coco",
                str(demo / "annotations.json"),
                "--method",
                "sbr",
                "--model",
                "tiny",
                "--finetuned",
                str(out / "finetuned.pth"),
                "--cache",
                str(tmp_path / "cache"),
                "--out",
                str(tmp_path / "pl"),
                "--quiet",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "pl" / "labels").glob("*.png"))) == 2
    assert "mIoU" in capsys.readouterr().out


def test_stage1_benchmark_runs_on_a_tiny_dataset(demo, tmp_path):
    """benchmarks/stage1_real.py on the 2-image demo with a saved checkpoint (CamVid is not needed)."""
    torch.save(build_sam("tiny").state_dict(), tmp_path / "tiny.pth")
    rows = ["sam-box", "stage 1 -> sam-box", "stage 1 without boxes -> sbr", "stage 1 only boxes -> sam-box"]
    assert (
        stage1_real.main(
            [
                str(demo),
                "--checkpoint",
                str(tmp_path / "tiny.pth"),
                "--epochs",
                "1",
                "--rows",
                *rows,
                "--out",
                str(tmp_path / "res"),
                "--work",
                str(tmp_path / "work"),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "res/stage1_real.json").read_text())
    assert [r["name"] for r in result["rows"]] == rows
    assert set(result["stage1"]) == {"stage 1", "stage 1 without boxes", "stage 1 only boxes"}  # one per variant
    assert stage1_real._variant("stage 1 without boxes -> sbr") == ("stage 1 without boxes", ("boxes",))
    only = stage1_real._variant("stage 1 only pairwise prior -> sam-box")
    assert (
        only[0] == "stage 1 only pairwise prior"
        and "pairwise" not in only[1]
        and {"boxes", "points", "tags_present"} <= set(only[1])
    )
    assert all(0 <= r["miou"] <= 1 for r in result["rows"]) and result["stage1"]["stage 1"]["seconds_per_step"] > 0
    assert "| stage 1 -> sam-box |" in (tmp_path / "res/stage1_real.md").read_text()
    assert stage1_real.main([str(demo), "--checkpoint", str(tmp_path / "missing.pth")]) == 2
    for bad in ("sam-box:nope=1", "nomethod:zoom=true", "sam-box:zoom=maybe"):
        assert stage1_real.main([str(demo), "--method-option", bad]) == 2
