"""``wsseg-fast experiment demo-tags``: the image-tag path on the demo (tiny SAM, tags only):
``cam`` pseudo-labels of each classifier of :data:`TAG_CLASSIFIERS` on the train split, ``cam-rw``
and ``cam-sam-rw`` on the best of them, and a U-Net student trained on the best tag-only
pseudo-labels, scored on the test split."""

from __future__ import annotations

from dataclasses import dataclass

from wsseg_fast.config import at_least
from wsseg_fast.data import CocoWeakDataset
from wsseg_fast.io import atomic_write_json, atomic_write_text
from wsseg_fast.models.cam import vgg16_features
from wsseg_fast.pipelines.cam import CamConfig, train_cam
from wsseg_fast.pipelines.experiments.common import (
    ExperimentConfig,
    make_splits,
    plot,
    row,
    start,
    table,
    timing,
    train_and_score_student,
)
from wsseg_fast.pipelines.pseudo_label import JobConfig, run_pseudo_label
from wsseg_fast.sam.model import build_sam

# The classifier ablation: each adds one term to the plain CAM classifier (BCE on the tags).
TAG_CLASSIFIERS = {
    "cam": {},
    "cam+ssc": {"ssc_weight": 1.0},
    "cam+ssc+subclass": {"ssc_weight": 1.0, "subclasses": 8},
    "cam+ssc+recon": {"ssc_weight": 1.0, "recon_weight": 1.0},
}
TAG_WALKS = ("cam-rw", "cam-sam-rw")
SPLIT = "train (pseudo-labels vs GT)"


@dataclass
class TagsExperimentConfig(ExperimentConfig):
    out: str = "experiment-demo-tags"
    """Output directory; re-running resumes (every finished step is kept)."""

    cam_epochs: int = 30
    """Classifier epochs."""

    cam_batch_size: int = 4
    """Classifier batch size."""

    cam_lr: float = 1e-3
    """Classifier learning rate."""

    walk_steps: int = 256
    """Random-walk steps of cam-rw and cam-sam-rw."""

    points_per_side: int = 16
    """cam-sam-rw's grid of point prompts."""

    vgg_weights: str | None = None
    """torchvision vgg16 state dict for the reconstruction term (none: random weights, said in the report)."""

    def validate(self) -> None:
        super().validate()
        at_least(1, cam_epochs=self.cam_epochs)


def run_tags_experiment(cfg: TagsExperimentConfig, progress: bool = True) -> dict:
    """The image-tag path on the demo (tiny SAM, tags only): ``cam`` pseudo-labels of each
    classifier of :data:`TAG_CLASSIFIERS` on the train split, ``cam-rw`` and ``cam-sam-rw`` on
    the best of them, and a U-Net student trained on the best tag-only pseudo-labels, scored on
    the test split. Writes report.json/md/png under ``cfg.out``; returns the report."""
    if cfg.checkpoint:  # bad files: one line now, not a traceback minutes later
        build_sam("tiny", cfg.checkpoint)
    if cfg.vgg_weights:
        vgg16_features(cfg.vgg_weights)
    out, step = start(cfg, progress)
    make_splits(out, cfg.train_images, cfg.test_images, cfg.seed)
    train_coco = str(out / "train" / "annotations.json")
    job = dict(coco=train_coco, model="tiny", checkpoint=cfg.checkpoint, cache=str(out / "cache"), threads=cfg.threads)
    rows, labels, checkpoints = _classifier_rows(cfg, out, job, step, progress)
    best = max(rows, key=lambda r: r["miou"])["name"]
    for method in TAG_WALKS:
        options = {"cam": checkpoints[best], "steps": cfg.walk_steps}
        if method == "cam-sam-rw":
            options["points_per_side"] = cfg.points_per_side
        directory = out / "pseudo_tags" / method
        result = run_pseudo_label(JobConfig(out=str(directory), method=method, options=options, **job), progress)
        rows.append(row(f"{method} ({best})", result["report"], SPLIT))
        labels[rows[-1]["name"]] = directory / "labels"
        step(f"{method} on {best}")
    source = max(rows, key=lambda r: r["miou"])["name"]
    names = CocoWeakDataset(train_coco).class_names
    scores = train_and_score_student(cfg, out, "student_tags", "unet", {"pseudo": labels[source]}, names, progress)
    rows.append(row(f"student ({source})", scores, "test (student predictions vs GT)"))
    step("student on the best tag-only pseudo-labels")
    m = {r["name"]: r["miou"] for r in rows}
    gains = {
        "ssc": m["cam+ssc"] - m["cam"],
        "subclass": m["cam+ssc+subclass"] - m["cam+ssc"],
        "recon": m["cam+ssc+recon"] - m["cam+ssc"],
        **{method: m[f"{method} ({best})"] - m[best] for method in TAG_WALKS},
    }
    report = {
        "rows": rows,
        "best_classifier": best,
        "student_source": source,
        "gains": gains,
        "vgg_weights": cfg.vgg_weights or "random",
        "sam_weights": cfg.checkpoint or "random",
        "settings": cfg.to_dict(),
        **step.times(),
    }
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", _tags_markdown(report))
    plot(rows, out / "report.png", "wsseg-fast experiment demo-tags")
    step.say((out / "report.md").read_text())
    return report


def _classifier_rows(cfg: TagsExperimentConfig, out, job: dict, step, progress: bool):
    """Each classifier of :data:`TAG_CLASSIFIERS` trained on the train split and its ``cam``
    pseudo-labels scored there: the rows, the label directories and the checkpoints, by name."""
    rows, labels, checkpoints = [], {}, {}
    for name, terms in TAG_CLASSIFIERS.items():
        directory = out / "cam" / name.replace("+", "_")
        vgg_weights = cfg.vgg_weights if terms.get("recon_weight") else None
        config = CamConfig(
            coco=job["coco"],
            out=str(directory),
            cache=job["cache"],
            model="tiny",
            checkpoint=cfg.checkpoint,
            epochs=cfg.cam_epochs,
            batch_size=cfg.cam_batch_size,
            lr=cfg.cam_lr,
            seed=cfg.seed,
            vgg_weights=vgg_weights,
            **terms,
        )
        checkpoints[name] = train_cam(config, progress=progress)
        pseudo = out / "pseudo_tags" / directory.name
        options = {"cam": checkpoints[name]}
        result = run_pseudo_label(JobConfig(out=str(pseudo), method="cam", options=options, **job), progress)
        rows.append(row(name, result["report"], SPLIT))
        labels[name] = pseudo / "labels"
        step(f"classifier {name} and its cam pseudo-labels")
    return rows, labels, checkpoints


def _tags_markdown(report: dict) -> str:
    lines = ["# Demo experiment: image tags only", "", *table(report["rows"])]
    g = report["gains"]
    lines += [
        "",
        "mIoU gained by each piece (points): "
        + ", ".join(f"{k} {100 * v:+.1f}" for k, v in g.items())
        + f" (ssc vs cam; subclass and recon vs cam+ssc; the walks vs {report['best_classifier']})",
        f"- SAM weights: {report['sam_weights']}; reconstruction VGG16 weights: {report['vgg_weights']}",
        timing(report),
        "",
    ]
    return "\n".join(lines)
