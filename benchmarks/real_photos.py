"""Pseudo-label quality on real photos: every box-supervised method, and what each step of
``logic-refine`` adds, on a dataset converted by ``wsseg-fast make-weak``.

    wsseg-fast make-weak CamVid camvid-weak/val --split val     # CamVid as in the SegNet tutorial
    OMP_NUM_THREADS=1 python benchmarks/real_photos.py camvid-weak/val --out benchmarks/results/real_photos

Writes ``real_photos.json`` and ``real_photos.md`` (mIoU, per-class IoU, seconds per image)
into ``--out``. Each row is one run of the pseudo-labelling job (one thread), scored
against the dataset's ``gt/``. The dataset itself is never written into the repository.
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
from wsseg_fast.pipelines.methods import parse_options
from wsseg_fast.pipelines.pseudo_label import JobConfig, run_pseudo_label

# name -> (method, options, refine)
ROWS = {
    "box": ("box", {}, None),
    "grabcut": ("grabcut", {}, None),
    "grabcut (20-pixel crop)": ("grabcut", {"margin": 20}, None),
    "box + crf": ("box", {}, "crf"),
    "sbr (tiny SAM, random weights)": ("sbr", {}, None),
    "logic-refine": ("logic-refine", {}, None),
    "logic-refine + crf": ("logic-refine", {}, "crf"),
    # ablations: one step of logic-refine changed at a time
    "- colour": ("logic-refine", {"colour_weight": 0.0}, None),
    "- box tightness": ("logic-refine", {"box_weight": 0.0}, None),
    "- seeds": ("logic-refine", {"seed_weight": 0.0, "keep_seeded": False}, None),
    "- keep seeded parts": ("logic-refine", {"keep_seeded": False}, None),
    "- border prior": ("logic-refine", {"border": 0.0}, None),
    "- box prior": ("logic-refine", {"prior": 0.0}, None),
    "colour from seeds only": ("logic-refine", {"object_colour": "seeds"}, None),
    "colour from box and seeds": ("logic-refine", {"object_colour": "both"}, None),
    "+ a second round (colours refit to the mask)": ("logic-refine", {"rounds": 2}, None),
    "+ pairwise colour prior": ("logic-refine", {"pairwise_weight": 1.0}, None),
    "+ superpixels (400)": ("logic-refine", {"superpixels": 400}, None),
    # colour models (Gaussian mixtures, the whole image as the surroundings) and the graph-cut finish
    "+ gmm colours": ("logic-refine", {"colour_model": "gmm"}, None),
    "+ gmm colours (3 components)": ("logic-refine", {"colour_model": "gmm", "components": 3}, None),
    "+ gmm colours (8 components)": ("logic-refine", {"colour_model": "gmm", "components": 8}, None),
    "+ gmm colours, unmixed": ("logic-refine", {"colour_model": "gmm", "unmix": True}, None),
    "+ whole image around": ("logic-refine", {"colour_ring": -1}, None),
    "+ gmm colours, unmixed, whole image around": (
        "logic-refine",
        {"colour_model": "gmm", "unmix": True, "colour_ring": -1},
        None,
    ),
    "+ graph-cut finish": ("logic-refine", {"finish": "graphcut"}, None),
    "+ graph-cut finish (cut_weight 3)": ("logic-refine", {"finish": "graphcut", "cut_weight": 3.0}, None),
    "+ gmm colours, graph-cut finish": ("logic-refine", {"colour_model": "gmm", "finish": "graphcut"}, None),
    # class priors: the option holds the YAML text here; the run writes it to a file
    "+ one class per pixel": ("logic-refine", {"priors": "one_class_per_pixel: true\n"}, None),
    "+ things exclude each other": ("logic-refine", {"priors": "excludes: THINGS\n"}, None),
}


def run_row(data: Path, out: Path, name: str, method: str, options: dict, refine: str | None) -> dict:
    row_out = out / "".join(c if c.isalnum() else "_" for c in name)
    shutil.rmtree(row_out, ignore_errors=True)  # time a fresh run, never a resumed one
    run_options = dict(options)
    if "priors" in options:  # the YAML text -> a file; THINGS = every pair of the dataset's classes
        names = [c["name"] for c in json.loads((data / "annotations.json").read_text())["categories"]]
        pairs = [[a, b] for i, a in enumerate(names) for b in names[i + 1 :]]
        run_options["priors"] = str(out / f"{row_out.name}.yaml")
        atomic_write_text(run_options["priors"], options["priors"].replace("THINGS", json.dumps(pairs)))
    pairs = [f"{k}={v}" for k, v in run_options.items()]
    cfg = JobConfig(
        coco=str(data / "annotations.json"),
        out=str(row_out),
        images=str(data / "images"),
        method=method,
        options=parse_options(method, pairs),
        model="tiny",
        cache=None,
        gt=str(data / "gt"),
        threads=1,
        refine=refine,
        overwrite=True,
    )
    start = time.perf_counter()
    summary = run_pseudo_label(cfg, progress=False)
    seconds = time.perf_counter() - start
    report = summary["report"]
    return {
        "name": name,
        "method": method,
        "options": options,
        "refine": refine,
        "miou": report["miou"],
        "per_class": {k: v["iou"] for k, v in report["per_class"].items()},
        "images": summary["labelled"],
        "seconds_per_image": summary["run"]["labelling_seconds"] / max(1, summary["labelled"]),
        "wall_seconds": seconds,
    }


def markdown(rows: list[dict], data: str) -> str:
    classes = list(rows[0]["per_class"])
    box = next((r["miou"] for r in rows if r["name"] == "box"), None)
    lines = [
        f"# Pseudo-labels on real photos: {data}",
        "",
        f"{rows[0]['images']} images, 1 CPU thread; mIoU over background and the things; "
        "s/img = the job's labelling time per image.",
        "",
        "| row | mIoU | vs box | " + " | ".join(classes) + " | s/img |",
        "|---|---|---|" + "---|" * len(classes) + "---|",
    ]
    for r in rows:
        delta = f"{100 * (r['miou'] - box):+.1f}" if box is not None else ""
        lines.append(
            f"| {r['name']} | {100 * r['miou']:.1f} | {delta} | "
            + " | ".join(f"{100 * r['per_class'][c]:.1f}" for c in classes)
            + f" | {r['seconds_per_image']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a dataset written by `wsseg-fast make-weak` (annotations.json, images/, gt/)")
    parser.add_argument("--out", default="benchmarks/results/real_photos", help="where the tables go")
    parser.add_argument("--work", default=None, help="where the pseudo-labels go (default: a temporary directory)")
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), metavar="ROW", help="rows to run (default: all)")
    parser.add_argument("--limit", type=int, help="only the first N images (a quick look; not for the tables)")
    parser.add_argument("--every", type=int, default=1, help="only every K-th image (a subset spread over the split)")
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not (data / "annotations.json").is_file() or not (data / "gt").is_dir():
        print(f"{data}: expected annotations.json and gt/ (write them with `wsseg-fast make-weak`)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    work = Path(args.work or os.path.join("/tmp", "wsseg-real-photos"))
    if args.limit or args.every > 1:  # a subset: a COCO file with every K-th of the first N images
        coco = json.loads((data / "annotations.json").read_text())
        keep = {im["id"] for im in coco["images"][: args.limit][:: args.every]}
        coco["images"] = [im for im in coco["images"] if im["id"] in keep]
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
        atomic_write_json(work / "subset" / "annotations.json", coco)
        for sub in ("images", "gt"):
            link = work / "subset" / sub
            if not link.exists():
                link.symlink_to((data / sub).resolve())
        data = work / "subset"
    rows = []
    for name in args.rows or list(ROWS):
        method, options, refine = ROWS[name]
        rows.append(run_row(data, work, name, method, options, refine))
        print(f"{name}: mIoU {100 * rows[-1]['miou']:.1f}, {rows[-1]['seconds_per_image']:.2f} s/img", flush=True)
    out = Path(args.out)
    subset = {"limit": args.limit, "every": args.every}
    atomic_write_json(out / "real_photos.json", {"data": str(args.data), **subset, "rows": rows})
    atomic_write_text(out / "real_photos.md", markdown(rows, str(args.data)))
    print(markdown(rows, str(args.data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
