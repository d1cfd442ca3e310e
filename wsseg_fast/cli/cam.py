"""Image tags: ``train-cam`` (the CAM classifier for the cam, cam-rw and cam-sam-rw pseudo-label methods)."""

from __future__ import annotations

from wsseg_fast.cli.common import add_quiet
from wsseg_fast.cli.settings import add_settings, settings_from_args
from wsseg_fast.pipelines.cam import CamConfig, train_cam


def register(sub) -> None:
    p = sub.add_parser(
        "train-cam", help="train a multi-label CAM classifier from image tags (cached SAM embeddings or ResNet-50)"
    )
    add_settings(p, CamConfig)
    add_quiet(p)
    p.set_defaults(func=run_train_cam)


def run_train_cam(args) -> int:
    print(f"checkpoint: {train_cam(settings_from_args(CamConfig, args), progress=not args.quiet)}")
    return 0
