"""SAM for the pipelines, SAM 1 (segment-anything) and SAM 2.1 (Meta's ``sam2``) behind one
interface: building models by name and loading checkpoints (:mod:`~.registry`), the image encoder on
several backends and its export (:mod:`~.encoder`), the engine that caches every image's features
(:mod:`~.engine`), and prompting many objects of one image in one decoder call (:mod:`~.prompting`)."""

from wsseg_fast.errors import CheckpointError
from wsseg_fast.sam.encoder import (
    BACKENDS,
    EncoderBackendError,
    ImageEncoderRunner,
    export_onnx,
    export_tensorrt,
)
from wsseg_fast.sam.engine import SamEngine
from wsseg_fast.sam.model import MODEL_CONFIGS, build_sam
from wsseg_fast.sam.prompting import Embedding, MaskPrediction, predict_masks
from wsseg_fast.sam.registry import (
    MODELS,
    SamModel,
    available_models,
    build_image_encoder,
    build_model,
    load_finetuned,
)

__all__ = [
    "BACKENDS",
    "MODELS",
    "MODEL_CONFIGS",
    "CheckpointError",
    "Embedding",
    "EncoderBackendError",
    "ImageEncoderRunner",
    "MaskPrediction",
    "SamEngine",
    "SamModel",
    "available_models",
    "build_image_encoder",
    "build_model",
    "build_sam",
    "export_onnx",
    "export_tensorrt",
    "load_finetuned",
    "predict_masks",
]
