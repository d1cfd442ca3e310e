"""Image-tag supervision: a CAM classifier trained on cached SAM embeddings (or a ResNet-50
trained end to end), and the pseudo-label methods ``cam``, ``cam-rw`` and ``cam-sam-rw`` over it.

``train_cam`` reads only the images' ``tags`` (boxes, points and masks are ignored). With the
default ``sam`` backbone it embeds the images once through :meth:`SamEngine.embed` with the
shared :class:`~wsseg_fast.cache.EmbeddingCache` (same keys as the pseudo-label job: only
missing embeddings are encoded); with ``resnet50`` it trains torchvision's ResNet-50 with the
heads on the images resized as SAM resizes them. Then it trains
:class:`~wsseg_fast.models.cam.CamClassifier` with the switchable terms: BCE, WeakMedSAM's
sub-class BCE, SSC's superpixel alignment (beta_a) and CAM-driven reconstruction with a VGG16
perceptual loss (beta_p). An atomic ``last.pt`` per epoch, exact resume, ``log.jsonl`` of losses.
Under ``torchrun`` (``WORLD_SIZE`` > 1) it runs DDP like ``train-student`` (gloo on CPUs): each
epoch's seeded order is padded to a multiple of the world size and sharded, every rank takes
``batch_size`` of its shard per step, the logged losses are averaged over the ranks, rank 0 writes.
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
from wsseg_fast.models.cam import (
    BACKBONES,
    RESNET_STRIDE,
    CamClassifier,
    CamDecoder,
    cam_loss,
    imagenet_normalize,
    perceptual_loss,
    resnet50_body,
    valid_cells,
    vgg16_features,
)
from wsseg_fast.ops import slic, ssc_alignment_loss
from wsseg_fast.pipelines.cam_refine import background_score, grid_prompt_masks, normalize_cams, refine_cams
from wsseg_fast.pipelines.methods import Instances, MethodError, MethodInput, register_method
from wsseg_fast.pipelines.distributed import DistContext
from wsseg_fast.sam import SamEngine

CHECKPOINT_VERSION = 2  # 2: backbone weights, image size, reconstruction settings in the metadata
RESNET_CHANNELS = 2048


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
    backbone_weights: str | None = None  # resnet50: a torchvision resnet50 state dict; None: random init
    image_size: int = 256        # resnet50: longest image side fed to it (a multiple of 32)
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
    recon_weight: float = 0.0    # SSC's beta_p (1.0 in the paper); 0: no CAM-driven reconstruction
    vgg_weights: str | None = None  # torchvision vgg16 state dict for the perceptual loss; None: random (tests)
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
        features.append(emb.tensor.float())
        masks.append(cell_mask(emb.input_size, engine.img_size, emb.tensor.shape[-1]))
    return torch.stack(features), torch.stack(masks)


def cell_mask(input_size: tuple[int, int], img_size: int, grid: int) -> torch.Tensor:
    """``[1, g, g]``: 1 on the feature cells covering the resized image, 0 on the padding."""
    rows, cols = valid_cells(input_size, img_size, grid)
    valid = torch.zeros(1, grid, grid)
    valid[:, :rows, :cols] = 1
    return valid


def letterbox(image: np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 ``[H, W, 3]`` -> float ``[3, size, size]`` in [0, 1]: the longest side resized to
    ``size`` and zeros below and right (as SAM resizes and pads), and the ``(rows, cols)`` of the image."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[2:]
    scale = size / max(h, w)
    rh, rw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    out = torch.zeros(3, size, size)
    out[:, :rh, :rw] = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False)[0].clamp(0, 1)
    return out, (rh, rw)


def letterboxed(dataset, indices: list[int], size: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """:func:`letterbox` of every image: ``[N, 3, size, size]`` and their sizes."""
    pairs = [letterbox(dataset.load_image(dataset.images[i]), size) for i in indices]
    return torch.stack([p[0] for p in pairs]), [p[1] for p in pairs]


def resnet_input(image: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ResNet-50 backbone's input ``[3, size, size]`` (ImageNet-normalised, zero padding) and
    its ``[1, g, g]`` valid cells (g = size / 32)."""
    x, input_size = letterbox(image, size)
    x = imagenet_normalize(x[None])[0]
    x[:, input_size[0]:] = 0
    x[:, :, input_size[1]:] = 0
    return x, cell_mask(input_size, size, size // RESNET_STRIDE)


def image_superpixels(images: torch.Tensor, sizes: list[tuple[int, int]], n_segments: int) -> torch.Tensor:
    """``[N, s, s]`` SLIC labels of letterboxed images (-1 on the padding); computed once per
    training run, not per epoch."""
    out = torch.full(images.shape[:1] + images.shape[2:], -1, dtype=torch.int64)
    for j, (rh, rw) in enumerate(sizes):
        out[j, :rh, :rw] = slic(images[j : j + 1, :, :rh, :rw], n_segments).long()[0]
    return out


def pixel_mask(sizes: list[tuple[int, int]], size: int) -> torch.Tensor:
    """``[N, 1, size, size]``: 1 on each letterboxed image, 0 on its padding."""
    out = torch.zeros(len(sizes), 1, size, size)
    for j, (rh, rw) in enumerate(sizes):
        out[j, :, :rh, :rw] = 1
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


def _check(cfg: CamConfig) -> None:
    if cfg.backbone not in BACKBONES:
        raise CamError(f"--backbone must be one of {', '.join(BACKBONES)}, got {cfg.backbone!r}")
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise CamError(f"--epochs and --batch-size must be >= 1 and --lr > 0, got {cfg.epochs}, {cfg.batch_size}, {cfg.lr}")
    if cfg.ssc_weight < 0 or cfg.recon_weight < 0 or cfg.subclasses < 0:
        raise CamError("--ssc-weight, --recon-weight and --subclasses must be >= 0, got "
                       f"{cfg.ssc_weight}, {cfg.recon_weight}, {cfg.subclasses}")
    if cfg.backbone == "resnet50" and (cfg.image_size < RESNET_STRIDE or cfg.image_size % RESNET_STRIDE):
        raise CamError(f"--image-size must be a positive multiple of {RESNET_STRIDE}, got {cfg.image_size}")
    if cfg.backbone_weights and cfg.backbone != "resnet50":
        raise CamError("--backbone-weights is for --backbone resnet50 (the sam backbone's weights are --checkpoint)")
    if cfg.vgg_weights and not cfg.recon_weight:
        raise CamError("--vgg-weights is for the reconstruction branch: give --recon-weight too")


def _inputs(cfg: CamConfig, dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The classifier's inputs (SAM embeddings or ResNet images), their valid cells and the
    backbone's identity for the checkpoint."""
    if cfg.backbone == "sam":
        cache = EmbeddingCache(cfg.cache, dtype=cfg.cache_dtype) if cfg.cache else None
        engine = SamEngine(cfg.model, cfg.checkpoint, cache=cache)
        inputs, valid = embed_dataset(engine, dataset, indices)
        return inputs, valid, {"model": cfg.model, "weights": engine.identity["weights"], "image_size": engine.img_size}
    pairs = [resnet_input(dataset.load_image(dataset.images[i]), cfg.image_size) for i in indices]
    weights = "blake2b:" + file_digest(cfg.backbone_weights) if cfg.backbone_weights else "random"
    return (torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]),
            {"model": "resnet50", "weights": weights, "image_size": cfg.image_size})


