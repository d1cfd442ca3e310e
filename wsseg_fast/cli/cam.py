"""Image tags: ``train-cam`` (the CAM classifier for the cam, cam-rw and cam-sam-rw pseudo-label methods)."""

from __future__ import annotations

from wsseg_fast.cli.common import UsageError, add_config, default_cache, save_config
from wsseg_fast.pipelines.cam import BACKBONES, CamConfig, train_cam


def register(sub) -> None:
    p = sub.add_parser("train-cam", help="train a multi-label CAM classifier from image tags (cached SAM embeddings or ResNet-50)")
    p.add_argument("--coco", required=True, help="COCO JSON whose images carry 'tags' (only tags are read)")
    p.add_argument("--images", help="image directory (default: beside the JSON)")
    p.add_argument("--cache", default=default_cache(), help="embedding cache directory (shared with pseudo-label)")
    p.add_argument("--no-cache", action="store_true", help="encode without reading or filling a cache")
    p.add_argument("--out", required=True, help="checkpoint directory (writes last.pt every epoch)")
    p.add_argument("--model", default="vit_b", help="SAM variant of the embeddings")
    p.add_argument("--checkpoint", help="SAM weights (default: the variant's random/initial weights)")
    p.add_argument("--backbone", choices=BACKBONES, default="sam",
                   help="sam: the frozen SAM encoder's cached embeddings; resnet50: torchvision's ResNet-50 trained end to end")
    p.add_argument("--backbone-weights", help="resnet50: a torchvision resnet50 state dict (default: random init)")
    p.add_argument("--image-size", type=int, default=256, help="resnet50: longest image side it sees (multiple of 32)")
    p.add_argument("--hidden", type=int, default=256, help="adapter channels")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ssc-weight", type=float, default=0.0,
                   help="SSC activation self-modulation: weight of the superpixel alignment loss (paper: 1; 0 = off)")
    p.add_argument("--ssc-segments", type=int, default=64, help="SLIC superpixels per image (computed once)")
    p.add_argument("--ssc-erode", type=int, default=2, help="erosion of the modulation target, pixels at 4x the feature grid")
    p.add_argument("--recon-weight", type=float, default=0.0,
                   help="SSC CAM-driven reconstruction: weight of the VGG16 perceptual loss (paper: 1; 0 = off)")
    p.add_argument("--vgg-weights", help="torchvision vgg16 state dict for the perceptual loss (without it: random "
                                         "weights, for tests only; the run warns)")
    p.add_argument("--subclasses", type=int, default=0,
                   help="WeakMedSAM sub-classes: k-means clusters per class (paper: 8; 0 = off; needs scikit-learn)")
    p.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    p.add_argument("--no-progress", action="store_true")
    add_config(p)
    p.set_defaults(func=run_train_cam)


def run_train_cam(args) -> int:
    config = CamConfig(coco=args.coco, out=args.out, images=args.images, cache=None if args.no_cache else args.cache,
                       model=args.model, checkpoint=args.checkpoint, backbone=args.backbone,
                       backbone_weights=args.backbone_weights, image_size=args.image_size, hidden=args.hidden,
                       epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, resume=args.resume,
                       progress=not args.no_progress, ssc_weight=args.ssc_weight,
                       ssc_segments=args.ssc_segments, ssc_erode=args.ssc_erode,
                       recon_weight=args.recon_weight, vgg_weights=args.vgg_weights, subclasses=args.subclasses)
    try:
        path = train_cam(config)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    save_config(args, args.out)
    print(f"checkpoint: {path}")
    return 0
