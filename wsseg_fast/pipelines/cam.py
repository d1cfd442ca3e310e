"""Image-tag supervision: a CAM classifier trained on cached SAM embeddings, and the
pseudo-label methods ``cam``, ``cam-rw`` and ``cam-sam-rw`` over it.

``train_cam`` reads only the images' ``tags`` (boxes, points and masks are ignored),
embeds the images once through :meth:`SamEngine.embed` with the shared
:class:`~wsseg_fast.cache.EmbeddingCache` (same keys as the pseudo-label job: only
missing embeddings are encoded), then trains :class:`~wsseg_fast.models.cam.CamClassifier`
on them: an atomic ``last.pt`` per epoch, exact resume, ``log.jsonl`` of losses.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from wsseg_fast.cache import EmbeddingCache
from wsseg_fast.data import CocoWeakDataset
from wsseg_fast.io import append_jsonl, atomic_torch_save, atomic_write_json, file_digest
from wsseg_fast.models.cam import BACKBONES, CamClassifier, cam_loss, valid_cells
from wsseg_fast.ops import slic, ssc_alignment_loss
from wsseg_fast.pipelines.cam_refine import background_score, grid_prompt_masks, normalize_cams, refine_cams
from wsseg_fast.pipelines.methods import Instances, MethodError, MethodInput, register_method
from wsseg_fast.sam import SamEngine

CHECKPOINT_VERSION = 1


class CamError(MethodError):
    """A setting, dataset or checkpoint train-cam / the cam methods cannot use (one line in the CLI)."""


@dataclass
class CamConfig:
    coco: str
    out: str
    images: str | None = None
    cache: str | None = None
    cache_dtype: str = "fp16"
    model: str = "vit_b"
    checkpoint: str | None = None
    backbone: str = "sam"
    hidden: int = 256
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    resume: bool = False
    progress: bool = True
    ssc_weight: float = 0.0      # SSC's beta_a (1.0 in the paper); 0: no activation self-modulation
    ssc_segments: int = 64       # SLIC superpixels per image (at 4x the feature grid)
    ssc_erode: int = 2           # activation_modulation's erosion, in pixels of that resolution
    subclasses: int = 0          # WeakMedSAM's k (8 in the paper); 0: no sub-class head


def tagged_images(dataset) -> tuple[list[int], torch.Tensor]:
    """Indices of the images with tags and their ``[N, C]`` multi-hot targets (C = foreground classes).
    Tags outside the categories are an error; so is a dataset with no tags at all."""
    indices, rows = [], []
    for i, record in enumerate(dataset.images):
        if not record.tags:
            continue
        row = torch.zeros(dataset.num_classes - 1)
        for tag in record.tags:
            if tag not in dataset.class_index:
                raise CamError(f"image {record.file_name}: tag {tag} is not a category id "
                               f"(categories: {sorted(dataset.class_index)})")
            row[dataset.class_index[tag] - 1] = 1
        indices.append(i)
        rows.append(row)
    if not indices:
        raise CamError(f"{dataset.annotation_file}: no image has 'tags' (category ids); train-cam needs image tags")
    return indices, torch.stack(rows)


def embed_dataset(engine, dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, D, g, g]`` float32 embeddings (from the cache where present) and ``[N, 1, g, g]`` valid-cell masks."""
    features, masks = [], []
    for i in indices:
        emb = engine.embed([dataset.load_image(dataset.images[i])])[0]
        grid = emb.tensor.shape[-1]
        rows, cols = valid_cells(emb.input_size, engine.img_size, grid)
        valid = torch.zeros(1, grid, grid)
        valid[:, :rows, :cols] = 1
        features.append(emb.tensor.float())
        masks.append(valid)
    return torch.stack(features), torch.stack(masks)


def image_superpixels(dataset, indices: list[int], img_size: int, grid: int, n_segments: int) -> torch.Tensor:
    """``[N, 4g, 4g]`` SLIC labels of each image resized as SAM resizes it, at 4x the feature
    grid (-1 on SAM's padding); computed once per training run, not per epoch."""
    size = 4 * grid
    out = torch.full((len(indices), size, size), -1, dtype=torch.int64)
    for j, i in enumerate(indices):
        image = torch.from_numpy(np.ascontiguousarray(dataset.load_image(dataset.images[i]))).permute(2, 0, 1)[None]
        h, w = image.shape[2:]
        scale = size / max(h, w)
        rh, rw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
        small = F.interpolate(image.float() / 255, size=(rh, rw), mode="bilinear", align_corners=False)
        out[j, :rh, :rw] = slic(small.clamp(0, 1), n_segments).long()[0]
    return out


