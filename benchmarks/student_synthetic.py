"""Student accuracy on the synthetic shapes dataset (not a pytest-benchmark suite).

    python benchmarks/student_synthetic.py [--images 96] [--size 64] [--epochs 20] [--out DIR]

Trains on the first 3/4 of the images and scores the held-out quarter:
U-Net on exact masks (upper bound), U-Net on box masks, U-Net on a 10% GT subset
only, and the multi-head student (box head + 10% GT head). Writes report.json/.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.pipelines.synthetic_shapes import make_shapes_dataset  # noqa: E402
from wsseg_fast.pipelines.evaluate import evaluate  # noqa: E402
from wsseg_fast.pipelines.student import StudentConfig, predict, train_student  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--gt-fraction", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/student_synthetic")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp())
    data = make_shapes_dataset(work / "all", n=args.images, size=args.size)
    split = {"train": work / "train", "val": work / "val"}
    names = sorted(p.stem for p in (data / "images").glob("*.png"))
    n_train = 3 * len(names) // 4
    for part, stems in (("train", names[:n_train]), ("val", names[n_train:])):
        for sub in ("images", "gt", "box"):
            (split[part] / sub).mkdir(parents=True)
            for s in stems:
                shutil.copy(data / sub / f"{s}.png", split[part] / sub / f"{s}.png")
    tr = split["train"]
    common = dict(
        images=str(tr / "images"), size=args.size, widths=(16, 32, 64), epochs=args.epochs, batch_size=8, lr=3e-3
    )
    runs = {
        "student_gt": dict(sources={"pseudo": str(tr / "gt")}),
        "student_box": dict(sources={"pseudo": str(tr / "box")}),
        f"gt_only_{args.gt_fraction:.0%}": dict(
            arch="multihead", sources={"gt": str(tr / "gt")}, gt_fraction=args.gt_fraction
        ),
        f"multihead_{args.gt_fraction:.0%}": dict(
            arch="multihead", sources={"box": str(tr / "box"), "gt": str(tr / "gt")}, gt_fraction=args.gt_fraction
        ),
    }
    rows = []
    for name, kw in runs.items():
        began = time.perf_counter()
        ck = train_student(StudentConfig(out=str(work / name), **common, **kw), progress=False)
        seconds = time.perf_counter() - began
        predict(ck, split["val"] / "images", work / f"{name}_pred", progress=False)
        r = evaluate(work / f"{name}_pred", split["val"] / "gt")
        rows.append(
            {
                "name": name,
                "miou": r["miou"],
                "macc": r["macc"],
                "mdice": r["mdice"],
                "pixel_accuracy": r["pixel_accuracy"],
                "train_seconds": seconds,
            }
        )
        print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    lines = [
        f"{n_train} train / {len(names) - n_train} val images, {args.size} px, {args.epochs} epochs, "
        f"{args.threads} thread(s)",
        "",
        "| run | mIoU | mACC | mDice | pixel acc | train s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['name']} | {100 * r['miou']:.1f} | {100 * r['macc']:.1f} | {100 * r['mdice']:.1f} | "
        f"{100 * r['pixel_accuracy']:.1f} | {r['train_seconds']:.0f} |"
        for r in rows
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
