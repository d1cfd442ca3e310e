"""Multi-label CAM classifier on a backbone's feature map, and SSC's reconstruction branch.

The default backbone is SAM's frozen image encoder, read from the embedding cache: the
classifier sees ``[B, 256, g, g]`` embeddings (any SAM variant). With ``backbone`` (a
torchvision ResNet-50 body, :func:`resnet50_body`, trained end to end) it sees images and
the features are the body's last feature map (stride 32). Either way a 1x1 adapter + ReLU +
1x1 class head follow. Class activation maps are the class head applied to the adapted
features at feature resolution; the image logits are their mean over the valid
(non-padding) cells. An optional sub-class head (WeakMedSAM) reads the same features.

SSC's CAM-driven reconstruction: :class:`CamDecoder` maps the CAMs back to the image (4x
the feature grid) and :func:`perceptual_loss` compares it with the image through a frozen
VGG16 ``features`` extractor (:func:`vgg16_features`).

torchvision is needed only for the ResNet-50 backbone and the VGG16 extractor (the
``tags`` extra).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsseg_fast.errors import CheckpointError, UserError

BACKBONES = ("sam", "resnet50")
# ImageNet statistics: torchvision's ResNet-50 and VGG16 expect inputs normalised with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET_STRIDE = 32
VGG_LAYERS = 9  # VGG16 features[:9]: up to relu2_2, at half the reconstruction's resolution


class CamClassifier(nn.Module):
    """Args:
    in_channels: feature channels of the backbone (256 for SAM).
    num_classes: foreground classes (no background).
    hidden: adapter channels.
    num_subclasses: size of the sub-class head (0: none).
    backbone: a module mapping ``[B, 3, H, W]`` images to ``[B, in_channels, h, w]``
        features, trained with the heads (None: the inputs are the features).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden: int = 256,
        num_subclasses: int = 0,
        backbone: nn.Module | None = None,
    ):
        super().__init__()
        if in_channels < 1 or num_classes < 1 or hidden < 1 or num_subclasses < 0:
            raise ValueError(
                f"CamClassifier: in_channels, num_classes, hidden must be >= 1 and num_subclasses >= 0, "
                f"got {(in_channels, num_classes, hidden, num_subclasses)}"
            )
        self.in_channels, self.num_classes, self.hidden, self.num_subclasses = (
            in_channels,
            num_classes,
            hidden,
            num_subclasses,
        )
        self.adapter = nn.Conv2d(in_channels, hidden, 1)
        self.head = nn.Conv2d(hidden, num_classes, 1, bias=False)
        self.sub_head = nn.Conv2d(hidden, num_subclasses, 1, bias=False) if num_subclasses else None
        self.backbone = backbone

    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's feature map ``[B, in_channels, h, w]`` (the input itself without a backbone)."""
        expected = 3 if self.backbone is not None else self.in_channels
        if x.dim() != 4 or x.shape[1] != expected:
            what = "images" if self.backbone is not None else "features"
            raise ValueError(f"CamClassifier: {what} must be [B, {expected}, h, w], got {tuple(x.shape)}")
        return self.backbone(x.float()) if self.backbone is not None else x.float()

    def adapt(self, backbone_features: torch.Tensor) -> torch.Tensor:
        """The adapter on the backbone's features: what the heads read."""
        return F.relu(self.adapter(backbone_features))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapt(self.backbone_features(x))

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` class activation maps at feature resolution."""
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None):
        """``x`` ``[B, D, h, w]``, ``valid`` ``[B, 1, h, w]`` (1 where the image is, 0 on padding) ->
        ``(logits [B, C], sub_logits [B, K] or None, cams [B, C, h, w])``."""
        f = self.features(x)
        cams = self.head(f)
        sub = self.sub_head(f) if self.sub_head is not None else None
        return masked_mean(cams, valid), (masked_mean(sub, valid) if sub is not None else None), cams


def masked_mean(maps: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, C]`` mean over the cells where ``valid`` is 1 (all cells if None)."""
    if valid is None:
        return maps.mean((2, 3))
    return (maps * valid).sum((2, 3)) / valid.sum((2, 3)).clamp_min(1)


def cam_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    sub_logits: torch.Tensor | None = None,
    sub_targets: torch.Tensor | None = None,
    sub_weight: float = 0.5,
) -> dict:
    """BCE(parent) [+ ``sub_weight`` * BCE(child)] (WeakMedSAM); returns the terms and ``total``."""
    terms = {"bce": F.binary_cross_entropy_with_logits(logits, targets.float())}
    if sub_logits is not None and sub_targets is not None:
        terms["sub_bce"] = sub_weight * F.binary_cross_entropy_with_logits(sub_logits, sub_targets.float())
    terms["total"] = sum(terms.values())
    return terms


def valid_cells(input_size: tuple[int, int], img_size: int, grid: int) -> tuple[int, int]:
    """Feature cells ``(rows, cols)`` covering the resized image (SAM pads bottom/right)."""
    stride = img_size / grid
    return (max(1, min(grid, int(-(-input_size[0] // stride)))), max(1, min(grid, int(-(-input_size[1] // stride)))))


class CamDecoder(nn.Module):
    """SSC's CAM-driven reconstruction: CAMs ``[B, C, h, w]`` -> an image ``[B, 3, 4h, 4w]`` in
    [0, 1] (two 3x3 conv + ReLU + 2x bilinear upsampling stages, a 3x3 conv, sigmoid). Light on
    purpose: the CAMs, not the decoder, must carry the image's layout."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        if num_classes < 1 or width < 2:
            raise ValueError(f"CamDecoder: num_classes must be >= 1 and width >= 2, got {(num_classes, width)}")

        def up():
            return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

        self.net = nn.Sequential(
            nn.Conv2d(num_classes, width, 3, padding=1),
            nn.ReLU(),
            up(),
            nn.Conv2d(width, width // 2, 3, padding=1),
            nn.ReLU(),
            up(),
            nn.Conv2d(width // 2, 3, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, cams: torch.Tensor) -> torch.Tensor:
        return self.net(cams.float())


def _torchvision():
    try:
        import torchvision
    except ImportError:
        raise UserError(
            "the resnet50 backbone and the reconstruction branch need torchvision (pip install 'wsseg_fast[tags]')"
        ) from None
    return torchvision


def _read_state(path: str, argument: str) -> dict:
    """The state dict in the file ``path``; anything else is one ValueError naming ``argument``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{argument} {path}: file not found") from None
    except Exception as exc:  # pickles, truncated files: torch's reasons vary
        raise CheckpointError(f"{argument} {path}: not a torch state dict ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{argument} {path}: expected a state dict (name -> tensor)")
    return state


def _load_weights(module: nn.Module, state: dict, path: str, argument: str, what: str, skip: str = "") -> None:
    """Load ``state`` into ``module`` (keys starting with ``skip`` not needed); a state dict of
    another network is one ValueError naming ``argument``."""
    ours = {k: v for k, v in module.state_dict().items() if not (skip and k.startswith(skip))}
    missing = sorted(set(ours) - set(state))
    wrong = sorted(k for k in set(ours) & set(state) if state[k].shape != ours[k].shape)
    if missing or wrong:
        raise CheckpointError(
            f"{argument} {path}: not a state dict of {what} ({len(missing)} missing and "
            f"{len(wrong)} mis-shaped tensors, e.g. {(missing or wrong)[0]!r})"
        )
    module.load_state_dict({k: state[k] for k in ours}, strict=not skip)


def resnet50_body(weights: str | None = None) -> nn.Module:
    """torchvision's ResNet-50 without pooling and fc: ``[B, 3, H, W]`` -> ``[B, 2048, H/32, W/32]``.
    ``weights``: a torchvision ``resnet50`` state dict (its ``fc`` is not needed); None: random init."""
    net = _torchvision().models.resnet50(weights=None)
    if weights:
        _load_weights(
            net,
            _read_state(weights, "--backbone-weights"),
            weights,
            "--backbone-weights",
            "torchvision's resnet50",
            skip="fc.",
        )
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)


def vgg16_features(weights: str | None = None, layers: int = VGG_LAYERS) -> nn.Module:
    """The first ``layers`` modules of torchvision's VGG16 ``features``, frozen, in eval mode.
    ``weights``: a torchvision ``vgg16`` state dict, whole or of its ``features`` alone; None:
    random init (for tests: random features make a weak perceptual loss)."""
    vgg = _torchvision().models.vgg  # its features alone: the 100M-parameter classifier is never built
    features = vgg.make_layers(vgg.cfgs["D"])[:layers]
    if weights:
        state = _read_state(weights, "--vgg-weights")
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")} or state
        _load_weights(features, state, weights, "--vgg-weights", "torchvision's vgg16 features")
    for p in features.parameters():
        p.requires_grad_(False)
    return features.eval()


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` in [0, 1] -> normalised with the ImageNet mean and std."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def perceptual_loss(extractor: nn.Module, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSC's L_p: mean squared difference of the extractor's features of the reconstruction and of
    the target image (both ``[B, 3, H, W]`` in [0, 1], ImageNet-normalised on the way in)."""
    if reconstruction.shape != target.shape or reconstruction.dim() != 4 or reconstruction.shape[1] != 3:
        raise ValueError(
            f"perceptual_loss: reconstruction and target must both be [B, 3, H, W], "
            f"got {tuple(reconstruction.shape)} and {tuple(target.shape)}"
        )
    with torch.no_grad():
        wanted = extractor(imagenet_normalize(target.float()))
    return F.mse_loss(extractor(imagenet_normalize(reconstruction.float())), wanted)
