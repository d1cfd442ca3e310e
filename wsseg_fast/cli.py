"""The ``wsseg-fast`` command (also ``python -m wsseg_fast``).

Each subcommand is an ``add_<name>(subparsers)`` function below that registers
its parser and sets ``func``; ``main`` dispatches. Errors a user can fix exit
with status 2 and one clear line, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def add_info(sub) -> None:
    p = sub.add_parser("info", help="versions, the compiled extension, and which backend runs each op here")
    p.add_argument("--device", default="cpu", help="device to check the backends for (default: cpu)")
    p.set_defaults(func=run_info)


def run_info(args) -> int:
    import torch

    import wsseg_fast
    from wsseg_fast import _native
    from wsseg_fast.ops import OP_SPECS, available_backends

    print(f"wsseg_fast {wsseg_fast.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"{torch.get_num_threads()} CPU threads, GPU: {torch.cuda.is_available()}")
    print(f"compiled extension: {'loaded' if _native.LOAD_ERROR is None else 'NOT loaded: ' + _native.LOAD_ERROR}")
    for op in sorted(OP_SPECS):
        print(f"\n{op}:")
        for backend, status in available_backends(op, args.device).items():
            print(f"  {backend:7s} {status}")
    return 0


def add_ops_demo(sub) -> None:
    p = sub.add_parser("ops-demo", help="a small end-to-end run of the ops: WPS-SAM set matching and loss")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--queries", type=int, default=25)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_ops_demo)


def run_ops_demo(args) -> int:
    """Random prompter outputs and targets -> batched matching -> loss -> backward,
    with the per-image SciPy matcher as the check and the baseline."""
    import torch

    from wsseg_fast.matching import HungarianMatcher, PromptSetCriterion
    from wsseg_fast.reference.matching import match_per_image

    if args.batch < 1 or args.queries < 1 or args.classes < 1:
        raise UsageError("--batch, --queries and --classes must be >= 1")
    g = torch.Generator().manual_seed(args.seed)
    logits = torch.randn(args.batch, args.queries, args.classes + 1, generator=g, requires_grad=True)
    prompts = torch.randn(args.batch, args.queries, 2, 256, generator=g, requires_grad=True)
    targets = []
    for _ in range(args.batch):
        n = int(torch.randint(1, args.queries + 1, (1,), generator=g))
        targets.append({"labels": torch.randint(0, args.classes, (n,), generator=g),
                        "prompts": torch.randn(n, 2, 256, generator=g)})
    outputs = {"pred_logits": logits, "pred_prompts": prompts}
    matcher = HungarianMatcher()
    criterion = PromptSetCriterion(args.classes, matcher)

    def best_of_5(fn):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
        return result, min(times)

    pairs, batched = best_of_5(lambda: matcher(outputs, targets))
    reference, looped = best_of_5(lambda: match_per_image(outputs, targets))

    with torch.no_grad():
        cost = [matcher.cost_matrix(logits[b : b + 1], prompts[b : b + 1], t["labels"][None], t["prompts"][None])[0]
                for b, t in enumerate(targets)]
    ours = sum(float(c[q, t].sum()) for c, (q, t) in zip(cost, pairs))
    theirs = sum(float(c[q, t].sum()) for c, (q, t) in zip(cost, reference))
    losses = criterion(outputs, targets)
    losses["loss"].backward()
    losses = {k: float(v.detach()) for k, v in losses.items() if k.startswith("loss")}
    print(f"matched {sum(len(q) for q, _ in pairs)} query/target pairs over {args.batch} images")
    print(f"total matching cost: batched {ours:.6f}, per-image SciPy {theirs:.6f}")
    print(f"matching time: batched {batched * 1e3:.2f} ms, per-image SciPy loop {looped * 1e3:.2f} ms")
    print(f"loss {losses['loss']:.4f} (cls {losses['loss_cls']:.4f}, reg {losses['loss_reg']:.4f}); "
          f"grad norms: logits {float(logits.grad.norm()):.4f}, prompts {float(prompts.grad.norm()):.4f}")
    if abs(ours - theirs) > 1e-4 * max(1.0, abs(theirs)):
        print("error: the batched matching is not optimal", file=sys.stderr)
        return 1
    return 0


# --- Stage 2: the prompt-free student (train-student, predict, evaluate) ---------------


def _name_value(text: str, option: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise UsageError(f"{option} expects NAME=VALUE, got {text!r}")
    return name, value


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
    p.set_defaults(func=run_train_student)


def run_train_student(args) -> int:
    import os

    from wsseg_fast.pipelines.student import StudentConfig, train_student

    sources = {"pseudo": args.pseudo} if args.pseudo else {}
    for text in args.source:
        name, directory = _name_value(text, "--source")
        if name in sources:
            raise UsageError(f"source {name!r} given twice")
        sources[name] = directory
    try:
        weights = {name: float(w) for name, w in (_name_value(t, "--loss-weight") for t in args.loss_weight)}
        widths = tuple(int(w) for w in args.widths.split(","))
    except ValueError as exc:
        raise UsageError(f"--loss-weight / --widths: {exc}") from None
    config = StudentConfig(
        images=args.images, sources=sources, out=args.out, arch=args.arch, gt_fraction=args.gt_fraction,
        loss_weights=weights, final_fraction=args.final_fraction, num_classes=args.num_classes,
        class_names=args.class_names, size=args.size, widths=widths, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, workers=args.workers, amp=args.amp, flip=not args.no_flip, device=args.device,
        resume=args.resume, progress=not args.no_progress, val_images=args.val_images, val_labels=args.val_gt,
    )
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
    from wsseg_fast.pipelines.student import predict

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
    from wsseg_fast.pipelines.evaluate import evaluate, write_report

    try:
        result = evaluate(args.pred, args.gt, args.num_classes, args.class_names)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out_json, out_md = write_report(result, args.out, title=f"{args.pred} vs {args.gt}")
    print(out_md.read_text(), end="")
    print(f"wrote {out_json} and {out_md}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsseg-fast", description="Weakly-supervised segmentation with SAM, fast.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_info, add_ops_demo, add_train_student, add_predict, add_evaluate):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"wsseg-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wsseg-fast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
