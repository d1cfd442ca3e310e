"""Seconds per training epoch: the ``sam-head`` student on cached SAM features vs the ``unet`` student
on pixels, side by side in one run, same images, labels, batch size and label-map size.

    python benchmarks/student_epoch.py [--images 16] [--model vit_b] [--backend onnxruntime] \
        [--batch-size 8] [--epochs 3] [--threads 2] [--out benchmarks/results/student_epoch]

The images are the demo's (``make_demo``) with their ground truth; their features are encoded once
into a fresh cache before the students train (that time is reported apart: a pseudo-label job with
the same flags pays it, and the student reads its entries). The label map is SAM's frame at 4x the
feature grid (256 px for vit_b) for both students. The first epoch is a warm-up; the figure is the
median of the others. Writes report.json and report.md to --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wsseg_fast.data import make_demo  # noqa: E402
from wsseg_fast.pipelines.label_maps import list_images  # noqa: E402
from wsseg_fast.pipelines.student import StudentConfig, train_student  # noqa: E402
from wsseg_fast.pipelines.student.features import SamFeatures  # noqa: E402
from wsseg_fast.sam.settings import EncoderSettings  # noqa: E402


def epoch_seconds(checkpoint: Path) -> list[float]:
    return [h["seconds"] for h in torch.load(checkpoint, weights_only=True)["history"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--model", default="vit_b")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/student_epoch")
    ap.add_argument("--work", help="keep the images, cache and runs here (default: a fresh temporary directory)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="student_epoch_"))
    make_demo(work, images=args.images, seed=0)
    for name in ("unet", "sam-head", "sam-head --no-image-branch"):
        shutil.rmtree(work / name, ignore_errors=True)  # each student trains from scratch
    encoder = EncoderSettings(model=args.model, backend=args.backend, cache=str(work / "cache"))
    engine = encoder.engine()
    began = time.perf_counter()
    SamFeatures(engine, list_images(work / "images"))
    encoded = engine.stats.encoded
    encode_s = (time.perf_counter() - began) / encoded if encoded else None
    size = 4 * engine.model.grid
    common = dict(images=str(work / "images"), sources={"gt": str(work / "gt")}, batch_size=args.batch_size)
    common |= dict(epochs=args.epochs, size=size, threads=args.threads)
    common = {k: v for k, v in common.items() if k in StudentConfig.__dataclass_fields__}
    rows = {}
    sam = dict(arch="sam-head", encode=False, **{k: v for k, v in vars(encoder).items() if k != "encode"})
    for name, extra in (
        ("unet", dict(arch="unet")),
        ("sam-head", sam),
        ("sam-head --no-image-branch", dict(sam, image_branch=False)),
    ):
        checkpoint = train_student(StudentConfig(out=str(work / name), **common, **extra), progress=False)
        seconds = epoch_seconds(checkpoint)
        rows[name] = {"epoch_s": statistics.median(seconds[1:] or seconds), "epochs_s": seconds}
        print(f"{name}: {rows[name]['epoch_s']:.2f} s/epoch ({seconds})", flush=True)
    ratios = {name: round(rows["unet"]["epoch_s"] / row["epoch_s"], 1) for name, row in rows.items() if name != "unet"}
    report = {
        "images": args.images,
        "model": args.model,
        "backend": args.backend,
        "batch_size": args.batch_size,
        "label_map": size,
        "threads": args.threads,
        "encode_s_per_image": encode_s and round(encode_s, 2),
        "rows": rows,
        "unet_over": ratios,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"{args.images} demo images, {args.model} features ({args.backend}, "
        + (f"encoded once: {encode_s:.1f} s/image), " if encode_s else "already in the cache), ")
        + f"label map {size} px, batch {args.batch_size}, {args.threads} thread(s)",
        "",
        "| student | s/epoch | unet / this |",
        "|---|---|---|",
        *(f"| {name} | {row['epoch_s']:.2f} | {ratios.get(name, 1.0):.1f}x |" for name, row in rows.items()),
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
