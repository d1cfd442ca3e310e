"""Stage 2: ``train-student``, ``predict`` and ``evaluate``."""

from __future__ import annotations

import argparse
import os

from wsseg_fast.cli.common import add_quiet
from wsseg_fast.cli.settings import add_settings, settings_from_args
from wsseg_fast.pipelines.evaluate import evaluate, write_report
from wsseg_fast.pipelines.student import PredictConfig, StudentConfig, predict, train_student

STUDENT_FLAGS = {"sources": "--source", "loss_weights": "--loss-weight", "val_labels": "--val-gt"}
PREDICT_FLAGS = {"student": "--checkpoint", "checkpoint": "--sam-checkpoint"}


class _PseudoSource(argparse.Action):
    """``--pseudo DIR``: the source ``pseudo=DIR``, first among the sources (the first head predicts
    when there is no ``gt`` source)."""

    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, self.dest, [f"pseudo={value}", *(getattr(namespace, self.dest) or [])])


def add_train_student(sub) -> None:
    p = sub.add_parser(
        "train-student",
        help="train the prompt-free student on label maps: a U-Net, or a head on SAM features (DDP: torchrun)",
    )
    add_settings(p, StudentConfig, STUDENT_FLAGS)
    p.add_argument(
        "--pseudo",
        dest="sources",
        action=_PseudoSource,
        metavar="DIR",
        help="pseudo-label maps <stem>.png: the same as --source pseudo=DIR",
    )
    add_quiet(p)
    p.set_defaults(func=run_train_student)


def run_train_student(args) -> int:
    path = train_student(settings_from_args(StudentConfig, args, STUDENT_FLAGS), progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 speaks
        print(f"checkpoint: {path}")
    return 0


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="label a directory of images with a trained student")
    add_settings(p, PredictConfig, PREDICT_FLAGS, skip=("model",))
    add_quiet(p)
    p.set_defaults(func=run_predict)


def run_predict(args) -> int:
    cfg = settings_from_args(PredictConfig, args, PREDICT_FLAGS)
    written = predict(
        cfg.student,
        cfg.images,
        cfg.out,
        batch_size=cfg.batch_size,
        device=cfg.device,
        heads=cfg.heads,
        encoder=cfg,
        progress=not args.quiet,
    )
    print(f"wrote {len(written)} label maps to {cfg.out}")
    return 0


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="pixel accuracy, mIoU, mACC, Dice of label maps against ground truth")
    p.add_argument("--pred", required=True, help="directory of predicted <stem>.png label maps")
    p.add_argument("--gt", required=True, help="directory of ground-truth <stem>.png label maps (255 = ignore)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--class-names", nargs="+")
    p.add_argument("--out", required=True, help="report.json (a Markdown table is written beside it as .md)")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args) -> int:
    result = evaluate(args.pred, args.gt, args.num_classes, args.class_names)
    out_json, out_md = write_report(result, args.out, title=f"{args.pred} vs {args.gt}")
    print(out_md.read_text(), end="")
    print(f"wrote {out_json} and {out_md}")
    return 0


def register(sub) -> None:
    add_train_student(sub)
    add_predict(sub)
    add_evaluate(sub)
