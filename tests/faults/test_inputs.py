"""Inputs that change under a job: a corrupted cache entry, an image replaced between runs."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.pipelines.test_pseudo_label import snapshot
from wsseg_fast.cache import CorruptEntryWarning
from wsseg_fast.cli import main
from wsseg_fast.data import CocoWeakDataset, make_demo
from wsseg_fast.pipelines.methods import parse_options
from wsseg_fast.pipelines.pseudo_label import JobConfig, run_pseudo_label

# pycocotools 2.0 calls np.array(copy=False) on NumPy 2: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def demo(tmp_path):
    make_demo(tmp_path / "demo", images=4, seed=0)
    return tmp_path / "demo"


def _job(demo, out, cache=None, **kw) -> JobConfig:
    return JobConfig(
        coco=str(demo / "annotations.json"),
        out=str(out),
        method="sam-box",
        model="tiny",
        cache=str(cache) if cache else None,
        options=parse_options("sam-box", []),
        threads=1,
        **kw,
    )


def test_a_corrupted_cache_entry_is_detected_recomputed_and_changes_nothing(demo, tmp_path):
    cache = tmp_path / "cache"
    first = run_pseudo_label(_job(demo, tmp_path / "a", cache), progress=False)
    assert first["run"]["encoded"] == 4
    entries = sorted(os.path.join(d, f) for d, _, fs in os.walk(cache / "embeddings") for f in fs)
    assert len(entries) == 4
    data = bytearray(open(entries[1], "rb").read())
    data[-100] ^= 0xFF  # inside the tensor bytes
    open(entries[1], "wb").write(bytes(data))
    with pytest.warns(CorruptEntryWarning, match="dropped corrupt entry"):
        again = run_pseudo_label(_job(demo, tmp_path / "b", cache), progress=False)
    assert again["run"]["encoded"] == 1 and again["run"]["cache_hits"] == 3
    assert snapshot(tmp_path / "b") == snapshot(tmp_path / "a")
    third = run_pseudo_label(_job(demo, tmp_path / "c", cache), progress=False)  # the entry was rewritten
    assert third["run"]["cache_hits"] == 4 and snapshot(tmp_path / "c") == snapshot(tmp_path / "a")


def _replace(image_path) -> None:
    pixels = np.array(Image.open(image_path).convert("RGB"))
    Image.fromarray(255 - pixels).save(image_path)


def test_an_image_replaced_before_a_resume_is_relabelled_and_reported(demo, tmp_path, capsys):
    out = tmp_path / "out"
    run_pseudo_label(_job(demo, out), progress=False)
    for stem in ("demo_0002", "demo_0003"):  # as a kill after two images leaves it
        os.unlink(out / "parts" / f"{stem}.json")
    os.unlink(out / "manifest.json")
    _replace(demo / "images" / "demo_0001.png")  # labelled by the killed run, replaced before the resume
    args = ["pseudo-label", "--coco", str(demo / "annotations.json"), "--out", str(out)]
    assert main(args + ["--method", "sam-box", "--model", "tiny", "--no-cache", "--quiet", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "demo_0001.png" in err and "changed since it was labelled" in err, err
    clean = tmp_path / "clean"
    shutil.rmtree(clean, ignore_errors=True)
    run_pseudo_label(_job(demo, clean), progress=False)
    assert snapshot(out) == snapshot(clean)  # as if the new image had been there from the start


def test_an_image_replaced_while_it_is_read_is_relabelled_by_the_next_run(demo, tmp_path, monkeypatch):
    original = CocoWeakDataset.load_image

    def load_image(self, record):  # the file is replaced between the job's digest and its pixels
        if record.file_name == "demo_0001.png" and not replaced:
            _replace(record.path)
            replaced.append(record.file_name)
        return original(self, record)

    replaced = []
    monkeypatch.setattr(CocoWeakDataset, "load_image", load_image)
    out = tmp_path / "out"
    run_pseudo_label(_job(demo, out), progress=False)
    again = run_pseudo_label(_job(demo, out), progress=False)
    assert replaced and again["run"]["images_changed"] == ["demo_0001.png"]
    assert again["run"]["images_skipped_as_done"] == 3
