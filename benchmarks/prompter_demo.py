"""The query prompter on the built-in demo: trained on a train split of any size, scored
prompt-free on the experiment's 12 test images against ``sam_gt_box`` (the same SAM
prompted with the test boxes, unclipped: the prompter's upper bound).

    python benchmarks/prompter_demo.py --train-images 600 --epochs 100 --layers 2 --lr 2e-4 \
        --prompt-head box --checkpoint standin/sam.pth --out /tmp/prompter-demo

Writes ``OUT/rows.json`` and prints it. The test split is ``experiment demo``'s (seed 1,
12 images) whatever the train size, so rows compare across train sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from wsseg_fast.pipelines.experiments.common import make_splits
from wsseg_fast.pipelines.experiments.demo import SAM_GT_BOX_OPTIONS
from wsseg_fast.pipelines.prompter import PrompterConfig, train_prompter
from wsseg_fast.pipelines.pseudo_label import JobConfig, run_pseudo_label


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-images", type=int, default=24)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--layers", type=int, default=6, help="encoder and decoder layers each (the paper: 6)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--prompt-head", choices=("tokens", "box"), default="tokens")
    p.add_argument("--checkpoint", help="the tiny SAM's weights (e.g. a pretrain-sam stand-in); none: random")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    make_splits(args.out, args.train_images, 12, 0)
    run = args.out / f"prompter_{args.prompt_head}_e{args.epochs}_l{args.layers}_lr{args.lr}_s{args.stride}"
    began = time.perf_counter()
    prompter = train_prompter(
        PrompterConfig(
            coco=str(args.out / "train" / "annotations.json"),
            out=str(run),
            model="tiny",
            checkpoint=args.checkpoint,
            cache=str(args.out / "cache"),
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            num_encoder_layers=args.layers,
            num_decoder_layers=args.layers,
            stride=args.stride,
            prompt_head=args.prompt_head,
            seed=0,
            threads=args.threads,
        ),
        progress=False,
    )
    rows = {"train_images": args.train_images, "train_seconds": round(time.perf_counter() - began)}
    for split in ("test", "train"):
        job = dict(
            coco=str(args.out / split / "annotations.json"),
            model="tiny",
            checkpoint=args.checkpoint,
            cache=str(args.out / "cache"),
            threads=args.threads,
        )
        free = run_pseudo_label(
            JobConfig(
                out=str(run / f"{split}_prompter"),
                method="prompter",
                options={"checkpoint": str(prompter), "threshold": 0.5},
                overwrite=True,
                **job,
            ),
            progress=False,
        )
        rows[f"{split} prompter"] = round(100 * free["report"]["miou"], 1)
    boxed = run_pseudo_label(
        JobConfig(
            out=str(args.out / "test_sam_gt_box"),
            method="sam-box",
            options=SAM_GT_BOX_OPTIONS,
            coco=str(args.out / "test" / "annotations.json"),
            model="tiny",
            checkpoint=args.checkpoint,
            cache=str(args.out / "cache"),
            threads=args.threads,
            overwrite=True,
        ),
        progress=False,
    )
    rows["test sam_gt_box"] = round(100 * boxed["report"]["miou"], 1)
    rows["prompter / sam_gt_box"] = round(rows["test prompter"] / rows["test sam_gt_box"], 3)
    (run / "rows.json").write_text(json.dumps(rows, indent=1))
    print(run.name, json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
