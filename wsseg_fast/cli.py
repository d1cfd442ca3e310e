"""The ``wsseg-fast`` command (also ``python -m wsseg_fast``).

Each subcommand is an ``add_<name>(subparsers)`` function below that registers
its parser and sets ``func``; ``main`` dispatches. Errors a user can fix exit
with status 2 and one clear line, not a traceback.
"""

from __future__ import annotations

import argparse
import json
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


# --- SAM engine, embedding cache, demo data and the pseudo-labelling job (issue 6) ---------------


def _size(text: str) -> int:
    """'500M', '2G', '1024' -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("B")
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 500M, 2G)") from None


def _default_cache() -> str:
    import os

    return os.environ.get("WSSEG_FAST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "wsseg_fast")


def add_make_demo(sub) -> None:
    p = sub.add_parser("make-demo", help="write the built-in demo dataset (images, COCO weak labels, GT masks)")
    p.add_argument("out", help="output directory")
    p.add_argument("--images", type=int, default=8, help="number of images (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_make_demo)


def run_make_demo(args) -> int:
    from wsseg_fast.data import make_demo

    if args.images < 1:
        raise UsageError("--images must be >= 1")
    coco = make_demo(args.out, images=args.images, seed=args.seed)
    print(f"wrote {len(coco['images'])} images, {len(coco['annotations'])} objects of "
          f"{len(coco['categories'])} classes to {args.out} (annotations.json, images/, gt/)")
    return 0


def add_pseudo_label(sub) -> None:
    from wsseg_fast.sam.encoder import BACKENDS
    from wsseg_fast.sam.model import MODEL_CONFIGS

    p = sub.add_parser("pseudo-label", help="pseudo-label a COCO dataset from its weak labels with SAM (resumable)")
    p.add_argument("--coco", required=True, help="COCO JSON with the weak annotations")
    p.add_argument("--images", help="image directory (default: images/ beside the JSON)")
    p.add_argument("--out", required=True, help="output directory (re-running resumes)")
    p.add_argument("--method", default="sam-box", help="sam-box (default), sam-point, box, ... (see --list-methods)")
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE", help="a method setting (repeatable)")
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
    import json
    import os

    from wsseg_fast.pipelines.methods import METHODS, parse_options

    if args.list_methods:
        for name, m in sorted(METHODS.items()):
            opts = ", ".join(f"{k}={v}" for k, v in m.options.items()) or "no options"
            print(f"{name:10s} {m.help} [{opts}]")
        return 0
    from wsseg_fast.data import DataError
    from wsseg_fast.pipelines.pseudo_label import JobConfig, JobError, run_pseudo_label as run
    from wsseg_fast.sam import CheckpointError, EncoderBackendError

    try:
        options = parse_options(args.method, args.method_option)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    cfg = JobConfig(
        coco=args.coco, out=args.out, images=args.images, method=args.method, options=options, model=args.model,
        checkpoint=args.checkpoint, finetuned=args.finetuned, backend=args.backend, encoder_file=args.encoder_file,
        precision=args.precision, cache=None if args.no_cache else (args.cache or _default_cache()),
        cache_dtype=args.cache_dtype, device=args.device, batch_size=args.batch_size, visualize=args.visualize,
        gt=args.gt, threads=args.threads,
    )
    if args.checkpoint is None and METHODS[args.method].needs_sam:
        print(f"note: no --checkpoint: SAM {args.model} has random weights; the masks only exercise the pipeline",
              file=sys.stderr)
    try:
        summary = run(cfg, executor=args.executor, ray_address=args.ray_address, workers=args.workers,
                      overwrite=args.overwrite, progress=not args.quiet)
    except (DataError, JobError, CheckpointError, EncoderBackendError) as exc:
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


def add_cache(sub) -> None:
    p = sub.add_parser("cache", help="the embedding cache: info, verify, prune")
    p.add_argument("action", choices=("info", "verify", "prune"))
    p.add_argument("--cache", default=None, help="cache directory (default: $WSSEG_FAST_CACHE or ~/.cache/wsseg_fast)")
    p.add_argument("--max-size", type=_size, help="prune: remove least recently used entries down to this size (e.g. 2G)")
    p.add_argument("--older-than", type=float, help="prune: remove entries not used for this many days")
    p.add_argument("--keep-corrupt", action="store_true", help="verify: report corrupt entries without removing them")
    p.set_defaults(func=run_cache)


def run_cache(args) -> int:
    import os

    from wsseg_fast.cache import EmbeddingCache

    root = args.cache or _default_cache()
    if not os.path.isdir(root):
        raise UsageError(f"no cache at {root}")
    cache = EmbeddingCache(root)
    if args.action == "info":
        info = cache.info()
        print(f"cache {info['root']}: {info['entries']} embeddings, {info['bytes'] / 2**20:.1f} MiB"
              + (f", {info['temporary_files']} temporary files" if info["temporary_files"] else ""))
        return 0
    if args.action == "verify":
        result = cache.verify(remove=not args.keep_corrupt)
        for bad in result["corrupt"]:
            print(f"corrupt: {bad['path']}: {bad['problem']}" + ("" if args.keep_corrupt else " (removed)"))
        print(f"{result['ok']} entries ok, {len(result['corrupt'])} corrupt")
        return 0 if not result["corrupt"] else 1
    if args.max_size is None and args.older_than is None:
        raise UsageError("prune needs --max-size and/or --older-than")
    result = cache.prune(max_bytes=args.max_size, older_than=None if args.older_than is None else args.older_than * 86400)
    print(f"removed {result['removed']} entries ({result['freed_bytes'] / 2**20:.1f} MiB); "
          f"{result['bytes'] / 2**20:.1f} MiB left")
    return 0


def add_export_encoder(sub) -> None:
    from wsseg_fast.sam.model import MODEL_CONFIGS

    p = sub.add_parser("export-encoder", help="export SAM's image encoder to ONNX or a TensorRT engine")
    p.add_argument("--model", default="vit_b", choices=sorted(MODEL_CONFIGS))
    p.add_argument("--checkpoint", help="SAM checkpoint (none: random weights)")
    p.add_argument("--format", default="onnx", choices=("onnx", "tensorrt"))
    p.add_argument("--out", required=True, help="output file (.onnx or .engine)")
    p.add_argument("--onnx", help="tensorrt: build from this ONNX file instead of exporting first")
    p.add_argument("--fp16", action="store_true", help="tensorrt: allow fp16 kernels")
    p.set_defaults(func=run_export_encoder)


def run_export_encoder(args) -> int:
    import os
    import tempfile

    from wsseg_fast.sam import CheckpointError, EncoderBackendError, build_image_encoder, export_onnx, export_tensorrt

    try:
        if args.format == "onnx":
            export_onnx(build_image_encoder(args.model, args.checkpoint), args.out)
        else:
            onnx_path = args.onnx
            if onnx_path is None:
                from wsseg_fast.sam.encoder import _import_tensorrt

                _import_tensorrt()  # fail before the slow export when TensorRT cannot run here
                onnx_path = os.path.join(tempfile.mkdtemp(prefix="wsseg-fast-"), "encoder.onnx")
                export_onnx(build_image_encoder(args.model, args.checkpoint), onnx_path)
            export_tensorrt(onnx_path, args.out, fp16=args.fp16)
    except (CheckpointError, EncoderBackendError) as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB)")
    return 0


# --- Stage 2: the prompt-free student (train-student, predict, evaluate) ---------------


def _name_value(text: str, option: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise UsageError(f"{option} expects NAME=VALUE, got {text!r}")
    return name, value


def add_finetune(sub) -> None:
    from wsseg_fast.pipelines.finetune import TRAINABLE
    from wsseg_fast.sam.model import MODEL_CONFIGS

    p = sub.add_parser("finetune", help="stage 1: fine-tune SAM under fuzzy-logic constraints from the weak labels")
    p.add_argument("--coco", required=True, help="COCO JSON with the weak annotations")
    p.add_argument("--images", help="image directory (default: images/ beside the JSON)")
    p.add_argument("--model", default="tiny", choices=sorted(MODEL_CONFIGS))
    p.add_argument("--checkpoint", help="SAM checkpoint to start from (none: seeded random weights)")
    p.add_argument("--priors", help="YAML priors: containment, exclusion, one_class_per_pixel, pairwise")
    p.add_argument("--train", default="decoder", choices=sorted(TRAINABLE),
                   help="what trains: the mask decoder (default), + the prompt encoder, or all (tiny)")
    p.add_argument("--out", required=True, help="output directory (finetuned.pth, last.pt, log.jsonl); re-running resumes")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weight", action="append", default=[], metavar="KIND=W", help="a constraint kind's weight in SatAgg")
    p.add_argument("--loss-scale", type=float, default=0.5, help="evaluate the constraints on the image scaled by this (default 0.5)")
    p.add_argument("--p-exists", type=float, default=8.0, help="exponent of the existential quantifier (default 8: close to max)")
    p.add_argument("--cache", help="embedding cache directory (frozen encoder)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_finetune)


def run_finetune(args) -> int:
    from wsseg_fast.data import DataError
    from wsseg_fast.pipelines.finetune import FinetuneConfig, FinetuneError, finetune
    from wsseg_fast.sam import CheckpointError

    try:
        weights = {name: float(w) for name, w in (_name_value(t, "--weight") for t in args.weight)}
    except ValueError as exc:
        raise UsageError(f"--weight: {exc}") from None
    cfg = FinetuneConfig(coco=args.coco, images=args.images, out=args.out, model=args.model, checkpoint=args.checkpoint,
                         priors=args.priors, train=args.train, epochs=args.epochs, lr=args.lr, seed=args.seed,
                         weights=weights, cache=args.cache, device=args.device, threads=args.threads,
                         loss_scale=args.loss_scale, p_exists=args.p_exists)
    try:
        path = finetune(cfg, progress=not args.quiet)
    except (DataError, FinetuneError, CheckpointError) as exc:
        raise UsageError(str(exc)) from None
    print(f"fine-tuned weights: {path} (use: wsseg-fast pseudo-label --method sbr --finetuned {path} ...)")
    return 0


def add_experiment(sub) -> None:
    from wsseg_fast.pipelines.experiment import DemoExperimentConfig

    p = sub.add_parser("experiment", help="run both stages on the built-in demo and write a comparison table")
    p.add_argument("name", choices=("demo",), help="the experiment (demo: tiny SAM on the built-in demo dataset)")
    p.add_argument("--out", default="experiment-demo", help="output directory (default experiment-demo); re-running resumes")
    p.add_argument("--train-images", type=int, default=24)
    p.add_argument("--test-images", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--finetune-epochs", type=int, default=DemoExperimentConfig.finetune_epochs)
    p.add_argument("--student-epochs", type=int, default=DemoExperimentConfig.student_epochs)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_experiment)


def run_experiment(args) -> int:
    from wsseg_fast.pipelines.experiment import DemoExperimentConfig, run_demo_experiment

    for name in ("train_images", "test_images", "finetune_epochs", "student_epochs"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    cfg = DemoExperimentConfig(out=args.out, train_images=args.train_images, test_images=args.test_images, seed=args.seed,
                               finetune_epochs=args.finetune_epochs, student_epochs=args.student_epochs,
                               threads=args.threads)
    report = run_demo_experiment(cfg, progress=not args.quiet)
    if args.quiet:
        print(json.dumps({r["name"]: round(r["miou"], 4) for r in report["rows"]}))
    print(f"wrote {args.out}/report.json, report.md, report.png")
    return 0


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
        loss_weights=weights, final_fraction=args.final_fraction, class_balance=args.class_balance,
        num_classes=args.num_classes,
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
    for add in (add_info, add_ops_demo, add_make_demo, add_pseudo_label, add_cache, add_export_encoder,
                add_finetune, add_experiment, add_train_student, add_predict, add_evaluate):
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
