"""``experiment demo``: both stages on the built-in demo, one comparison table."""

from __future__ import annotations

import json

from wsseg_fast.cli.common import UsageError
from wsseg_fast.models.cam import vgg16_features
from wsseg_fast.pipelines.experiment import (
    DemoExperimentConfig,
    TagsExperimentConfig,
    run_demo_experiment,
    run_tags_experiment,
)
from wsseg_fast.sam.model import CheckpointError, build_sam


def add_experiment(sub) -> None:
    p = sub.add_parser("experiment", help="run both stages on the built-in demo and write a comparison table")
    p.add_argument("name", choices=("demo", "demo-tags"),
                   help="the experiment (demo: tiny SAM on the built-in demo dataset; demo-tags: its image tags only)")
    p.add_argument("--out", help="output directory (default experiment-NAME); re-running resumes")
    p.add_argument("--train-images", type=int, default=24)
    p.add_argument("--test-images", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--finetune-epochs", type=int, default=DemoExperimentConfig.finetune_epochs)
    p.add_argument("--student-epochs", type=int, default=DemoExperimentConfig.student_epochs)
    p.add_argument("--cam-epochs", type=int, default=TagsExperimentConfig.cam_epochs, help="demo-tags: classifier epochs")
    p.add_argument("--vgg-weights", help="demo-tags: torchvision vgg16 state dict for the reconstruction (none: random)")
    p.add_argument("--checkpoint", help="the tiny SAM's weights, e.g. a pretrain-sam stand-in (none: random weights)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_experiment)


def run_experiment(args) -> int:
    for name in ("train_images", "test_images", "finetune_epochs", "student_epochs", "cam_epochs"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    args.out = args.out or f"experiment-{args.name}"
    cfg = DemoExperimentConfig(out=args.out, train_images=args.train_images, test_images=args.test_images, seed=args.seed,
                               finetune_epochs=args.finetune_epochs, student_epochs=args.student_epochs,
                               threads=args.threads, checkpoint=args.checkpoint)
    if args.checkpoint:  # a bad file: one line now, not a traceback minutes later
        try:
            build_sam("tiny", args.checkpoint)
        except CheckpointError as exc:
            raise UsageError(str(exc)) from None
    if args.vgg_weights:
        try:
            vgg16_features(args.vgg_weights)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.name == "demo-tags":
        cfg = TagsExperimentConfig(out=args.out, train_images=args.train_images, test_images=args.test_images,
                                   seed=args.seed, cam_epochs=args.cam_epochs, vgg_weights=args.vgg_weights,
                                   student_epochs=args.student_epochs, threads=args.threads, checkpoint=args.checkpoint)
        report = run_tags_experiment(cfg, progress=not args.quiet)
    else:
        report = run_demo_experiment(cfg, progress=not args.quiet)
    if args.quiet:
        print(json.dumps({r["name"]: round(r["miou"], 4) for r in report["rows"]}))
    print(f"wrote {args.out}/report.json, report.md, report.png")
    return 0


def register(sub) -> None:
    add_experiment(sub)
