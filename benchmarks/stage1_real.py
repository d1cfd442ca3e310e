"""Does stage 1 earn its place on real photos? A promptable SAM (a pre-trained stand-in, or any
checkpoint) fine-tuned under the weak labels' constraints, against the same SAM untouched.

    wsseg-fast make-weak CamVid camvid-weak/val --split val
    OMP_NUM_THREADS=1 python benchmarks/stage1_real.py camvid-weak/val --model tiny --checkpoint standin.pth \\
        --out benchmarks/results/stage1_real

Rows (each a fresh pseudo-labelling run scored against the dataset's ``gt/``):

- ``box``: filled boxes; ``sam-box`` and ``sbr``: the checkpoint as it is;
- ``stage 1 -> sam-box`` and ``stage 1 -> sbr``: after ``finetune`` on the dataset's own weak
  labels (boxes, points, scribbles, tags, the pairwise colour prior and ``--priors``);
- ``stage 1 without <kind> -> sam-box / sbr``: the same with one constraint kind's weight set to 0
  (boxes; points and scribbles; the pairwise prior; tags; the priors file's rules), so each kind's
  contribution is measured; ``stage 1 only <kind> -> ...``: every other kind's weight set to 0
  (what a kind does alone, where the others carry the same information).

Writes ``stage1_real.json`` / ``stage1_real.md`` (mIoU, per-class IoU, s/img, and stage 1's
seconds per step) into ``--out``. The dataset is never written into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from wsseg_fast.io import atomic_write_json, atomic_write_text
from wsseg_fast.pipelines.finetune import FinetuneConfig, finetune
from wsseg_fast.pipelines.methods import parse_options
from wsseg_fast.pipelines.pseudo_label import JobConfig, run_pseudo_label
from wsseg_fast.sam.model import MODEL_CONFIGS

# stage-1 variants: name -> the constraint weights set to 0
ABLATIONS = {
    "boxes": ("boxes",),
    "points and scribbles": ("points", "scribbles"),
    "pairwise prior": ("pairwise",),
    "tags": ("tags_present", "tags_absent"),
    "priors file": ("contains", "excludes", "one_class_per_pixel", "box_size"),
}
ROWS = [
    "box",
    "sam-box",
    "sbr",
    "stage 1 -> sam-box",
    "stage 1 -> sbr",
    *(
        f"stage 1 {how} {kind} -> {method}"
        for how in ("without", "only")
        for kind in ABLATIONS
        for method in ("sam-box", "sbr")
    ),
]


def _variant(name: str) -> tuple[str, tuple[str, ...]]:
    """A ``stage 1 ...`` row's fine-tuning: its name (``stage 1 without boxes``) and the weights set to 0."""
    variant = name[: name.index(" -> ")]
    how, _, kind = variant[len("stage 1 ") :].partition(" ")
    if how == "without":
        return variant, ABLATIONS[kind]
    if how == "only":
        return variant, tuple(w for other, weights in ABLATIONS.items() if other != kind for w in weights)
    return variant, ()


def _label(args, work: Path, name: str, method: str, finetuned: str | None) -> dict:
    out = work / "".join(c if c.isalnum() else "_" for c in name)
    shutil.rmtree(out, ignore_errors=True)  # time a fresh run, never a resumed one
    pairs = [option.partition(":")[2] for option in args.method_option if option.partition(":")[0] == method]
    cfg = JobConfig(
        coco=str(args.data / "annotations.json"),
        images=str(args.data / "images"),
        out=str(out),
        method=method,
        options=parse_options(method, pairs),
        model=args.model,
        checkpoint=args.checkpoint,
        finetuned=finetuned,
        cache=str(work / "cache"),
        gt=str(args.data / "gt"),
        threads=1,
        overwrite=True,
    )
    summary = run_pseudo_label(cfg, progress=False)
    report = summary["report"]
    return {
        "name": name,
        "method": method,
        "finetuned": finetuned is not None,
        "miou": report["miou"],
        "per_class": {k: v["iou"] for k, v in report["per_class"].items()},
        "images": summary["labelled"],
        "seconds_per_image": summary["run"]["labelling_seconds"] / max(1, summary["labelled"]),
    }


def _stage1(args, work: Path, name: str, zero: tuple[str, ...]) -> tuple[str, dict]:
    """Fine-tunes (fresh) with the ``zero`` constraint kinds off; the weights' path and timing."""
    out = work / ("finetune_" + "".join(c if c.isalnum() else "_" for c in name))
    shutil.rmtree(out, ignore_errors=True)
    cfg = FinetuneConfig(
        coco=str(args.data / "annotations.json"),
        images=str(args.data / "images"),
        out=str(out),
        model=args.model,
        checkpoint=args.checkpoint,
        priors=args.priors,
        train=args.train,
        epochs=args.epochs,
        lr=args.lr,
        seed=0,
        cache=str(work / "cache"),
        threads=1,
        weights={kind: 0.0 for kind in zero},
        loss_scale=args.loss_scale,
        distill=args.distill,
    )
    began = time.perf_counter()
    path = finetune(cfg, progress=False)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    images = len(json.loads((args.data / "annotations.json").read_text())["images"])
    epoch_seconds = [r["seconds"] for r in log]
    return str(path), {
        "seconds": round(time.perf_counter() - began, 1),
        "epochs": len(log),
        "seconds_per_step": sum(epoch_seconds) / max(1, len(epoch_seconds) * images),
        "final_loss": log[-1]["loss"] if log else None,
    }


