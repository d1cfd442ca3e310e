"""Seed 003's coverage table on real photos: students that see ground truth on a fraction of the
training images and weak pseudo-labels on all of them, scored on held-out images.

    python benchmarks/multihead_camvid.py DATA [--fractions 5 10 25 50] [--heads box logic-refine sam-box] \
        [--arch multihead|sam-head] [--checkpoint STANDIN.pth] [--cam CLASSIFIER.pt] [--epochs 10] [--size 256] \
        [--work DIR] [--out benchmarks/results/multihead_camvid]

DATA holds ``train/`` and ``val/`` as ``wsseg-fast make-weak`` writes them (``annotations.json``,
``images/``, ``gt/``), e.g. CamVid's things (``make-weak CamVid DATA/train --split train`` and the same
for val). The weak heads are pseudo-label jobs on the train images (``box``, ``logic-refine``; ``sam-box``
with a SAM ``--checkpoint``; ``cam`` soft maps with a ``--cam`` classifier, which also needs the SAM it was
trained on). Rows: the fully supervised student, and per fraction the gt-only student (gt head alone on
that fraction) and the multi-head student (gt on that fraction + every weak head on every image). Every
student trains on train and is scored on val (mIoU over background + the things); seconds per epoch are
the median epoch. Jobs and students are resumable (re-run the command); ``report.json``/``report.md``
go to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wsseg_fast.pipelines.evaluate import evaluate  # noqa: E402
from wsseg_fast.pipelines.methods import parse_options  # noqa: E402
from wsseg_fast.pipelines.pseudo_label import JobConfig, run_pseudo_label  # noqa: E402
from wsseg_fast.pipelines.student import StudentConfig, predict, train_student  # noqa: E402
from wsseg_fast.sam.settings import EncoderSettings  # noqa: E402


def weak_heads(args, data: Path, work: Path) -> dict[str, str]:
    """Head name -> directory of its pseudo-labels on the train images (the jobs resume)."""
    heads = {}
    sam = dict(model=args.model, checkpoint=args.checkpoint, cache=args.cache)
    for head in args.heads:
        method, options, source = head, {}, "labels"
        if head == "cam":
            options, source = {"cam": args.cam}, "soft"
        if head in ("sam-box", "cam") and (args.checkpoint is None or (head == "cam" and args.cam is None)):
            print(f"skipping the {head} head: it needs --checkpoint" + (" and --cam" if head == "cam" else ""))
            continue
        cfg = JobConfig(
            coco=str(data / "train" / "annotations.json"),
            out=str(work / f"pl-{head}"),
            method=method,
            options=parse_options(method, options),
            threads=args.threads,
            **sam,
        )
        summary = run_pseudo_label(cfg, progress=False)
        print(f"{head} pseudo-labels: {summary['labelled']} images ({summary['run']})", flush=True)
        heads[head] = str(work / f"pl-{head}" / source)
    return heads


def student_row(args, data: Path, work: Path, name: str, sources: dict, fraction: float | None) -> dict:
    sam = {}
    if args.arch == "sam-head":
        sam = dict(model=args.model, checkpoint=args.checkpoint, cache=args.cache)
    cfg = StudentConfig(
        images=str(data / "train" / "images"),
        sources=sources,
        out=str(work / "students" / name),
        arch=args.arch,
        gt_fraction=fraction,
        size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        class_balance=args.class_balance,
        **sam,
    )
    checkpoint = train_student(cfg, progress=False)
    pred = work / "pred" / name
    encoder = EncoderSettings(**sam) if sam else None
    predict(checkpoint, data / "val" / "images", pred, encoder=encoder, progress=False)
    result = evaluate(pred, data / "val" / "gt")
    seconds = [h["seconds"] for h in torch.load(checkpoint, weights_only=True)["history"]]
    row = {"row": name, "miou": round(100 * result["miou"], 1), "s_per_epoch": round(statistics.median(seconds), 1)}
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--fractions", type=float, nargs="+", default=[5, 10, 25, 50], help="percent of train with gt")
    ap.add_argument("--heads", nargs="+", default=["box", "logic-refine", "sam-box", "cam"])
    ap.add_argument("--arch", choices=["multihead", "sam-head"], default="multihead")
    ap.add_argument("--model", default="tiny", help="SAM model of sam-box, cam and the sam-head student")
    ap.add_argument("--checkpoint", help="SAM checkpoint (e.g. a pretrain-sam stand-in)")
    ap.add_argument("--cam", help="a train-cam classifier for the cam head")
    ap.add_argument("--cache", default=None, help="embedding cache (default: WORK/cache)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--class-balance", type=float, default=0.5)
    ap.add_argument("--no-full", action="store_true", help="skip the fully supervised row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("build/multihead_camvid"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/multihead_camvid"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.cache = args.cache or str(args.work / "cache")
    heads = weak_heads(args, args.data, args.work)
    gt = str(args.data / "train" / "gt")
    rows = [] if args.no_full else [student_row(args, args.data, args.work, "gt 100%", {"gt": gt}, None)]
    for percent in args.fractions:
        f = percent / 100
        rows.append(student_row(args, args.data, args.work, f"gt-only {percent:g}%", {"gt": gt}, f))
        name = f"multihead {percent:g}% (gt + {' + '.join(heads)})"
        rows.append(student_row(args, args.data, args.work, name, {"gt": gt, **heads}, f))
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "report.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    lines = [
        f"train -> val of {args.data}, {args.arch} students, {args.epochs} epochs at {args.size} px",
        "",
        "| row | val mIoU | s/epoch |",
        "|---|---|---|",
        *(f"| {r['row']} | {r['miou']} | {r['s_per_epoch']} |" for r in rows),
    ]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
