"""Data commands: ``make-demo`` (the built-in demo dataset) and ``make-weak`` (weak labels
from a dataset's dense masks)."""

from __future__ import annotations

from pathlib import Path

from wsseg_fast.cli.common import UsageError
from wsseg_fast.data import make_demo
from wsseg_fast.data.weak import CAMVID_THINGS, LAYOUTS, make_weak_from_coco, make_weak_from_layout


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
    print(
        f"wrote {len(coco['images'])} images, {len(coco['annotations'])} objects of "
        f"{len(coco['categories'])} classes to {args.out} (annotations.json, images/, gt/)"
    )
    return 0


def add_make_weak(sub) -> None:
    p = sub.add_parser("make-weak", help="weak labels (boxes, points, scribbles, tags) from a dataset's dense masks")
    p.add_argument("source", help="dataset folder (a --layout), or a COCO JSON with segmentation (--layout coco)")
    p.add_argument("out", help="output directory: annotations.json, images/, gt/")
    p.add_argument("--layout", default="camvid", choices=(*LAYOUTS, "coco"))
    p.add_argument("--split", help="camvid/voc: the split (train, val, test)")
    p.add_argument("--images", help="coco: the image directory (default: images/ beside the JSON)")
    p.add_argument(
        "--things",
        nargs="+",
        default=None,
        help="classes to label, by name or value, or 'all' (camvid default: pole sign car pedestrian bicyclist)",
    )
    p.add_argument("--class-names", nargs="+", help="generic: the class names in label-value order")
    p.add_argument("--void", type=int, help="label value marking void pixels (camvid: 11, voc: 255)")
    p.add_argument(
        "--min-area",
        type=int,
        default=64,
        help="smallest instance that gets weak labels (px); smaller ones become ignore",
    )
    p.add_argument("--points", type=int, default=1, help="points per instance (the deepest first)")
    p.add_argument(
        "--scribble",
        choices=("short", "skeleton"),
        default="short",
        help="one short stroke (default) or the whole skeleton as strokes",
    )
    p.add_argument("--limit", type=int, help="convert only the first N images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_make_weak)


def run_make_weak(args) -> int:
    options = dict(min_area=args.min_area, points=args.points, scribble=args.scribble, seed=args.seed)
    things = args.things or (CAMVID_THINGS if args.layout == "camvid" else "all")
    if args.layout == "coco":
        images = args.images or str(Path(args.source).parent / "images")
        summary = make_weak_from_coco(args.out, args.source, images, things, **options)
    else:
        summary = make_weak_from_layout(
            args.out,
            args.source,
            args.layout,
            things,
            split=args.split,
            class_names=args.class_names,
            void=args.void,
            limit=args.limit,
            **options,
        )
    print(
        f"wrote {summary['images']} images, {summary['instances']} instances of {', '.join(summary['categories'])} "
        f"to {args.out} ({summary['too_small']} instances under --min-area marked ignore)"
    )
    return 0


def register(sub) -> None:
    add_make_demo(sub)
    add_make_weak(sub)