def epoch_shard(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's indices for ``epoch``: a permutation seeded by (seed, epoch), padded by wrapping
    around to a multiple of ``world`` (as DistributedSampler pads), every ``world``-th from ``rank``."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    pad = -n % world
    order = torch.cat([order, order.repeat(pad // n + 1)[:pad]]) if pad else order
    return order[rank::world]


def train_cam(cfg: CamConfig) -> str:
    """Train the classifier; returns the path of ``last.pt``. Under torchrun, DDP (see the module)."""
    _check(cfg)
    return DistContext.run(lambda ctx: _train(cfg, ctx))


def _train(cfg: CamConfig, ctx: DistContext) -> str:
    from tqdm import tqdm

    dataset = CocoWeakDataset(cfg.coco, cfg.images)
    indices, targets = tagged_images(dataset)
    path = os.path.join(cfg.out, "last.pt")
    if os.path.exists(path) and not cfg.resume:
        raise CamError(f"{path} exists: pass --resume to continue it, or use another --out")
    say = print if ctx.rank == 0 else (lambda *a, **k: None)
    if ctx.rank == 0:
        os.makedirs(cfg.out, exist_ok=True)
    say(f"train-cam: {len(indices)} of {len(dataset)} images have tags (boxes, points and masks are ignored)"
        + (f"; DDP over {ctx.world} processes" if ctx.world > 1 else ""))
    inputs, valid, identity = _inputs(cfg, dataset, indices)
    grid = valid.shape[-1]

    torch.manual_seed(cfg.seed)
    backbone = resnet50_body(cfg.backbone_weights) if cfg.backbone == "resnet50" else None
    in_channels = RESNET_CHANNELS if backbone is not None else inputs.shape[1]
    model = CamClassifier(in_channels, dataset.num_classes - 1, cfg.hidden, targets.shape[1] * cfg.subclasses, backbone)
    decoder = CamDecoder(model.num_classes) if cfg.recon_weight else None
    vgg = vgg16_features(cfg.vgg_weights) if cfg.recon_weight else None
    vgg_identity = None
    if cfg.recon_weight:
        vgg_identity = "blake2b:" + file_digest(cfg.vgg_weights) if cfg.vgg_weights else "random"
        if not cfg.vgg_weights:
            say("train-cam: WARNING: the perceptual loss runs on a VGG16 with RANDOM weights (no --vgg-weights); "
                  "fine for tests, not for real training")

    sub_targets = superpixels = images = pixels = None
    if cfg.subclasses:
        with torch.no_grad():  # the backbone's features before training (the cached embedding for sam)
            feats = torch.cat([model.eval().backbone_features(x) for x in inputs.split(cfg.batch_size)])
        cells = F.interpolate(valid, size=feats.shape[2:], mode="nearest")
        sub_targets = subclass_targets((feats * cells).sum((2, 3)) / cells.sum((2, 3)), targets, cfg.subclasses, cfg.seed)
    if cfg.ssc_weight or cfg.recon_weight:  # the images at 4x the feature grid, once per run
        images, sizes = letterboxed(dataset, indices, 4 * grid)
        pixels = pixel_mask(sizes, 4 * grid)
        if cfg.ssc_weight:
            superpixels = image_superpixels(images, sizes, cfg.ssc_segments)

    params = list(model.parameters()) + (list(decoder.parameters()) if decoder is not None else [])
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    start = 0
    meta = {"version": CHECKPOINT_VERSION, "backbone": cfg.backbone, **identity,
            "in_channels": in_channels, "hidden": cfg.hidden,
            "num_classes": dataset.num_classes - 1, "num_subclasses": model.num_subclasses,
            "ssc_weight": cfg.ssc_weight, "ssc_segments": cfg.ssc_segments, "ssc_erode": cfg.ssc_erode,
            "recon_weight": cfg.recon_weight, "vgg_weights": vgg_identity,
            "class_names": dataset.class_names, "coco": file_digest(cfg.coco)}
    if cfg.resume and os.path.exists(path):
        state = torch.load(path, map_location="cpu", weights_only=False)
        if {k: state["meta"].get(k) for k in meta} != meta:
            raise CamError(f"{path} was trained with other settings or data; use another --out or drop --resume")
        model.load_state_dict(state["model"])
        if decoder is not None:
            decoder.load_state_dict(state["decoder"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"]
    if ctx.rank == 0:
        atomic_write_json(os.path.join(cfg.out, "train_config.json"), asdict(cfg))
    train_model, train_decoder = model, decoder
    if ctx.world > 1:  # gradients all-reduced; both start from the same seeded weights on every rank
        train_model = torch.nn.parallel.DistributedDataParallel(model)
        if decoder is not None:
            train_decoder = torch.nn.parallel.DistributedDataParallel(decoder)
    names = ["bce", "sub_bce", "ssc", "recon", "total"]
    for epoch in range(start, cfg.epochs):
        model.train()
        shard = epoch_shard(len(indices), cfg.seed, epoch, ctx.rank, ctx.world)
        sums = torch.zeros(len(names) + 1, dtype=torch.float64)  # per-term sums over images, then the image count
        bar = tqdm(shard.split(cfg.batch_size), desc=f"train-cam epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (cfg.progress and ctx.rank == 0), dynamic_ncols=True)
        for batch in bar:
            logits, sub_logits, cams = train_model(inputs[batch], valid[batch])
            terms = cam_loss(logits, targets[batch], sub_logits, sub_targets[batch] if sub_targets is not None else None)
            if superpixels is not None:
                terms["ssc"] = cfg.ssc_weight * ssc_alignment_loss(
                    F.interpolate(cams, size=superpixels.shape[1:], mode="bilinear", align_corners=False),
                    superpixels[batch], present=targets[batch], erode=cfg.ssc_erode)
            if decoder is not None:  # the padding is not the image's: both are zero there
                terms["recon"] = cfg.recon_weight * perceptual_loss(vgg, train_decoder(cams) * pixels[batch], images[batch])
            terms["total"] = terms["total"] + sum(terms[k] for k in ("ssc", "recon") if k in terms)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            sums += torch.tensor([float(terms[k].detach()) * len(batch) if k in terms else 0.0 for k in names]
                                 + [len(batch)], dtype=torch.float64)
            bar.set_postfix(loss=f"{float(terms['total'].detach()):.4f}")
        sums = ctx.all_sum(sums)
        if ctx.rank != 0:
            continue
        losses = {k: sums[i].item() / sums[-1].item() for i, k in enumerate(names) if k in terms}
        state = {"meta": meta, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1}
        if decoder is not None:
            state["decoder"] = decoder.state_dict()
        atomic_torch_save(state, path)
        record = {"epoch": epoch + 1, **losses}
        if vgg_identity == "random":
            record["vgg_weights"] = "random"
        append_jsonl(os.path.join(cfg.out, "log.jsonl"), record)
    return path


def load_cam(path: str, backbone: str | None = None, model: str | None = None) -> tuple[CamClassifier, dict]:
    """A trained classifier (eval mode) and its metadata. A checkpoint of another ``backbone``
    than the one asked for (None: any), or of a ``sam`` backbone whose SAM variant is not
    ``model``, is one CamError line."""
    if not path or not os.path.isfile(path):
        raise CamError(f"cam=PATH: checkpoint not found: {path!r} (train one with wsseg-fast train-cam)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # not a torch file at all
        raise CamError(f"{path} is not a train-cam checkpoint ({type(exc).__name__})") from None
    meta = state.get("meta") if isinstance(state, dict) else None
    if not isinstance(meta, dict) or "version" not in meta:
        raise CamError(f"{path} is not a train-cam checkpoint")
    if meta["version"] != CHECKPOINT_VERSION:
        raise CamError(f"{path} is a train-cam checkpoint of format {meta['version']}, this version reads "
                       f"{CHECKPOINT_VERSION}: train it again")
    sam_mismatch = meta["backbone"] == "sam" and model is not None and meta["model"] != model
    if (backbone is not None and meta["backbone"] != backbone) or sam_mismatch:
        wanted = f"{backbone or 'sam'} ({model})" if model else backbone
        raise CamError(f"{path} was trained on backbone {meta['backbone']} ({meta['model']}); this run uses {wanted}")
    body = resnet50_body() if meta["backbone"] == "resnet50" else None
    net = CamClassifier(meta["in_channels"], meta["num_classes"], meta["hidden"], meta["num_subclasses"], body)
    net.load_state_dict(state["model"])
    return net.eval(), meta


# --- pseudo-label methods -------------------------------------------------------------------

_LOADED: dict[tuple, tuple[CamClassifier, dict]] = {}


def _classifier(ctx: MethodInput) -> tuple[CamClassifier, dict]:
    key = (ctx.options["cam"], ctx.engine.model)
    if key not in _LOADED:
        _LOADED[key] = load_cam(ctx.options["cam"], model=ctx.engine.model)
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
