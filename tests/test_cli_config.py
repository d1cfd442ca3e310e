"""``--config FILE.yaml`` of the training commands: flags override the file, every run saves
its resolved settings, and a run from that file reproduces the checkpoint."""

from __future__ import annotations

import pytest
import torch
import yaml

from wsseg_fast.cli import main
from wsseg_fast.data import make_demo
from wsseg_fast.pipelines.methods import METHODS


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("cfgdemo")
    make_demo(out, images=2, seed=5)
    return out


def _finetune(demo, out, *extra):
    return main(
        [
            "finetune",
            "--coco",
            str(demo / "annotations.json"),
            "--model",
            "tiny",
            "--epochs",
            "1",
            "--loss-scale",
            "0.25",
            "--threads",
            "1",
            "--quiet",
            "--cache",
            str(demo / "cache"),
            "--out",
            str(out),
            *extra,
        ]
    )


def test_finetune_from_its_saved_config_gives_the_same_checkpoint(demo, tmp_path):
    assert _finetune(demo, tmp_path / "a", "--seed", "7") == 0
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert saved["seed"] == 7 and saved["epochs"] == 1 and saved["model"] == "tiny"
    assert main(["finetune", "--config", str(tmp_path / "a" / "config.yaml"), "--out", str(tmp_path / "b")]) == 0
    first = torch.load(tmp_path / "a" / "finetuned.pth")
    second = torch.load(tmp_path / "b" / "finetuned.pth")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    resolved = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert resolved == {**saved, "out": str(tmp_path / "b")}


def test_flags_override_the_file(demo, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "coco": str(demo / "annotations.json"),
                "model": "tiny",
                "epochs": 3,
                "lr": 0.01,
                "loss_scale": 0.25,
                "threads": 1,
                "quiet": True,
            }
        )
    )
    assert main(["finetune", "--config", str(config), "--epochs", "1", "--out", str(tmp_path / "o")]) == 0
    resolved = yaml.safe_load((tmp_path / "o" / "config.yaml").read_text())
    assert resolved["epochs"] == 1 and resolved["lr"] == 0.01  # the flag won; the file filled the rest


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochz: 2\n", "unknown settings epochz"),
        ("- 1\n", "expected a mapping"),
        ("model: [tiny\n", "not valid YAML"),
        ("model: huge\n", "model must be one of"),
    ],
)
def test_bad_config_files_get_one_clear_line(tmp_path, capsys, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert main(["finetune", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_missing_config_file(tmp_path, capsys):
    assert main(["train-student", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "--config" in capsys.readouterr().err


def test_list_methods_needs_nothing_else(capsys):
    assert main(["pseudo-label", "--list-methods"]) == 0
    assert "sam-box" in capsys.readouterr().out
    assert main(["pseudo-label", "--method", "box"]) == 2
    assert "--coco, --out" in capsys.readouterr().err


def test_list_methods_prints_whole_descriptions(capsys):
    """Each method's line holds the whole first paragraph of its docstring, a full sentence: the
    first line alone cut sam-box's mid-sentence."""
    assert main(["pseudo-label", "--list-methods"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(lines) == set(METHODS)
    assert lines["sam-box"].startswith(
        "sam-box          SAM prompted with every box of the image in one decoder call (``zoom``: small boxes "
        "again, each on its own zoomed window -- for a SAM pre-trained with ``--zoom``). [multimask="
    )
    for name, method in METHODS.items():
        assert method.help.endswith(".") and f" {method.help} [" in lines[name], name
