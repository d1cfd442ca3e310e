"""SAM (segment-anything 1.0) for the pipelines: building models and loading
checkpoints, the image encoder on several backends, and prompting many objects
of one image in one batched decoder call from a (cached) embedding."""

from wsseg_fast.sam.encoder import (
    BACKENDS,
    EncoderBackendError,
    ImageEncoderRunner,
    export_onnx,
    export_tensorrt,
)
from wsseg_fast.sam.engine import SamEngine
from wsseg_fast.sam.model import (
    MODEL_CONFIGS,
    CheckpointError,
    build_image_encoder,
    build_sam,
    load_finetuned,
)
from wsseg_fast.sam.prompting import (
    Embedding,
    MaskPrediction,
    predict_masks,
    preprocess,
)

__all__ = [
    "BACKENDS",
    "MODEL_CONFIGS",
    "CheckpointError",
    "Embedding",
    "EncoderBackendError",
    "ImageEncoderRunner",
    "MaskPrediction",
    "SamEngine",
    "build_image_encoder",
    "build_sam",
    "export_onnx",
    "export_tensorrt",
    "load_finetuned",
    "predict_masks",
    "preprocess",
]
