"""Image tags: the CAM classifier -- its data, training (``wsseg-fast train-cam``) and checkpoint
reading. Its pseudo-label methods are in :mod:`wsseg_fast.pipelines.methods.cam`."""

from wsseg_fast.pipelines.cam.data import (
    cell_mask,
    embed_dataset,
    image_superpixels,
    letterbox,
    letterboxed,
    pixel_mask,
    resnet_input,
    subclass_targets,
    tagged_images,
)
from wsseg_fast.pipelines.cam.load import load_cam
from wsseg_fast.pipelines.cam.train import CamConfig, train_cam

__all__ = [
    "CamConfig",
    "cell_mask",
    "embed_dataset",
    "image_superpixels",
    "letterbox",
    "letterboxed",
    "load_cam",
    "pixel_mask",
    "resnet_input",
    "subclass_targets",
    "tagged_images",
    "train_cam",
]
