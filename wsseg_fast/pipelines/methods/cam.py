"""Image tags only: ``cam`` (the CAMs of a ``train-cam`` classifier), ``cam-rw`` (refined by
the sparse random walk on the SAM embedding's affinity) and ``cam-sam-rw`` (walked on WeakMedSAM's
prompt affinity: SAM masks of a grid of point prompts)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from wsseg_fast.models.cam import CamClassifier
from wsseg_fast.pipelines.cam.data import cell_mask, resnet_input
from wsseg_fast.pipelines.cam.load import load_cam
from wsseg_fast.pipelines.cam_refine import background_score, grid_prompt_masks, normalize_cams, refine_cams
from wsseg_fast.pipelines.methods.base import Instances, MethodInput, register_method

_LOADED: dict[tuple, tuple[CamClassifier, dict]] = {}


def _classifier(ctx: MethodInput) -> tuple[CamClassifier, dict]:
    key = (ctx.options["cam"], ctx.engine.name)
    if key not in _LOADED:
        _LOADED[key] = load_cam(ctx.options["cam"], model=ctx.engine.name)
    return _LOADED[key]


def feature_cams(ctx: MethodInput) -> tuple[torch.Tensor, torch.Tensor]:
    """The image's CAMs ``[1, C, r, c]`` and backbone features ``[1, D, r, c]`` (the SAM
    embedding, or ResNet-50's last feature map) cropped to its valid cells, classes outside
    the image's tags zeroed (tags = the classes of its annotations)."""
    net, meta = _classifier(ctx)
    if meta["backbone"] == "sam":
        x = ctx.embedding.tensor.float()[None]
        valid = cell_mask(ctx.embedding.input_size, ctx.engine.img_size, x.shape[-1])
    else:
        x, valid = resnet_input(ctx.image, meta["image_size"])
        x = x[None]
    rows, cols = int(valid[0, :, 0].sum()), int(valid[0, 0].sum())
    with torch.no_grad():
        features = net.backbone_features(x)
        cams = net.head(net.adapt(features))[:, :, :rows, :cols]
    keep = torch.zeros(cams.shape[1], dtype=torch.bool)
    keep[torch.as_tensor(np.unique(ctx.classes), dtype=torch.long) - 1] = True
    cams = cams * keep[None, :, None, None]
    return cams, features[:, :, :rows, :cols]


def label_from_scores(scores: torch.Tensor, classes: np.ndarray, height: int, width: int) -> Instances:
    """``[1, C+1, h, w]`` scores in [0, 1] (channel 0 background) -> upsampled to the image, argmax.
    One instance per annotation of the job (``classes``): its class's pixels (tags say nothing
    of instances, so annotations of one class share them and the first one wins them). The
    upsampled scores are the soft map the job saves."""
    scores = F.interpolate(scores.float(), size=(height, width), mode="bilinear", align_corners=False)
    label = scores.argmax(1)[0].numpy()
    classes = np.asarray(classes, np.int64)
    masks = np.stack([label == c for c in classes]) if len(classes) else np.zeros((0, height, width), bool)
    return Instances(masks, classes, np.ones(len(classes)), class_scores=scores[0].clamp(0, 1).numpy())


def cam_scores(cams: torch.Tensor, alpha: float) -> torch.Tensor:
    """Normalised CAMs with PSA's background ``(1 - max CAM)^alpha`` as channel 0."""
    cams = normalize_cams(cams)
    return torch.cat([background_score(cams, alpha), cams], 1)


CAM_OPTIONS = {"cam": "", "alpha": 16.0}
RW_OPTIONS = {**CAM_OPTIONS, "radius": 5, "beta": 8.0, "steps": 256}


@register_method("cam", needs_sam=True, options=CAM_OPTIONS, files=("cam",))
def cam_method(ctx: MethodInput) -> Instances:
    """Tags only: CAMs of a train-cam classifier (cam=PATH), background (1 - max CAM)^alpha, argmax."""
    cams, _ = feature_cams(ctx)
    h, w = ctx.image.shape[:2]
    cams = F.interpolate(cams, size=(h, w), mode="bilinear", align_corners=False)
    return label_from_scores(cam_scores(cams, ctx.options["alpha"]), ctx.classes, h, w)


@register_method("cam-rw", needs_sam=True, options=RW_OPTIONS, files=("cam",))
def cam_rw(ctx: MethodInput) -> Instances:
    """Tags only: CAMs refined by the sparse random walk on local_affinity of the SAM embedding."""
    cams, features = feature_cams(ctx)
    o = ctx.options
    scores, _ = refine_cams(
        cams,
        features,
        source_kind="features",
        radius=int(o["radius"]),
        beta=o["beta"],
        steps=int(o["steps"]),
        alpha=o["alpha"],
    )
    return label_from_scores(scores, ctx.classes, *ctx.image.shape[:2])


@register_method(
    "cam-sam-rw", needs_sam=True, options={**RW_OPTIONS, "points_per_side": 16, "size": 64}, files=("cam",)
)
def cam_sam_rw(ctx: MethodInput) -> Instances:
    """Tags only: CAMs walked on WeakMedSAM's prompt affinity (grid point prompts through SAM's decoder ->
    mask_affinity)."""
    cams, _ = feature_cams(ctx)
    o = ctx.options
    h, w = ctx.image.shape[:2]
    scale = min(1.0, int(o["size"]) / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    with torch.no_grad():
        masks = grid_prompt_masks(ctx.engine.model, ctx.embedding, int(o["points_per_side"]))
    masks = F.interpolate(masks[None], size=size, mode="bilinear", align_corners=False)
    cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
    scores, _ = refine_cams(
        cams,
        masks,
        source_kind="masks",
        radius=int(o["radius"]),
        beta=o["beta"],
        steps=int(o["steps"]),
        alpha=o["alpha"],
    )
    return label_from_scores(scores, ctx.classes, h, w)
