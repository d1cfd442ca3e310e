"""``pseudo-label``: the resumable pseudo-labelling job."""

from __future__ import annotations

import json
import os
import sys

from wsseg_fast.cli.common import UsageError, default_cache
from wsseg_fast.data import DataError
from wsseg_fast.pipelines.methods import METHODS, MethodError, parse_options
from wsseg_fast.pipelines.pseudo_label import JobConfig, JobError
from wsseg_fast.pipelines.pseudo_label import run_pseudo_label as run
from wsseg_fast.sam import CheckpointError, EncoderBackendError
from wsseg_fast.sam.encoder import BACKENDS
from wsseg_fast.sam.model import MODEL_CONFIGS


def add_pseudo_label(sub) -> None:
    p = sub.add_parser("pseudo-label", help="pseudo-label a COCO dataset from its weak labels with SAM (resumable)")
    p.add_argument("--coco", help="COCO JSON with the weak annotations (required)")
    p.add_argument("--images", help="image directory (default: images/ beside the JSON)")
    p.add_argument("--out", help="output directory, re-running resumes (required)")
    p.add_argument("--method", default="sam-box", help="sam-box (default), sam-point, box, ... (see --list-methods)")
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE", help="a method setting (repeatable)")
    p.add_argument("--prompter", metavar="CKPT", help="--method prompter: the trained prompter (prompter.pt from train-prompter)")
    p.add_argument("--refine", choices=("crf",), help="refine every label map after the method: crf = dense CRF (mean field)")
    p.add_argument("--list-methods", action="store_true", help="print the methods and their options, then exit")
    p.add_argument("--model", default="vit_b", choices=sorted(MODEL_CONFIGS))
    p.add_argument("--checkpoint", help="SAM checkpoint (e.g. sam_vit_b_01ec64.pth); none: random weights (pipeline test only)")
    p.add_argument("--finetuned", help="a fine-tuned mask-decoder state dict loaded over the checkpoint's decoder")
    p.add_argument("--backend", default="torch", choices=BACKENDS, help="image-encoder backend")
    p.add_argument("--encoder-file", help="exported encoder for onnxruntime/tensorrt (default: exported into the cache once)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="encoder compute precision")
    p.add_argument("--cache", default=None, help="embedding cache directory (default: $WSSEG_FAST_CACHE or ~/.cache/wsseg_fast)")
    p.add_argument("--no-cache", action="store_true", help="always encode, store nothing")
    p.add_argument("--cache-dtype", default="fp16", choices=("fp16", "fp32"), help="how embeddings are stored")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=1, help="images per encoder batch")
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    p.add_argument("--executor", default="local", choices=("local", "ray"))
    p.add_argument("--ray-address", help="Ray cluster address (default: start Ray locally)")
    p.add_argument("--workers", type=int, help="Ray workers (default: the CPUs Ray sees)")
    p.add_argument("--gt", help="ground-truth label PNG directory (<stem>.png) for the report (default: COCO segmentation)")
    p.add_argument("--visualize", action="store_true", help="also write overlays to OUT/vis/")
    p.add_argument("--overwrite", action="store_true", help="discard outputs in --out made with other settings (same settings: resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_pseudo_label)


def run_pseudo_label(args) -> int:
    if args.list_methods:
        for name, m in sorted(METHODS.items()):
            opts = ", ".join(f"{k}={v}" for k, v in m.options.items()) or "no options"
            print(f"{name:10s} {m.help} [{opts}]")
        return 0
    missing = [flag for flag in ("--coco", "--out") if getattr(args, flag[2:]) is None]
    if missing:
        raise UsageError(f"the following arguments are required: {', '.join(missing)}")
    pairs = list(args.method_option)
    if args.prompter is not None:  # the same setting as --method-option checkpoint=, named
        if args.method != "prompter":
            raise UsageError(f"--prompter goes with --method prompter, not --method {args.method}")
        if any(pair.startswith("checkpoint=") for pair in pairs):
            raise UsageError("give the prompter once: --prompter CKPT or --method-option checkpoint=CKPT")
        pairs.append(f"checkpoint={args.prompter}")
    try:
        options = parse_options(args.method, pairs)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    cfg = JobConfig(
        coco=args.coco, out=args.out, images=args.images, method=args.method, options=options, model=args.model,
        checkpoint=args.checkpoint, finetuned=args.finetuned, backend=args.backend, encoder_file=args.encoder_file,
        precision=args.precision, cache=None if args.no_cache else (args.cache or default_cache()),
        cache_dtype=args.cache_dtype, device=args.device, batch_size=args.batch_size, visualize=args.visualize,
        gt=args.gt, threads=args.threads, refine=args.refine,
    )
    if args.checkpoint is None and METHODS[args.method].needs_sam:
        print(f"note: no --checkpoint: SAM {args.model} has random weights; the masks only exercise the pipeline",
              file=sys.stderr)
    try:
        summary = run(cfg, executor=args.executor, ray_address=args.ray_address, workers=args.workers,
                      overwrite=args.overwrite, progress=not args.quiet)
    except (DataError, JobError, MethodError, CheckpointError, EncoderBackendError) as exc:
        raise UsageError(str(exc)) from None
    r = summary["run"]
    print(f"{summary['labelled']} images labelled in {args.out} ({r['images_labelled']} this run, "
          f"{r['images_skipped_as_done']} already done, {r['images_failed']} failed) in {r['seconds']:.2f} s; "
          f"embeddings: {r['cache_hits']} from the cache, {r['encoded']} encoded")
    for failure in summary["failed"]:
        print(f"  failed: {failure['file_name']}: {failure['error']}", file=sys.stderr)
    if summary["report"] is not None:
        with open(os.path.join(args.out, "report.md")) as f:
            print(f.read(), end="")
    elif args.quiet:
        print(json.dumps(r))
    return 0 if not summary["failed"] else 3


def register(sub) -> None:
    add_pseudo_label(sub)
