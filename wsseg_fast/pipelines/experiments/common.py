"""What the demo experiments share: their settings, the splits, the step clock, training and
scoring a student, and the report's rows, table and plot."""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from wsseg_fast.config import Config, at_least
from wsseg_fast.data import make_demo
from wsseg_fast.io import atomic_write_bytes
from wsseg_fast.pipelines.evaluate import evaluate
from wsseg_fast.pipelines.student import StudentConfig, predict, train_student


@dataclass
class ExperimentConfig(Config):
    out: str = "experiment"
    """Output directory; re-running resumes (every finished step is kept)."""

    train_images: int = 24
    """Images of the demo's train split (pseudo-labelled, students trained on them)."""

    test_images: int = 12
    """Images of the held-out test split (students scored on them)."""

    seed: int = 0
    """Seed of the splits and of every run."""

    student_epochs: int = 60
    """Epochs of every student."""

    student_size: int = 96
    """The students' training resolution."""

    student_widths: tuple[int, ...] = (16, 32, 64)
    """The students' U-Net widths."""

    student_batch_size: int = 4
    """Batches of 4 give 6 steps an epoch on 24 images (batches of 8, lr 1e-3 and plain
    cross-entropy left the thin classes at 0 IoU even with GT labels)."""

    student_lr: float = 3e-3
    """The students' learning rate."""

    student_class_balance: float = 0.5
    """The students' class-balance exponent."""

    threads: int | None = None
    """torch CPU threads."""

    checkpoint: str | None = None
    """The tiny SAM's weights, e.g. a pretrain-sam stand-in (none: seeded random weights)."""

    def validate(self) -> None:
        at_least(1, train_images=self.train_images, test_images=self.test_images, student_epochs=self.student_epochs)


class Steps:
    """Wall-clock seconds of an experiment's steps; ``step(name)`` closes one and says so."""

    def __init__(self, progress: bool):
        self.began, self.seconds, self.progress = time.perf_counter(), {}, progress

    def say(self, text: str) -> None:
        if self.progress:
            print(text, flush=True)

    def __call__(self, name: str) -> None:
        self.seconds[name] = round(time.perf_counter() - self.began - sum(self.seconds.values()), 1)
        self.say(f"[{time.perf_counter() - self.began:6.0f} s] {name} done")

    def times(self) -> dict:
        return {"seconds": self.seconds, "total_seconds": round(time.perf_counter() - self.began, 1)}


def start(cfg: ExperimentConfig, progress: bool) -> tuple[Path, Steps]:
    """Threads, the output directory and the step clock of an experiment run."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    return out, Steps(progress)


def make_splits(out: Path, train_images: int, test_images: int, seed: int) -> None:
    """The demo's train (seed) and test (seed + 1) splits under ``out``, unless already there."""
    for split, (n, split_seed) in {"train": (train_images, seed), "test": (test_images, seed + 1)}.items():
        if not (out / split / "annotations.json").exists():
            make_demo(out / split, images=n, seed=split_seed)


def train_and_score_student(
    cfg: ExperimentConfig,
    out: Path,
    name: str,
    arch: str,
    sources: dict,
    names: list[str],
    progress: bool,
    gt_fraction: float | None = None,
) -> dict:
    """Train student ``name`` on the train split's label maps ``sources`` and score it on the test split."""
    config = StudentConfig(
        images=str(out / "train" / "images"),
        sources={k: str(v) for k, v in sources.items()},
        out=str(out / "students" / name),
        arch=arch,
        gt_fraction=gt_fraction,
        num_classes=len(names),
        class_names=names,
        size=cfg.student_size,
        widths=tuple(cfg.student_widths),
        epochs=cfg.student_epochs,
        seed=cfg.seed,
        batch_size=cfg.student_batch_size,
        lr=cfg.student_lr,
        class_balance=cfg.student_class_balance,
    )
    checkpoint = train_student(config, progress=progress)
    predictions = out / "predictions" / name
    predict(checkpoint, out / "test" / "images", predictions, progress=progress)
    return evaluate(predictions, out / "test" / "gt", num_classes=len(names), class_names=names)


def row(name: str, scores: dict, split: str) -> dict:
    return {
        "name": name,
        "split": split,
        **{k: scores[k] for k in ("miou", "macc", "mdice", "pixel_accuracy")},
        "per_class_iou": {c: v["iou"] for c, v in scores["per_class"].items()},
    }


def pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def table(rows: list[dict]) -> list[str]:
    """The report's rows as markdown table lines."""
    lines = ["| row | mIoU | mACC | mDice | pixel acc | scored on |", "|---|---|---|---|---|---|"]
    return lines + [
        f"| {r['name']} | {pct(r['miou'])} | {pct(r['macc'])} | {pct(r['mdice'])} | "
        f"{pct(r['pixel_accuracy'])} | {r['split']} |"
        for r in rows
    ]


def timing(report: dict) -> str:
    return f"- total time: {report['total_seconds']:.0f} s; per step: " + ", ".join(
        f"{k} {v:.0f} s" for k, v in report["seconds"].items()
    )


def plot(rows: list[dict], path: Path, title: str = "wsseg-fast experiment demo") -> None:
    try:
        import matplotlib
    except ImportError:  # the plot is optional; the tables are the result
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [r["name"] for r in rows]
    values = [100 * (r["miou"] if r["miou"] == r["miou"] else 0) for r in rows]
    bars = ax.bar(names, values, color=["#999", "#3a7", "#3a7", "#999", "#36c", "#c63"][: len(rows)])
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("mIoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
