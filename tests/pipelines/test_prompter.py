import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import torchrun_two_cpu_processes
from wsseg_fast.cache import EmbeddingCache
from wsseg_fast.cli import main
from wsseg_fast.data import CocoWeakDataset, make_demo
from wsseg_fast.errors import CheckpointError, ConfigError, DataError
from wsseg_fast.matching import HungarianMatcher, PromptSetCriterion
from wsseg_fast.models.prompter import QueryPrompter
from wsseg_fast.pipelines.methods.prompter import predict_semantic, prompter_instances
from wsseg_fast.pipelines.prompter import PrompterConfig, load_prompter, train_prompter, train_step
from wsseg_fast.pipelines.training import RunDirError
from wsseg_fast.sam.engine import SamEngine
from wsseg_fast.sam.prompting import Embedding, decode_tokens, encode_boxes, predict_masks
from wsseg_fast.sam.registry import build_model

SMALL = dict(
    embed_size=16, d_model=32, nhead=4, dim_feedforward=64, num_encoder_layers=1, num_decoder_layers=1, dropout=0.0
)


@pytest.fixture(scope="module")
def sam():
    return build_model("tiny", with_encoder=False)


def _data(sam, n=4):
    g = torch.Generator().manual_seed(1)
    embs = torch.randn(n, 256, 16, 16, generator=g)
    targets, boxes = [], []
    for i in range(n):
        k = 1 + i % 3
        xy = torch.randint(0, 120, (k, 2), generator=g).float()
        wh = torch.randint(40, 120, (k, 2), generator=g).float()
        b = torch.cat([xy, xy + wh], 1)
        boxes.append(b)
        targets.append({"labels": torch.arange(k) % 2, "prompts": encode_boxes(sam, b, (256, 256), (256, 256))})
    return embs, targets, boxes


def test_encode_boxes_gives_sams_box_tokens(sam):
    b = torch.tensor([[10.0, 20.0, 100.0, 90.0]])
    tok = encode_boxes(sam, b * 2, (512, 512), (256, 256))  # original frame twice the input frame
    sparse, _ = sam.prompt_encoder(points=None, boxes=b, masks=None)
    assert tok.shape == (1, 2, 256)
    torch.testing.assert_close(tok, sparse)
    with pytest.raises(ValueError, match=r"boxes must be \[N, 4\]"):
        encode_boxes(sam, torch.zeros(3), (256, 256), (256, 256))


def test_decode_prompts_matches_box_prompting(sam):
    emb = Embedding(torch.randn(256, 16, 16), (200, 256), (200, 256))
    b = torch.tensor([[10.0, 20.0, 100.0, 90.0], [50.0, 60.0, 200.0, 190.0]])
    with torch.no_grad():
        ours = decode_tokens(sam, emb, encode_boxes(sam, b, (200, 256), (200, 256)))
        ref = predict_masks(sam, emb, boxes=b)
    torch.testing.assert_close(ours.logits, ref.logits)
    torch.testing.assert_close(ours.scores, ref.scores)


def test_step_uses_one_batched_matcher_call(sam, monkeypatch):
    embs, targets, _ = _data(sam)
    torch.manual_seed(0)
    model = QueryPrompter(2, num_queries=5, **SMALL)
    matcher = HungarianMatcher()
    calls = []
    real = matcher.match
    monkeypatch.setattr(matcher, "match", lambda o, t: calls.append(len(t)) or real(o, t))
    crit = PromptSetCriterion(2, matcher)
    losses = train_step(model, crit, torch.optim.Adam(model.parameters(), 1e-4), embs, targets)
    assert calls == [4]
    assert set(losses) == {"loss", "loss_cls", "loss_reg"} and losses["loss"] > 0


def test_overfit_four_images(sam):
    embs, targets, _ = _data(sam)
    torch.manual_seed(0)
    model = QueryPrompter(2, num_queries=5, **SMALL)
    crit = PromptSetCriterion(2)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    first = train_step(model, crit, opt, embs, targets)["loss"]
    for _ in range(300):
        last = train_step(model, crit, opt, embs, targets)["loss"]
    assert last < 0.05 * first
    _assert_matched_queries_decode_like_their_teachers(sam, model, crit, embs, targets)


