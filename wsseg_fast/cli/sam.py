"""SAM commands: ``export-encoder``, ``pretrain-sam`` and stage 1 ``finetune``."""

from __future__ import annotations

import os
import tempfile

from wsseg_fast.cli.common import UsageError, add_config, name_value, save_config
from wsseg_fast.data import DataError
from wsseg_fast.logic.priors import PriorsError
from wsseg_fast.pipelines.finetune import (
    TRAINABLE,
    FinetuneConfig,
    FinetuneError,
    finetune,
)
from wsseg_fast.pipelines.pretrain import LOSS_RESOLUTIONS, LR_SCHEDULES, PretrainConfig, PretrainError, pretrain_sam
from wsseg_fast.sam import (
    CheckpointError,
    EncoderBackendError,
    build_image_encoder,
    export_onnx,
    export_tensorrt,
)
from wsseg_fast.sam.encoder import import_tensorrt
from wsseg_fast.sam.model import MODEL_CONFIGS


def add_export_encoder(sub) -> None:
    p = sub.add_parser("export-encoder", help="export SAM's image encoder to ONNX or a TensorRT engine")
    p.add_argument("--model", default="vit_b", choices=sorted(MODEL_CONFIGS))
    p.add_argument("--checkpoint", help="SAM checkpoint (none: random weights)")
    p.add_argument("--format", default="onnx", choices=("onnx", "tensorrt"))
    p.add_argument("--out", required=True, help="output file (.onnx or .engine)")
    p.add_argument("--onnx", help="tensorrt: build from this ONNX file instead of exporting first")
    p.add_argument("--fp16", action="store_true", help="tensorrt: allow fp16 kernels")
    p.set_defaults(func=run_export_encoder)


def run_export_encoder(args) -> int:
    try:
        if args.format == "onnx":
            export_onnx(build_image_encoder(args.model, args.checkpoint), args.out)
        else:
            onnx_path = args.onnx
            if onnx_path is None:
                import_tensorrt()  # fail before the slow export when TensorRT cannot run here
                onnx_path = os.path.join(tempfile.mkdtemp(prefix="wsseg-fast-"), "encoder.onnx")
                export_onnx(build_image_encoder(args.model, args.checkpoint), onnx_path)
            export_tensorrt(onnx_path, args.out, fp16=args.fp16)
    except (CheckpointError, EncoderBackendError) as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB)")
    return 0


def add_finetune(sub) -> None:
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
    p.add_argument("--distill", type=float, default=0.0,
                   help="weight of a cross-entropy to the un-fine-tuned SAM's masks: keeps what it knows (default 0: off)")
    p.add_argument("--cache", help="embedding cache directory (frozen encoder)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")
    add_config(p)
    p.set_defaults(func=run_finetune)


def run_finetune(args) -> int:
    try:
        weights = {name: float(w) for name, w in (name_value(t, "--weight") for t in args.weight)}
    except ValueError as exc:
        raise UsageError(f"--weight: {exc}") from None
    cfg = FinetuneConfig(coco=args.coco, images=args.images, out=args.out, model=args.model, checkpoint=args.checkpoint,
                         priors=args.priors, train=args.train, epochs=args.epochs, lr=args.lr, seed=args.seed,
                         weights=weights, cache=args.cache, device=args.device, threads=args.threads,
                         loss_scale=args.loss_scale, p_exists=args.p_exists, distill=args.distill)
    save_config(args, args.out)
    try:
        path = finetune(cfg, progress=not args.quiet)
    except (DataError, FinetuneError, PriorsError, CheckpointError) as exc:
        raise UsageError(str(exc)) from None
    print(f"fine-tuned weights: {path} (use: wsseg-fast pseudo-label --method sbr --finetuned {path} ...)")
    return 0


def add_pretrain_sam(sub) -> None:
    p = sub.add_parser("pretrain-sam", help="promptable, class-agnostic training of SAM from dense instance masks")
    p.add_argument("--coco", required=True, help="COCO JSON whose annotations have a `segmentation` (instances)")
    p.add_argument("--images", help="image directory (default: images/ beside the JSON)")
    p.add_argument("--model", default="tiny", choices=sorted(MODEL_CONFIGS))
    p.add_argument("--checkpoint", help="weights to start from, e.g. an official SAM (none: seeded random weights)")
    p.add_argument("--out", required=True, help="output directory (sam.pth, last.pt, log.jsonl); re-running resumes")
    d = PretrainConfig(coco="", out="")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="constant (default), or cosine from --lr to 0 over --epochs (resuming then needs the same --epochs)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per step (default {d.batch_size})")
    p.add_argument("--max-instances", type=int, default=d.max_instances,
                   help=f"instances prompted per image and step (default {d.max_instances})")
    p.add_argument("--box-fraction", type=float, default=d.box_fraction,
                   help=f"share of instances prompted by a jittered box, the rest by a point (default {d.box_fraction})")
    p.add_argument("--clicks", type=int, default=d.clicks, help=f"corrective clicks per instance (default {d.clicks})")
    p.add_argument("--hflip", action="store_true", help="mirror images left-right at random (augmentation)")
    p.add_argument("--zoom", type=float, default=d.zoom,
                   help="share of images per step shown zoomed on one of their small instances, as "
                        "`sam-box zoom=true` decodes small boxes (default 0)")
    p.add_argument("--loss-resolution", choices=LOSS_RESOLUTIONS, default=d.loss_resolution,
                   help="mask losses on the logits upsampled to the input frame (default), or at the decoder's "
                        "low resolution against each mask's share of its pixels (thin things vanish there)")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default=d.amp,
                   help="mixed precision (default auto: bf16/fp16 on CUDA, fp32 on CPU; bf16 pays on CPUs with AMX)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")
    add_config(p)
    p.set_defaults(func=run_pretrain_sam)


def run_pretrain_sam(args) -> int:
    cfg = PretrainConfig(coco=args.coco, images=args.images, out=args.out, model=args.model, checkpoint=args.checkpoint,
                         epochs=args.epochs, lr=args.lr, lr_schedule=args.lr_schedule, batch_size=args.batch_size,
                         max_instances=args.max_instances, box_fraction=args.box_fraction, clicks=args.clicks,
                         hflip=args.hflip, zoom=args.zoom, loss_resolution=args.loss_resolution, amp=args.amp, seed=args.seed,
                         device=args.device, threads=args.threads)
    save_config(args, args.out)
    try:
        path = pretrain_sam(cfg, progress=not args.quiet)
    except (DataError, PretrainError, CheckpointError) as exc:
        raise UsageError(str(exc)) from None
    print(f"SAM weights: {path} (use: --model {args.model} --checkpoint {path})")
    return 0


def register(sub) -> None:
    add_export_encoder(sub)
    add_pretrain_sam(sub)
    add_finetune(sub)
