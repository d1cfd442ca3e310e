"""Stage 2: ``train-student``, ``predict`` and ``evaluate``."""

from __future__ import annotations

import os

from wsseg_fast.cli.common import UsageError, add_config, name_value, save_config
from wsseg_fast.pipelines.evaluate import evaluate, write_report
from wsseg_fast.pipelines.student import StudentConfig, predict, train_student


def add_train_student(sub) -> None:
    p = sub.add_parser("train-student", help="train the prompt-free U-Net student on label maps (torchrun for DDP)")
    p.add_argument("--images", required=True, help="directory of training images")
    p.add_argument("--pseudo", help="directory of pseudo-label maps <stem>.png (the head 'pseudo')")
    p.add_argument("--source", action="append", default=[], metavar="NAME=DIR",
                   help="another supervision source for --arch multihead, e.g. gt=DIR, box=DIR, cam=DIR (repeatable)")
    p.add_argument("--arch", choices=("unet", "multihead"), default="unet")
    p.add_argument("--gt-fraction", type=float, help="multihead: use the gt labels of only this fraction of the images")
    p.add_argument("--loss-weight", action="append", default=[], metavar="NAME=W", help="multihead: a head's loss weight (default 1)")
    p.add_argument("--final-fraction", type=float, default=0.2, help="multihead: last fraction of epochs training only the primary head")
    p.add_argument("--class-balance", type=float, default=0.0,
                   help="class-balanced cross-entropy: class c weighs freq_c ** -A (0: plain; 0.5 helps thin, rare classes)")
    p.add_argument("--num-classes", type=int, help="classes incl. background (default: 1 + the largest label)")
    p.add_argument("--class-names", nargs="+")
    p.add_argument("--out", required=True, help="checkpoint directory (writes last.pt every epoch)")
    p.add_argument("--size", type=int, default=128, help="training resolution (square)")
    p.add_argument("--widths", default="16,32,64,128", help="U-Net channel widths per level")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="mixed precision (auto: bf16/fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--no-flip", action="store_true", help="no horizontal-flip augmentation")
    p.add_argument("--device", help="default: the local GPU if any, else cpu")
    p.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    p.add_argument("--val-images", help="held-out images scored after every epoch (needs --val-gt)")
    p.add_argument("--val-gt", help="their label maps")
    p.add_argument("--no-progress", action="store_true")
    add_config(p)
    p.set_defaults(func=run_train_student)


def run_train_student(args) -> int:
    sources = {"pseudo": args.pseudo} if args.pseudo else {}
    for text in args.source:
        name, directory = name_value(text, "--source")
        if name in sources:
            raise UsageError(f"source {name!r} given twice")
        sources[name] = directory
    try:
        weights = {name: float(w) for name, w in (name_value(t, "--loss-weight") for t in args.loss_weight)}
        widths = tuple(int(w) for w in args.widths.split(","))
    except ValueError as exc:
        raise UsageError(f"--loss-weight / --widths: {exc}") from None
    config = StudentConfig(
        images=args.images, sources=sources, out=args.out, arch=args.arch, gt_fraction=args.gt_fraction,
        loss_weights=weights, final_fraction=args.final_fraction, class_balance=args.class_balance,
        num_classes=args.num_classes,
        class_names=args.class_names, size=args.size, widths=widths, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, workers=args.workers, amp=args.amp, flip=not args.no_flip, device=args.device,
        resume=args.resume, progress=not args.no_progress, val_images=args.val_images, val_labels=args.val_gt,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        save_config(args, args.out)
    try:
        path = train_student(config)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 speaks
        print(f"checkpoint: {path}")
    return 0


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="label a directory of images with a trained student")
    p.add_argument("--checkpoint", required=True, help="last.pt (or its directory) from train-student")
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True, help="directory for <stem>.png label maps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device")
    p.set_defaults(func=run_predict)


def run_predict(args) -> int:
    try:
        written = predict(args.checkpoint, args.images, args.out, batch_size=args.batch_size, device=args.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {len(written)} label maps to {args.out}")
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
    try:
        result = evaluate(args.pred, args.gt, args.num_classes, args.class_names)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out_json, out_md = write_report(result, args.out, title=f"{args.pred} vs {args.gt}")
    print(out_md.read_text(), end="")
    print(f"wrote {out_json} and {out_md}")
    return 0


def register(sub) -> None:
    add_train_student(sub)
    add_predict(sub)
    add_evaluate(sub)
