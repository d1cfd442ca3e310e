"""``make-demo``: the built-in demo dataset."""

from __future__ import annotations

from wsseg_fast.cli.common import UsageError
from wsseg_fast.data import make_demo


def add_make_demo(sub) -> None:
    p = sub.add_parser("make-demo", help="write the built-in demo dataset (images, COCO weak labels, GT masks)")
    p.add_argument("out", help="output directory")
    p.add_argument("--images", type=int, default=8, help="number of images (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_make_demo)


def run_make_demo(args) -> int:
    if args.images < 1:
        raise UsageError("--images must be >= 1")
    coco = make_demo(args.out, images=args.images, seed=args.seed)
    print(f"wrote {len(coco['images'])} images, {len(coco['annotations'])} objects of "
          f"{len(coco['categories'])} classes to {args.out} (annotations.json, images/, gt/)")
    return 0


def register(sub) -> None:
    add_make_demo(sub)
