"""train-cam and the cam / cam-rw / cam-sam-rw pseudo-label methods (tiny SAM with random
weights, 4 demo images, 1-2 epochs: checks mechanics, not accuracy)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.helpers import torchrun_two_cpu_processes
from wsseg_fast.cli import main
from wsseg_fast.data import make_demo, read_label_png
from wsseg_fast.errors import CheckpointError, ConfigError, DataError
from wsseg_fast.io import atomic_torch_save
from wsseg_fast.models.cam import CamClassifier
from wsseg_fast.pipelines.cam import CamConfig, load_cam, subclass_targets, train_cam
from wsseg_fast.pipelines.cam.load import LEGACY_VERSION
from wsseg_fast.pipelines.methods import MethodInput
from wsseg_fast.pipelines.methods.cam import cam_method, cam_rw
from wsseg_fast.pipelines.pseudo_label import JobConfig, run_pseudo_label
from wsseg_fast.pipelines.training import RunDirError, epoch_shard
from wsseg_fast.sam.prompting import Embedding


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    make_demo(out, images=4, seed=0)
    return out


def _config(demo, tmp_path, name, **kw):
    return CamConfig(
        coco=str(demo / "annotations.json"),
        out=str(tmp_path / name),
        cache=str(tmp_path / "cache"),
        model="tiny",
        batch_size=2,
        lr=1e-2,
        **kw,
    )


def _losses(line: str) -> dict:
    """A log record without its timing."""
    return {k: v for k, v in json.loads(line).items() if k != "seconds"}


def _train(config, progress=False):
    return train_cam(config, progress=progress)


def test_train_resume_is_bit_exact_and_deterministic(demo, tmp_path, capsys):
    full = torch.load(_train(_config(demo, tmp_path, "full", epochs=2), progress=True), weights_only=True)
    assert "4 of 4 images have tags" in capsys.readouterr().out
    _train(_config(demo, tmp_path, "half", epochs=1))
    resumed = torch.load(_train(_config(demo, tmp_path, "half", epochs=2)), weights_only=True)
    assert resumed["epoch"] == full["epoch"] == 2
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    logs = [_losses(line) for line in open(tmp_path / "full" / "log.jsonl")]
    assert [r["epoch"] for r in logs] == [1, 2] and logs[1]["bce"] < logs[0]["bce"]
    assert logs == [_losses(line) for line in open(tmp_path / "half" / "log.jsonl")]
    with pytest.raises(RunDirError, match="other settings"):  # no silent overwrite
        _train(_config(demo, tmp_path, "full", epochs=2, hidden=32))


def _edit(demo, tmp_path, fn):
    coco = json.load(open(demo / "annotations.json"))
    fn(coco)
    (tmp_path / "images").symlink_to(demo / "images")
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(coco))
    return str(path)


def test_bad_tags_give_one_clear_error(demo, tmp_path, capsys):
    def drop_tags(coco):
        for im in coco["images"]:
            im.pop("tags")

    coco = _edit(demo, tmp_path, drop_tags)
    assert main(["train-cam", "--coco", coco, "--out", str(tmp_path / "o"), "--model", "tiny", "--no-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no image has 'tags'" in err[0]

    coco = json.load(open(coco))
    coco["images"][0]["tags"] = [1]  # one tagged image: trained on it alone, and the run says so
    (tmp_path / "one.json").write_text(json.dumps(coco))
    _train(
        CamConfig(
            coco=str(tmp_path / "one.json"), out=str(tmp_path / "o1"), model="tiny", epochs=1, hidden=8, cache=None
        ),
        progress=True,
    )
    assert "1 of 4 images have tags" in capsys.readouterr().out
    coco["images"][1]["tags"] = [99]
    (tmp_path / "bad.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match="tag 99 is not a category id"):
        _train(CamConfig(coco=str(tmp_path / "bad.json"), out=str(tmp_path / "o2"), model="tiny", cache=None))


def test_checkpoint_of_another_backbone_or_model_is_refused(demo, tmp_path):
    path = _train(_config(demo, tmp_path, "c", epochs=1))
    net, meta = load_cam(path, "sam", "tiny")
    assert meta["model"] == "tiny" and isinstance(net, CamClassifier)
    with pytest.raises(CheckpointError, match="trained on backbone sam \\(tiny\\)"):
        load_cam(path, "sam", "vit_b")
    with pytest.raises(CheckpointError, match="trained on backbone sam"):
        load_cam(path, "resnet50")
    with pytest.raises(CheckpointError, match="not found"):
        load_cam(str(tmp_path / "none.pt"))


def test_methods_in_the_pseudo_label_job_keep_to_the_tags(demo, tmp_path):
    ckpt = _train(_config(demo, tmp_path, "c", epochs=1))
    coco = json.load(open(demo / "annotations.json"))
    for method in ("cam", "cam-rw", "cam-sam-rw"):
        options = {"cam": ckpt, "steps": 8} if method != "cam" else {"cam": ckpt}
        cfg = JobConfig(
            coco=str(demo / "annotations.json"),
            out=str(tmp_path / method),
            method=method,
            options=options,
            model="tiny",
            cache=str(tmp_path / "cache"),
        )
        summary = run_pseudo_label(cfg, progress=False)
        assert summary["labelled"] == 4 and summary["run"]["encoded"] == 0  # the training's cached embeddings
        for im in coco["images"]:
            label = read_label_png(tmp_path / method / "labels" / (im["file_name"][:-4] + ".png"))
            assert label.shape == (im["height"], im["width"])
            assert set(np.unique(label)) <= {0} | {t for t in im["tags"]}  # demo category ids are 1..C


def _toy(tmp_path, seed_only: bool):
    """A 32x32 image, 8x8 feature grid: channels 0/1 mark the left/right halves, channel 2 is
    class 1's CAM (the whole left half, or only its 3 leftmost cell columns, weakly so that the
    features still say "one region"). Class 2's CAM is the right half but the image is tagged
    with class 1 only."""
    net = CamClassifier(3, 2, hidden=3)
    with torch.no_grad():
        net.adapter.weight.copy_(torch.eye(3)[:, :, None, None])
        net.adapter.bias.zero_()
        net.head.weight.copy_(torch.tensor([[0.0, 0, 1], [0, 1, 0]])[:, :, None, None])
    meta = {
        "version": LEGACY_VERSION,
        "backbone": "sam",
        "model": "toy",
        "in_channels": 3,
        "hidden": 3,
        "num_classes": 2,
        "num_subclasses": 0,
    }
    path = str(tmp_path / "toy.pt")
    atomic_torch_save({"meta": meta, "model": net.state_dict()}, path)
    x = torch.zeros(3, 8, 8)
    x[0, :, :4] = 1
    x[1, :, 4:] = 1
    if seed_only:
        x[2, :, :3] = 0.05
    else:
        x[2, :, :4] = 1
    emb = Embedding(x, (32, 32), (64, 64))
    engine = SimpleNamespace(name="toy", img_size=64)
    image = np.zeros((32, 32, 3), np.uint8)
    return lambda options: MethodInput(
        image, np.zeros((1, 4), np.float32), np.array([1]), [{}], {"cam": path, **options}, engine, emb
    )


def test_cam_on_a_toy_image(tmp_path):
    ctx = _toy(tmp_path, seed_only=False)({"alpha": 16.0})
    inst = cam_method(ctx)
    assert inst.masks.shape == (1, 32, 32) and list(inst.classes) == [1]
    # the left half (give or take the bilinear upsampling at the edge); untagged class 2 is background
    assert inst.masks[0][:, :14].all() and not inst.masks[0][:, 18:].any()


def test_cam_rw_completes_a_partial_cam_within_its_region(tmp_path):
    make = _toy(tmp_path, seed_only=True)
    plain = cam_method(make({"alpha": 4.0})).masks[0]
    walked = cam_rw(make({"alpha": 4.0, "radius": 3, "beta": 8.0, "steps": 64})).masks[0]
    assert not plain[:, 13:16].any()  # the CAM alone misses the region's last cell column
    assert walked[:, :14].all() and not walked[:, 18:].any()  # the walk fills the left half, stops at the edge


def test_subclass_labels_are_deterministic_and_follow_the_clusters():
    g = torch.Generator().manual_seed(0)
    blobs = torch.cat([torch.randn(6, 4, generator=g) * 0.1, torch.randn(6, 4, generator=g) * 0.1 + 5])
    targets = torch.zeros(12, 2)
    targets[:, 0] = 1
    targets[:3, 1] = 1
    a, b = subclass_targets(blobs, targets, 2, seed=3), subclass_targets(blobs, targets, 2, seed=3)
    assert torch.equal(a, b) and a.shape == (12, 4)
    assert torch.equal(a[:, :2].sum(1), torch.ones(12))  # one sub-class per positive image and class
    assert torch.equal(a[:, 2:].sum(1), targets[:, 1])  # none for negatives
    first = a[:6, :2].argmax(1)
    assert (first == first[0]).all() and (a[6:, :2].argmax(1) != first[0]).all()  # the two blobs part


def test_ssc_and_subclass_terms_are_logged_and_resume_exactly(demo, tmp_path):
    kw = dict(ssc_weight=1.0, ssc_segments=16, subclasses=2)
    full = torch.load(_train(_config(demo, tmp_path, "full", epochs=2, **kw)), weights_only=True)
    _train(_config(demo, tmp_path, "half", epochs=1, **kw))
    resumed = torch.load(_train(_config(demo, tmp_path, "half", epochs=2, **kw)), weights_only=True)
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    log = [json.loads(line) for line in open(tmp_path / "full" / "log.jsonl")]
    assert log[0]["ssc"] > 0 and log[0]["sub_bce"] > 0
    assert abs(log[0]["total"] - log[0]["bce"] - log[0]["sub_bce"] - log[0]["ssc"]) < 1e-5
    net, meta = load_cam(str(tmp_path / "full" / "last.pt"), "sam", "tiny")
    assert net.num_subclasses == 2 * meta["num_classes"]
    with pytest.raises(RunDirError, match="other settings"):  # resume with other terms is refused
        _train(_config(demo, tmp_path, "half", epochs=3, ssc_weight=0.5, subclasses=2))


def test_reconstruction_term_resumes_exactly_and_the_run_says_its_vgg_is_random(demo, tmp_path, capsys):
    kw = dict(recon_weight=1.0, hidden=16)
    full = torch.load(_train(_config(demo, tmp_path, "full", epochs=2, **kw), progress=True), weights_only=True)
    assert "VGG16 with RANDOM weights" in capsys.readouterr().out
    _train(_config(demo, tmp_path, "half", epochs=1, **kw))
    resumed = torch.load(_train(_config(demo, tmp_path, "half", epochs=2, **kw)), weights_only=True)
    for part in ("model", "decoder"):
        for k, v in full[part].items():
            assert torch.equal(v, resumed[part][k]), (part, k)
    log = [json.loads(line) for line in open(tmp_path / "full" / "log.jsonl")]
    assert log[0]["recon"] > 0 and log[0]["vgg_weights"] == "random" and full["meta"]["vgg_weights"] == "random"
    assert abs(log[0]["total"] - log[0]["bce"] - log[0]["recon"]) < 1e-5
    with pytest.raises(ConfigError, match="vgg_weights is for the reconstruction branch"):
        _config(demo, tmp_path, "v", vgg_weights="x.pt")


def test_resnet50_backbone_trains_on_images_and_its_checkpoint_serves_the_methods(demo, tmp_path, capsys):
    ckpt = _train(
        _config(
            demo,
            tmp_path,
            "r",
            epochs=1,
            backbone="resnet50",
            image_size=64,
            hidden=8,
            ssc_weight=1.0,
            ssc_segments=8,
            subclasses=2,
        )
    )
    net, meta = load_cam(ckpt, "resnet50")
    assert meta["model"] == "resnet50" and meta["weights"] == "random" and net.backbone is not None
    assert not (tmp_path / "cache").exists()  # no SAM embedding for this backbone
    with pytest.raises(CheckpointError, match="trained on backbone resnet50"):
        load_cam(ckpt, "sam", "tiny")
    cfg = JobConfig(
        coco=str(demo / "annotations.json"),
        out=str(tmp_path / "pl"),
        method="cam-rw",
        options={"cam": ckpt, "steps": 4, "radius": 1},
        model="tiny",
        cache=str(tmp_path / "cache"),
    )
    assert run_pseudo_label(cfg, progress=False)["labelled"] == 4
    # weights of another network for the backbone: one line from the CLI
    torch.save({"0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "vgg.pt")
    args = [
        "train-cam",
        "--coco",
        str(demo / "annotations.json"),
        "--no-cache",
        "--model",
        "tiny",
        "--backbone",
        "resnet50",
        "--image-size",
        "64",
        "--backbone-weights",
        str(tmp_path / "vgg.pt"),
    ]
    assert main(args + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--backbone-weights" in err[0] and "not a state dict of torchvision's resnet50" in err[0]
    assert main(args[:8] + ["--image-size", "50", "--out", str(tmp_path / "o2")]) == 2
    assert "image_size must be a positive multiple of 32" in capsys.readouterr().err


def test_epoch_shards_pad_and_cover_the_epoch():
    shards = [epoch_shard(5, 0, 3, r, 2) for r in (0, 1)]
    assert [len(s) for s in shards] == [3, 3]
    assert set(torch.cat(shards).tolist()) == set(range(5))  # one image repeated to pad
    assert torch.equal(
        epoch_shard(5, 0, 3), torch.stack(shards, 1).flatten()[:5]
    )  # interleaved = the one-process order


_DDP_SCRIPT = """
import json, sys
from wsseg_fast.pipelines.cam import CamConfig, train_cam
train_cam(CamConfig(**json.loads(sys.argv[1])))
"""


@pytest.mark.slow  # three processes that each import torch: ~25 s here, mostly imports
def test_torchrun_ddp_two_cpu_processes_equals_one_process_with_both_batches(demo, tmp_path):
    """With BCE only, 2 ranks of batch 1 take the same steps as 1 process of batch 2 (same
    images per step, gradients averaged), so the weights agree to float rounding."""
    one = torch.load(_train(_config(demo, tmp_path, "one", epochs=2, hidden=16)), weights_only=True)
    script = tmp_path / "ddp_cam.py"
    script.write_text(_DDP_SCRIPT)
    config = dict(
        coco=str(demo / "annotations.json"),
        out=str(tmp_path / "ddp"),
        cache=str(tmp_path / "cache"),
        model="tiny",
        batch_size=1,
        lr=1e-2,
        epochs=2,
        hidden=16,
    )
    proc = torchrun_two_cpu_processes(script, json.dumps(config))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("ignored); DDP over 2 processes") == 1  # rank 0 reports
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert ddp["epoch"] == 2
    for k, v in one["model"].items():
        assert torch.allclose(v, ddp["model"][k], atol=1e-5), k
    logs = [json.loads(line) for line in open(tmp_path / "ddp" / "log.jsonl")]
    ref = [json.loads(line) for line in open(tmp_path / "one" / "log.jsonl")]
    assert len(logs) == 2 and abs(logs[1]["bce"] - ref[1]["bce"]) < 1e-5  # losses averaged over the ranks