def markdown(result: dict) -> str:
    rows = result["rows"]
    classes = list(rows[0]["per_class"])
    base = next((r["miou"] for r in rows if r["name"] == "sam-box"), None)
    lines = [
        f"# Stage 1 with a given SAM: {result['data']}",
        "",
        f"{rows[0]['images']} images, 1 CPU thread; SAM `{result['model']}` from `{result['checkpoint']}`; "
        f"stage 1: `finetune --train {result['train']}`, {result['epochs']} epochs, lr {result['lr']}"
        + (f", distill {result['distill']}" if result.get("distill") else "")
        + "".join(f"; `{o}`" for o in result.get("method_options", []))
        + ".",
        "",
        "| row | mIoU | vs sam-box | " + " | ".join(classes) + " | s/img |",
        "|---|---|---|" + "---|" * len(classes) + "---|",
    ]
    for r in rows:
        delta = f"{100 * (r['miou'] - base):+.1f}" if base is not None else ""
        lines.append(
            f"| {r['name']} | {100 * r['miou']:.1f} | {delta} | "
            + " | ".join(f"{100 * r['per_class'].get(c, 0.0):.1f}" for c in classes)
            + f" | {r['seconds_per_image']:.2f} |"
        )
    lines += ["", "| stage 1 run | seconds | s/step (one image) | final loss |", "|---|---|---|---|"]
    for name, t in result["stage1"].items():
        loss = f"{t['final_loss']:.4f}" if t["final_loss"] is not None else "-"
        lines.append(f"| {name} | {t['seconds']:.0f} | {t['seconds_per_step']:.3f} | {loss} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "data", type=Path, help="a dataset written by `wsseg-fast make-weak` (annotations.json, images/, gt/)"
    )
    parser.add_argument("--model", default="tiny", choices=sorted(MODEL_CONFIGS))
    parser.add_argument("--checkpoint", help="the SAM to test (e.g. a `pretrain-sam` stand-in); none: random weights")
    parser.add_argument(
        "--priors", help="priors YAML for stage 1 (contains / excludes / one_class_per_pixel / box_size)"
    )
    parser.add_argument("--train", default="decoder", help="what stage 1 trains (finetune --train)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--loss-scale", type=float, default=0.5)
    parser.add_argument("--distill", type=float, default=0.0, help="finetune --distill")
    parser.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="METHOD:KEY=VALUE",
        help="an option for one method's rows, e.g. sam-box:zoom=true (repeatable)",
    )
    parser.add_argument("--rows", nargs="+", choices=ROWS, metavar="ROW", help=f"rows to run (default: all): {ROWS}")
    parser.add_argument("--out", default="benchmarks/results/stage1_real", help="where the tables go")
    parser.add_argument("--work", default=os.path.join("/tmp", "wsseg-stage1-real"), help="where runs go")
    args = parser.parse_args(argv)
    if not (args.data / "annotations.json").is_file() or not (args.data / "gt").is_dir():
        print(
            f"{args.data}: expected annotations.json and gt/ (write them with `wsseg-fast make-weak`)", file=sys.stderr
        )
        return 2
    for option in args.method_option:  # refused before any run, not after a fine-tuning
        method, _, pair = option.partition(":")
        try:
            parse_options(method, [pair])
        except ValueError as exc:
            print(f"--method-option {option!r}: {exc}", file=sys.stderr)
            return 2
    if args.checkpoint and not Path(args.checkpoint).is_file():
        print(f"--checkpoint: no such file: {args.checkpoint}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    work = Path(args.work)
    wanted = args.rows or ROWS
    if not args.priors:  # without a priors file, "without" it is stage 1 itself and "only" it is nothing
        wanted = [name for name in wanted if "priors file" not in name]
    rows, stage1, finetuned = [], {}, {}
    for name in wanted:
        method = "box" if name == "box" else ("sam-box" if name.endswith("sam-box") else "sbr")
        weights = None
        if name.startswith("stage 1"):
            variant, zero = _variant(name)
            if variant not in finetuned:
                finetuned[variant], stage1[variant] = _stage1(args, work, variant, zero)
            weights = finetuned[variant]
        rows.append(_label(args, work, name, method, weights))
        print(f"{name}: mIoU {100 * rows[-1]['miou']:.1f}", flush=True)
    result = {
        "data": str(args.data),
        "model": args.model,
        "checkpoint": args.checkpoint,
        "train": args.train,
        "epochs": args.epochs,
        "lr": args.lr,
        "distill": args.distill,
        "priors": args.priors,
        "method_options": args.method_option,
        "rows": rows,
        "stage1": stage1,
    }
    out = Path(args.out)
    atomic_write_json(out / "stage1_real.json", result)
    atomic_write_text(out / "stage1_real.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