def _assert_matched_queries_decode_like_their_teachers(sam, model, crit, embs, targets):
    """Each matched query's prompt gives SAM's mask of its target's box, with the target's
    class; unmatched queries say "no object"."""
    model.eval()
    with torch.no_grad():
        out = model(embs)
        assignment = crit.matcher.match(out, targets)
        for i in range(len(embs)):
            q = assignment[i]
            mine = decode_tokens(sam, embs[i], out["pred_prompts"][i][q >= 0]).masks
            teacher = decode_tokens(sam, embs[i], targets[i]["prompts"][q[q >= 0]]).masks
            assert (mine == teacher).float().mean() > 0.98
            assert torch.equal(out["pred_logits"][i][q >= 0].argmax(-1), targets[i]["labels"][q[q >= 0]])
            assert (out["pred_logits"][i][q < 0].argmax(-1) == crit.num_classes).all()


def test_box_head_overfits_four_images_and_needs_target_boxes(sam):
    embs, targets, boxes = _data(sam)
    for target, b in zip(targets, boxes):
        target["boxes"] = (b + 0.5) / 256  # fractions of the input frame, as train_prompter gives them
    torch.manual_seed(0)
    model = QueryPrompter(2, num_queries=5, prompt_head="box", **SMALL)
    model.set_box_encoder(sam.prompt_encoder)
    crit = PromptSetCriterion(2, HungarianMatcher(cost_prompt=0.0), reg_weight=0.0)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    first = train_step(model, crit, opt, embs, targets)
    for _ in range(300):
        last = train_step(model, crit, opt, embs, targets)
    assert last["loss"] < 0.05 * first["loss"] and last["loss_reg"] < 0.1 * first["loss_reg"]
    _assert_matched_queries_decode_like_their_teachers(sam, model, crit, embs, targets)
    with pytest.raises(ValueError, match="need targets with 'boxes'"):
        crit(model(embs), [{k: v for k, v in t.items() if k != "boxes"} for t in targets])


def test_inference_resolves_overlaps_by_class_prob_iou_and_confidence(sam):
    torch.manual_seed(0)
    model = QueryPrompter(3, num_queries=8, **SMALL).eval()
    emb = Embedding(torch.randn(256, 16, 16), (100, 120), (213, 256))
    inst = prompter_instances(model, sam, emb, threshold=0.0)
    with torch.no_grad():
        out = model(emb.tensor[None])
        prob = out["pred_logits"][0].softmax(-1)
        conf, cls = prob.max(-1)
        keep = cls < 3
        pred = decode_tokens(sam, emb, out["pred_prompts"][0][keep])
    assert len(inst.masks) == int(keep.sum()) >= 2
    np.testing.assert_array_equal(inst.classes, (cls[keep] + 1).numpy())
    np.testing.assert_allclose(inst.scores, (conf[keep] * pred.scores[:, 0]).numpy(), rtol=1e-6)
    # each pixel: among the masks covering it, the highest class prob x IoU x sigmoid(logit)
    logits = pred.logits[:, 0]
    rank = (conf[keep] * pred.scores[:, 0])[:, None, None] * torch.sigmoid(logits)
    rank = torch.where(logits > 0, rank, -1.0)
    best, index = rank.max(0)
    expected = torch.where(best >= 0, (cls[keep] + 1)[index], 0)
    semantic = predict_semantic(model, sam, emb, threshold=0.0)
    assert semantic.shape == (100, 120)
    np.testing.assert_array_equal(semantic, expected.numpy())
    assert (expected > 0).any() and len(np.unique(semantic)) >= 2  # overlaps were really decided


def test_predict_semantic_no_queries_kept_is_background(sam):
    torch.manual_seed(0)
    model = QueryPrompter(2, num_queries=5, **SMALL).eval()
    emb = Embedding(torch.randn(256, 16, 16), (100, 120), (213, 256))
    assert (predict_semantic(model, sam, emb, threshold=1.01) == 0).all()
    with pytest.raises(ValueError, match="embeddings must be"):
        predict_semantic(model, sam, Embedding(torch.randn(256, 8, 8), (100, 120), (213, 256)))


# --- training on a generated demo dataset (tiny SAM, random weights) ---------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("prompterdemo")
    make_demo(out, images=3, seed=5)
    return out


def _cfg(demo, out, **kw):
    base = dict(
        coco=str(demo / "annotations.json"),
        out=str(out),
        model="tiny",
        epochs=1,
        batch_size=2,
        lr=1e-3,
        num_queries=6,
        d_model=32,
        nhead=4,
        dim_feedforward=64,
        num_encoder_layers=1,
        num_decoder_layers=1,
        threads=1,
    )
    return PrompterConfig(**{**base, **kw})


