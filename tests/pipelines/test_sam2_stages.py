"""Every SAM method and stage on SAM 2.1 (``sam2.1_hiera_t``, seeded random weights): one small case
each, on one demo image whose three feature levels are encoded once and read from the cache after."""

from __future__ import annotations

import pytest
import torch

from wsseg_fast.cache import EmbeddingCache
from wsseg_fast.data import CocoWeakDataset, make_demo
from wsseg_fast.pipelines.cam import CamConfig, train_cam
from wsseg_fast.pipelines.finetune import FinetuneConfig, finetune
from wsseg_fast.pipelines.pretrain import PretrainConfig, pretrain_sam
from wsseg_fast.pipelines.prompter import PrompterConfig, train_prompter
from wsseg_fast.pipelines.pseudo_label import JobConfig, run_pseudo_label
from wsseg_fast.sam import SamEngine, build_model
from wsseg_fast.sam.model import load_state_dict_file

pytest.importorskip("sam2")
MODEL = "sam2.1_hiera_t"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One demo image, its features in the cache (the one encoder pass of this file)."""
    out = tmp_path_factory.mktemp("sam2demo")
    make_demo(out, images=1, seed=2)
    cache = EmbeddingCache(out / "cache")
    dataset = CocoWeakDataset(str(out / "annotations.json"))
    [embedding] = SamEngine(MODEL, cache=cache).embed([dataset.load_image(dataset.images[0])])
    assert [tuple(t.shape) for t in embedding.levels] == [(256, 64, 64), (32, 256, 256), (64, 128, 128)]
    return out


def _label(demo, out, method, **kw):
    cfg = JobConfig(
        coco=str(demo / "annotations.json"),
        out=str(out),
        method=method,
        model=MODEL,
        cache=str(demo / "cache"),
        threads=1,
        **kw,
    )
    summary = run_pseudo_label(cfg, progress=False)
    assert summary["labelled"] == 1 and summary["run"]["encoded"] == 0, summary["run"]  # every stage reads the cache
    return summary


def test_box_and_point_methods(demo, tmp_path):
    for method in ("sam-box", "sam-point", "sbr", "sam-logic-refine"):
        _label(demo, tmp_path / method, method, options={"steps": 4} if method == "sam-logic-refine" else {})


def test_stage1_finetunes_the_decoder_on_cached_features(demo, tmp_path):
    common = dict(
        coco=str(demo / "annotations.json"),
        model=MODEL,
        cache=str(demo / "cache"),
        threads=1,
        loss_scale=0.125,
        lr=1e-3,
    )
    weights = finetune(FinetuneConfig(out=str(tmp_path / "ft"), epochs=1, **common), progress=False)
    state = load_state_dict_file(weights)
    assert state and all(k.startswith("sam_mask_decoder.") and ".conv_s" not in k for k in state)
    _label(demo, tmp_path / "sbr", "sbr", finetuned=str(weights))


def test_prompter_trains_and_labels_prompt_free(demo, tmp_path):
    cfg = PrompterConfig(
        coco=str(demo / "annotations.json"),
        out=str(tmp_path / "p"),
        model=MODEL,
        cache=str(demo / "cache"),
        epochs=1,
        batch_size=1,
        num_queries=4,
        d_model=16,
        nhead=2,
        dim_feedforward=16,
        num_encoder_layers=1,
        num_decoder_layers=1,
        threads=1,
    )
    prompter = train_prompter(cfg, progress=False)
    _label(demo, tmp_path / "pl", "prompter", options={"checkpoint": str(prompter), "threshold": 0.0})


def test_tags_only_methods(demo, tmp_path):
    cam = train_cam(
        CamConfig(
            coco=str(demo / "annotations.json"),
            out=str(tmp_path / "cam"),
            model=MODEL,
            cache=str(demo / "cache"),
            epochs=1,
            hidden=8,
            batch_size=1,
        ),
        progress=False,
    )
    _label(demo, tmp_path / "cam", "cam", options={"cam": cam})
    _label(demo, tmp_path / "rw", "cam-rw", options={"cam": cam, "steps": 4})
    _label(demo, tmp_path / "srw", "cam-sam-rw", options={"cam": cam, "steps": 4, "points_per_side": 2, "size": 32})


@pytest.mark.slow  # one training step of the Hiera encoder at 1024 px: ~25 s on one CPU thread
def test_pretrain_fine_tunes_a_given_checkpoint(demo, tmp_path):
    start = tmp_path / "start.pth"
    torch.save({"model": build_model(MODEL).module.state_dict()}, start)  # the official checkpoint's wrapper
    weights = pretrain_sam(
        PretrainConfig(
            coco=str(demo / "annotations.json"),
            out=str(tmp_path / "pre"),
            model=MODEL,
            checkpoint=str(start),
            epochs=1,
            batch_size=1,
            max_instances=1,
            clicks=0,
            threads=1,
        ),
        progress=False,
    )
    trained, initial = load_state_dict_file(weights), load_state_dict_file(start)
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial if k.startswith("sam_mask_decoder."))


@pytest.mark.slow  # an export and two 1024-px encoder passes: ~25 s
def test_onnxruntime_backend_matches_eager_features_and_masks(demo, tmp_path):
    pytest.importorskip("onnxruntime")
    dataset = CocoWeakDataset(str(demo / "annotations.json"))
    image = dataset.load_image(dataset.images[0])
    boxes, _ = dataset.boxes(dataset.images[0])
    eager, ort = SamEngine(MODEL), SamEngine(MODEL, backend="onnxruntime", cache=EmbeddingCache(tmp_path / "c"))
    [a], [b] = eager.embed([image]), ort.embed([image])
    assert len(list((tmp_path / "c" / "encoders").iterdir())) == 1  # exported once, beside the cache
    for x, y in zip(a.levels, b.levels):
        assert (x.float() - y.float()).abs().max() <= 1e-3 * max(1.0, float(x.abs().max()))
    [b] = SamEngine(MODEL, backend="onnxruntime", encoder_file=ort.encoder.model_file).embed([image])
    for x, y in zip(a.levels, b.levels):
        assert (x - y).abs().max() <= 1e-3  # and without the cache's fp16 storage
    masks_a, masks_b = eager.predict(a, boxes=boxes).masks, eager.predict(b, boxes=boxes).masks
    iou = (masks_a & masks_b).sum((-2, -1)) / (masks_a | masks_b).sum((-2, -1)).clamp(min=1)
    assert iou.min() >= 0.99
