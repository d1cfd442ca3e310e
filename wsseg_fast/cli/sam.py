"""SAM commands: ``export-encoder``, ``pretrain-sam`` and stage 1 ``finetune``."""

from __future__ import annotations

import os
import tempfile

from wsseg_fast.cli.common import add_quiet
from wsseg_fast.cli.settings import add_settings, settings_from_args
from wsseg_fast.pipelines.finetune import FinetuneConfig, finetune
from wsseg_fast.pipelines.pretrain import PretrainConfig, pretrain_sam
from wsseg_fast.sam import build_image_encoder, export_onnx, export_tensorrt
from wsseg_fast.sam.encoder import import_tensorrt
from wsseg_fast.sam.registry import MODELS

FINETUNE_FLAGS = {"weights": "--weight"}


def add_export_encoder(sub) -> None:
    p = sub.add_parser("export-encoder", help="export SAM's image encoder to ONNX or a TensorRT engine")
    p.add_argument("--model", default="vit_b", choices=MODELS)
    p.add_argument("--checkpoint", help="SAM checkpoint (none: random weights)")
    p.add_argument("--format", default="onnx", choices=("onnx", "tensorrt"))
    p.add_argument("--out", required=True, help="output file (.onnx or .engine)")
    p.add_argument("--onnx", help="tensorrt: build from this ONNX file instead of exporting first")
    p.add_argument("--fp16", action="store_true", help="tensorrt: allow fp16 kernels")
    p.set_defaults(func=run_export_encoder)


def run_export_encoder(args) -> int:
    if args.format == "onnx":
        export_onnx(build_image_encoder(args.model, args.checkpoint), args.out)
    else:
        onnx_path = args.onnx
        if onnx_path is None:
            import_tensorrt()  # fail before the slow export when TensorRT cannot run here
            onnx_path = os.path.join(tempfile.mkdtemp(prefix="wsseg-fast-"), "encoder.onnx")
            export_onnx(build_image_encoder(args.model, args.checkpoint), onnx_path)
        export_tensorrt(onnx_path, args.out, fp16=args.fp16)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB)")
    return 0


def add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="stage 1: fine-tune SAM under fuzzy-logic constraints from the weak labels")
    add_settings(p, FinetuneConfig, FINETUNE_FLAGS)
    add_quiet(p)
    p.set_defaults(func=run_finetune)


def run_finetune(args) -> int:
    path = finetune(settings_from_args(FinetuneConfig, args, FINETUNE_FLAGS), progress=not args.quiet)
    print(f"fine-tuned weights: {path} (use: wsseg-fast pseudo-label --method sbr --finetuned {path} ...)")
    return 0


def add_pretrain_sam(sub) -> None:
    p = sub.add_parser("pretrain-sam", help="promptable, class-agnostic training of SAM from dense instance masks")
    add_settings(p, PretrainConfig)
    add_quiet(p)
    p.set_defaults(func=run_pretrain_sam)


def run_pretrain_sam(args) -> int:
    config = settings_from_args(PretrainConfig, args)
    path = pretrain_sam(config, progress=not args.quiet)
    print(f"SAM weights: {path} (use: --model {config.model} --checkpoint {path})")
    return 0


def register(sub) -> None:
    add_export_encoder(sub)
    add_pretrain_sam(sub)
    add_finetune(sub)