def test_training_resumes_bit_exact_is_deterministic_and_shares_the_cache(demo, tmp_path):
    cache = tmp_path / "cache"
    whole = train_prompter(_cfg(demo, tmp_path / "whole", epochs=2, cache=str(cache)), progress=False)
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all(r["loss"] > 0 for r in log)
    entries = sorted(p for p in cache.rglob("*") if p.is_file())
    assert entries  # the embeddings went into the shared cache ...
    engine = SamEngine("tiny", cache=EmbeddingCache(str(cache)))
    dataset = CocoWeakDataset(str(demo / "annotations.json"))
    engine.embed([dataset.load_image(r) for r in dataset.images])
    assert engine.stats.encoded == 0  # ... under the keys the other jobs use
    _, meta = load_prompter(whole, model="tiny", num_classes=dataset.num_classes - 1)
    assert meta["class_names"] == dataset.class_names
    # dropout is on (0.1): the RNG state must be resumed too
    train_prompter(_cfg(demo, tmp_path / "split", epochs=1, cache=str(cache)), progress=False)
    split = train_prompter(_cfg(demo, tmp_path / "split", epochs=2, cache=str(cache)), progress=False)
    a, b = torch.load(whole, weights_only=True)["prompter"], torch.load(split, weights_only=True)["prompter"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(RunDirError, match="other settings"):
        train_prompter(_cfg(demo, tmp_path / "split", epochs=3, lr=5e-4), progress=False)
    boxed = train_prompter(_cfg(demo, tmp_path / "box", epochs=1, cache=str(cache), prompt_head="box"), progress=False)
    prompter, _ = load_prompter(boxed, model="tiny")
    assert prompter.config()["prompt_head"] == "box" and prompter.box_gaussian.abs().sum() > 0


def test_bad_inputs(demo, tmp_path, capsys):
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        train_prompter(_cfg(demo, tmp_path / "a", batch_size=0), progress=False)
    ckpt = train_prompter(_cfg(demo, tmp_path / "b"), progress=False)
    with pytest.raises(CheckpointError, match="trained on SAM 'tiny' embeddings, not 'vit_b'"):
        load_prompter(ckpt, model="vit_b")
    with pytest.raises(CheckpointError, match="predicts 6 classes, the dataset has 3"):
        load_prompter(ckpt, num_classes=3)
    with pytest.raises(ConfigError, match=r"no_object_weight must be in \(0, 1\]"):
        train_prompter(_cfg(demo, tmp_path / "a", no_object_weight=0.0), progress=False)
    # pseudo-labelling a dataset of another class count: one line, no traceback
    spec = json.loads((demo / "annotations.json").read_text())
    spec["categories"] = spec["categories"][:3]
    spec["annotations"] = [a for a in spec["annotations"] if a["category_id"] in {c["id"] for c in spec["categories"]}]
    (demo / "three.json").write_text(json.dumps(spec))
    capsys.readouterr()
    assert (
        main(
            [
                "pseudo-label",
                "--coco",
                str(demo / "three.json"),
                "--images",
                str(demo / "images"),
                "--model",
                "tiny",
                "--method",
                "prompter",
                "--prompter",
                str(ckpt),
                "--no-cache",
                "--out",
                str(tmp_path / "pl"),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "predicts 6 classes, the dataset has 3" in err and "Traceback" not in err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_prompter(tmp_path / "junk.pt")
    # a dataset without boxes
    spec = json.loads((demo / "annotations.json").read_text())
    for a in spec["annotations"]:
        a.pop("bbox", None)
    (demo / "nobox.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match="box"):
        train_prompter(_cfg(demo, tmp_path / "c", coco=str(demo / "nobox.json")), progress=False)


def test_cli_train_prompter_then_prompt_free_pseudo_labels(demo, tmp_path, capsys):
    args = [
        "train-prompter",
        "--coco",
        str(demo / "annotations.json"),
        "--model",
        "tiny",
        "--epochs",
        "1",
        "--queries",
        "6",
        "--d-model",
        "32",
        "--heads",
        "4",
        "--ffn",
        "64",
        "--encoder-layers",
        "1",
        "--decoder-layers",
        "1",
        "--cache",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "p"),
        "--quiet",
        "--threads",
        "1",
    ]
    assert main(args) == 0
    assert (tmp_path / "p" / "prompter.pt").exists() and (tmp_path / "p" / "config.yaml").exists()
    ckpt = str(tmp_path / "p" / "prompter.pt")
    job = [
        "pseudo-label",
        "--coco",
        str(demo / "annotations.json"),
        "--model",
        "tiny",
        "--cache",
        str(tmp_path / "cache"),
        "--quiet",
    ]
    assert (
        main(
            job
            + [
                "--method",
                "prompter",
                "--prompter",
                ckpt,
                "--method-option",
                "threshold=0.99",
                "--out",
                str(tmp_path / "pl"),
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "pl" / "labels").glob("*.png"))) == 3
    assert "mIoU" in capsys.readouterr().out
    # --prompter is the method option checkpoint=, which still works: the same labels
    assert (
        main(
            job
            + [
                "--method",
                "prompter",
                "--method-option",
                f"checkpoint={ckpt}",
                "--method-option",
                "threshold=0.99",
                "--out",
                str(tmp_path / "pl2"),
            ]
        )
        == 0
    )
    for png in (tmp_path / "pl" / "labels").glob("*.png"):
        assert png.read_bytes() == (tmp_path / "pl2" / "labels" / png.name).read_bytes()
    # prompt-free: an image without any box is labelled too (box methods leave it background)
    spec = json.loads((demo / "annotations.json").read_text())
    first = spec["images"][0]
    spec["annotations"] = [a for a in spec["annotations"] if a["image_id"] != first["id"]]
    (demo / "fewer_boxes.json").write_text(json.dumps(spec))
    assert (
        main(
            job[:2]
            + [str(demo / "fewer_boxes.json"), "--images", str(demo / "images")]
            + job[3:]
            + [
                "--method",
                "prompter",
                "--prompter",
                ckpt,
                "--method-option",
                "threshold=0.0",
                "--out",
                str(tmp_path / "pl3"),
            ]
        )
        == 0
    )
    stem = first["file_name"].rsplit(".", 1)[0]
    assert (np.asarray(Image.open(tmp_path / "pl3" / "labels" / f"{stem}.png")) > 0).any()
    capsys.readouterr()
    for extra, message in (
        (["--method", "sam-box", "--prompter", ckpt], "--prompter goes with --method prompter"),
        (
            ["--method", "prompter", "--prompter", ckpt, "--method-option", f"checkpoint={ckpt}"],
            "give the prompter once",
        ),
        (["--method", "prompter"], "method prompter needs --prompter"),
    ):
        assert main(job + extra + ["--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert (
        main(
            [
                "train-prompter",
                "--coco",
                str(demo / "annotations.json"),
                "--out",
                str(tmp_path / "q"),
                "--batch-size",
                "0",
                "--quiet",
            ]
        )
        == 2
    )
    assert "batch_size must be >= 1" in capsys.readouterr().err


_DDP_SCRIPT = """
import json, sys
from wsseg_fast.pipelines.prompter import PrompterConfig, train_prompter
train_prompter(PrompterConfig(**json.loads(sys.argv[1])), progress=True)
"""


@pytest.mark.slow  # three processes that each import torch: ~25 s, mostly imports
def test_torchrun_ddp_equals_one_process_with_the_whole_batch(tmp_path):
    data = tmp_path / "data"
    make_demo(data, images=4, seed=5)
    # 4 images, 2 ranks x batch 1 = the same two steps as one process with batch 2 (no dropout;
    # a no-object weight of 1 keeps the CE a plain mean, the same over a batch or over the ranks)
    same = dict(epochs=2, dropout=0.0, no_object_weight=1.0, cache=str(tmp_path / "cache"))
    single = train_prompter(_cfg(data, tmp_path / "single", **same), progress=False)
    script = tmp_path / "ddp_prompter.py"
    script.write_text(_DDP_SCRIPT)
    config = vars(_cfg(data, tmp_path / "ddp", batch_size=1, **same))
    proc = torchrun_two_cpu_processes(script, json.dumps(config))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(os.listdir(tmp_path / "ddp")) == ["config.yaml", "last.pt", "log.jsonl", "prompter.pt"]  # rank 0
    assert proc.stdout.count("epoch 2/2") == 1
    # the same model (compared by its outputs: Adam turns the float noise of gradients that are
    # zero in exact arithmetic, e.g. the attention keys' bias, into lr-sized weight differences)
    a, b = load_prompter(single)[0], load_prompter(tmp_path / "ddp" / "prompter.pt")[0]
    x = torch.randn(4, 256, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out_a, out_b = a(x), b(x)
    for k in out_a:
        torch.testing.assert_close(out_b[k], out_a[k], rtol=1e-4, atol=1e-4)
    logs = [
        [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        for run in ("single", "ddp")
    ]
    assert [r["epoch"] for r in logs[1]] == [1, 2]
    for x, y in zip(*logs):  # the losses are all-reduced over the ranks
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4)