def subclass_targets(pooled: torch.Tensor, targets: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """WeakMedSAM's sub-class exploration: per class, k-means (scikit-learn, ``k`` clusters or
    fewer when the class has fewer positive images) on the pooled features of its positive
    images -> ``[N, C*k]`` multi-hot sub-class labels (class c's clusters are columns c*k..c*k+k-1)."""
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        raise CamError("--subclasses needs scikit-learn (pip install scikit-learn)") from None
    out = torch.zeros(len(targets), targets.shape[1] * k)
    data = pooled.double().numpy()
    for c in range(targets.shape[1]):
        rows = torch.nonzero(targets[:, c]).flatten()
        if len(rows) == 0:
            continue
        n = min(k, len(rows))
        clusters = KMeans(n_clusters=n, n_init=10, random_state=seed).fit_predict(data[rows.numpy()]) if n > 1 else np.zeros(1, int)
        out[rows, c * k + torch.as_tensor(clusters, dtype=torch.long)] = 1
    return out


def train_cam(cfg: CamConfig) -> str:
    """Train the classifier; returns the path of ``last.pt``."""
    from tqdm import tqdm


    if cfg.backbone not in BACKBONES:
        raise CamError(f"--backbone must be one of {', '.join(BACKBONES)}, got {cfg.backbone!r}")
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise CamError(f"--epochs and --batch-size must be >= 1 and --lr > 0, got {cfg.epochs}, {cfg.batch_size}, {cfg.lr}")
    dataset = CocoWeakDataset(cfg.coco, cfg.images)
    indices, targets = tagged_images(dataset)
    os.makedirs(cfg.out, exist_ok=True)
    path = os.path.join(cfg.out, "last.pt")
    cache = EmbeddingCache(cfg.cache, dtype=cfg.cache_dtype) if cfg.cache else None
    engine = SamEngine(cfg.model, cfg.checkpoint, cache=cache)
    print(f"train-cam: {len(indices)} of {len(dataset)} images have tags (boxes, points and masks are ignored)")
    features, valid = embed_dataset(engine, dataset, indices)

    sub_targets = superpixels = None
    if cfg.subclasses:
        sub_targets = subclass_targets((features * valid).sum((2, 3)) / valid.sum((2, 3)), targets, cfg.subclasses, cfg.seed)
    if cfg.ssc_weight:
        superpixels = image_superpixels(dataset, indices, engine.img_size, features.shape[-1], cfg.ssc_segments)

    torch.manual_seed(cfg.seed)
    model = CamClassifier(features.shape[1], dataset.num_classes - 1, cfg.hidden,
                          targets.shape[1] * cfg.subclasses)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start = 0
    meta = {"version": CHECKPOINT_VERSION, "backbone": cfg.backbone, "model": cfg.model,
            "weights": engine.identity["weights"], "in_channels": features.shape[1], "hidden": cfg.hidden,
            "num_classes": dataset.num_classes - 1, "num_subclasses": model.num_subclasses,
            "ssc_weight": cfg.ssc_weight, "ssc_segments": cfg.ssc_segments, "ssc_erode": cfg.ssc_erode, "class_names": dataset.class_names,
            "coco": file_digest(cfg.coco)}
    if cfg.resume and os.path.exists(path):
        state = torch.load(path, map_location="cpu", weights_only=False)
        if {k: state["meta"][k] for k in meta} != meta:
            raise CamError(f"{path} was trained with other settings or data; use another --out or drop --resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"]
    elif os.path.exists(path) and not cfg.resume:
        raise CamError(f"{path} exists: pass --resume to continue it, or use another --out")
    atomic_write_json(os.path.join(cfg.out, "train_config.json"), asdict(cfg))
    for epoch in range(start, cfg.epochs):
        order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        sums, seen = {}, 0
        bar = tqdm(order.split(cfg.batch_size), desc=f"train-cam epoch {epoch + 1}/{cfg.epochs}",
                   disable=not cfg.progress, dynamic_ncols=True)
        for batch in bar:
            logits, sub_logits, cams = model(features[batch], valid[batch])
            terms = cam_loss(logits, targets[batch], sub_logits, sub_targets[batch] if sub_targets is not None else None)
            if superpixels is not None:
                terms["ssc"] = cfg.ssc_weight * ssc_alignment_loss(
                    F.interpolate(cams, size=superpixels.shape[1:], mode="bilinear", align_corners=False),
                    superpixels[batch], present=targets[batch], erode=cfg.ssc_erode)
                terms["total"] = terms["total"] + terms["ssc"]
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(batch)
            seen += len(batch)
            bar.set_postfix(loss=f"{float(terms['total'].detach()):.4f}")
        losses = {k: v / seen for k, v in sums.items()}
        atomic_torch_save({"meta": meta, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "epoch": epoch + 1}, path)
        append_jsonl(os.path.join(cfg.out, "log.jsonl"), {"epoch": epoch + 1, **losses})
    return path


def load_cam(path: str, backbone: str = "sam", model: str | None = None) -> tuple[CamClassifier, dict]:
    """A trained classifier and its metadata; a checkpoint of another backbone or SAM variant is an error."""
    if not path or not os.path.isfile(path):
        raise CamError(f"cam=PATH: checkpoint not found: {path!r} (train one with wsseg-fast train-cam)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    meta = state.get("meta") if isinstance(state, dict) else None
    if not meta or meta.get("version") != CHECKPOINT_VERSION:
        raise CamError(f"{path} is not a train-cam checkpoint")
    if meta["backbone"] != backbone or (model is not None and meta["model"] != model):
        raise CamError(f"{path} was trained on backbone {meta['backbone']} ({meta['model']}); "
                       f"this run uses {backbone} ({model})")
    net = CamClassifier(meta["in_channels"], meta["num_classes"], meta["hidden"], meta["num_subclasses"])
    net.load_state_dict(state["model"])
    return net.eval(), meta


# --- pseudo-label methods -------------------------------------------------------------------

_LOADED: dict[tuple, tuple[CamClassifier, dict]] = {}


def _classifier(ctx: MethodInput) -> CamClassifier:
    key = (ctx.options["cam"], ctx.engine.model)
    if key not in _LOADED:
        _LOADED[key] = load_cam(ctx.options["cam"], "sam", ctx.engine.model)
    return _LOADED[key][0]


def feature_cams(ctx: MethodInput) -> tuple[torch.Tensor, torch.Tensor]:
    """The image's CAMs ``[1, C, r, c]`` and embedding ``[1, D, r, c]`` cropped to its valid cells,
    classes outside the image's tags zeroed (tags = the classes of its annotations)."""
    net = _classifier(ctx)
    emb = ctx.embedding
    x = emb.tensor.float()[None]
    rows, cols = valid_cells(emb.input_size, ctx.engine.img_size, x.shape[-1])
    with torch.no_grad():
        cams = net.cams(x)[:, :, :rows, :cols]
    keep = torch.zeros(cams.shape[1], dtype=torch.bool)
    keep[torch.as_tensor(np.unique(ctx.classes), dtype=torch.long) - 1] = True
    cams = cams * keep[None, :, None, None]
    return cams, x[:, :, :rows, :cols]


def label_from_scores(scores: torch.Tensor, classes: np.ndarray, height: int, width: int) -> Instances:
    """``[1, C+1, h, w]`` scores (channel 0 background) -> upsampled to the image, argmax.
    One instance per annotation of the job (``classes``): its class's pixels (tags say nothing
    of instances, so annotations of one class share them and the first one wins them)."""
    scores = F.interpolate(scores.float(), size=(height, width), mode="bilinear", align_corners=False)
    label = scores.argmax(1)[0].numpy()
    classes = np.asarray(classes, np.int64)
    masks = np.stack([label == c for c in classes]) if len(classes) else np.zeros((0, height, width), bool)
    return Instances(masks, classes, np.ones(len(classes)))


def cam_scores(cams: torch.Tensor, alpha: float) -> torch.Tensor:
    """Normalised CAMs with PSA's background ``(1 - max CAM)^alpha`` as channel 0."""
    cams = normalize_cams(cams)
    return torch.cat([background_score(cams, alpha), cams], 1)


CAM_OPTIONS = {"cam": "", "alpha": 16.0}
RW_OPTIONS = {**CAM_OPTIONS, "radius": 5, "beta": 8.0, "steps": 256}


@register_method("cam", needs_sam=True, options=CAM_OPTIONS)
def cam_method(ctx: MethodInput) -> Instances:
    """Tags only: CAMs of a train-cam classifier (cam=PATH), background (1 - max CAM)^alpha, argmax."""
    cams, _ = feature_cams(ctx)
    h, w = ctx.image.shape[:2]
    cams = F.interpolate(cams, size=(h, w), mode="bilinear", align_corners=False)
    return label_from_scores(cam_scores(cams, ctx.options["alpha"]), ctx.classes, h, w)


@register_method("cam-rw", needs_sam=True, options=RW_OPTIONS)
def cam_rw(ctx: MethodInput) -> Instances:
    """Tags only: CAMs refined by the sparse random walk on local_affinity of the SAM embedding."""
    cams, features = feature_cams(ctx)
    o = ctx.options
    scores, _ = refine_cams(cams, features, source_kind="features", radius=int(o["radius"]), beta=o["beta"],
                            steps=int(o["steps"]), alpha=o["alpha"])
    return label_from_scores(scores, ctx.classes, *ctx.image.shape[:2])


@register_method("cam-sam-rw", needs_sam=True, options={**RW_OPTIONS, "points_per_side": 16, "size": 64})
def cam_sam_rw(ctx: MethodInput) -> Instances:
    """Tags only: CAMs walked on WeakMedSAM's prompt affinity (grid point prompts through SAM's decoder -> mask_affinity)."""
    cams, _ = feature_cams(ctx)
    o = ctx.options
    h, w = ctx.image.shape[:2]
    scale = min(1.0, int(o["size"]) / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    with torch.no_grad():
        masks = grid_prompt_masks(ctx.engine.sam, ctx.embedding.tensor.float()[None], (h, w), int(o["points_per_side"]))
    masks = F.interpolate(masks[None], size=size, mode="bilinear", align_corners=False)
    cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
    scores, _ = refine_cams(cams, masks, source_kind="masks", radius=int(o["radius"]), beta=o["beta"],
                            steps=int(o["steps"]), alpha=o["alpha"])
    return label_from_scores(scores, ctx.classes, h, w)
