"""SamEngine: SAM for the jobs — embeddings through the cache, prompts in batches.

The image encoder (the expensive part) is built only when an embedding is missing
from the cache, so a warm run loads just the prompt encoder and mask decoder.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from wsseg_fast.cache import STORAGE_DTYPES, pixels_digest
from wsseg_fast.errors import UserError
from wsseg_fast.sam.encoder import (
    BACKENDS,
    EncoderBackendError,
    ImageEncoderRunner,
    export_onnx,
)
from wsseg_fast.sam.prompting import Embedding, MaskPrediction, decode_tokens, encode_boxes, predict_masks
from wsseg_fast.sam.registry import (
    build_image_encoder,
    build_model,
    check_name,
    finetuned_has_encoder,
    load_finetuned,
    model_weights_id,
)


@dataclass
class EngineStats:
    cache_hits: int = 0
    encoded: int = 0

    def __str__(self) -> str:
        return f"embeddings: {self.cache_hits} from the cache, {self.encoded} encoded"


class MissingEmbeddingError(UserError):
    """An engine told not to encode (``encode=False``) lacks a cached embedding."""


class SamEngine:
    """SAM ready for a job.

    Args:
        model: a name of :data:`wsseg_fast.sam.registry.MODELS`: SAM 1 (``vit_b | vit_l | vit_h | tiny |
            small``) or SAM 2.1 (``sam2.1_hiera_t | _s | _b+ | _l``).
        checkpoint: the user's SAM checkpoint (``None``: seeded random weights).
        backend: image-encoder backend (:data:`wsseg_fast.sam.encoder.BACKENDS`).
        encoder_file: an exported ONNX file / TensorRT engine for those backends.
        cache: an :class:`~wsseg_fast.cache.EmbeddingCache`, or ``None`` to always encode.
        finetuned: weights from ``wsseg-fast finetune``: a mask decoder (and prompt encoder)
            loaded over the checkpoint's, or a whole fine-tuned SAM used instead of it.
        precision: encoder compute precision (``fp32`` | ``bf16`` | ``fp16``).
        device: where the models run.
        encode: encode the images the cache lacks; ``False``: raise :class:`MissingEmbeddingError`
            instead (a stage that must only read what an earlier one stored).
    """

    def __init__(
        self,
        model: str = "vit_b",
        checkpoint: str | None = None,
        *,
        backend: str = "torch",
        encoder_file: str | None = None,
        cache=None,
        finetuned: str | None = None,
        precision: str = "fp32",
        device: str = "cpu",
        encode: bool = True,
    ):
        check_name(model)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if finetuned is not None and finetuned_has_encoder(model, finetuned):
            checkpoint, finetuned = finetuned, None  # the encoder was fine-tuned too: a whole model
        self.name, self.checkpoint, self.backend = model, checkpoint, backend
        self.encoder_file, self.cache, self.precision, self.encode = encoder_file, cache, precision, encode
        if not encode and cache is None:
            raise ValueError("SamEngine: encode=False needs a cache to read the embeddings from")
        self.device = torch.device(device)
        if encoder_file is not None and not os.path.isfile(encoder_file):
            raise EncoderBackendError(f"encoder file not found: {encoder_file}")
        self.model = build_model(model, checkpoint, with_encoder=False).to(self.device)
        if finetuned is not None:
            load_finetuned(self.model, finetuned)
        self.img_size = self.model.img_size
        if checkpoint is not None and cache is not None and os.path.isfile(checkpoint):
            weights = "blake2b:" + cache.file_digest(checkpoint)
        else:
            weights = model_weights_id(model, checkpoint)
        # What makes an embedding: everything here goes into the cache key.
        self.identity = {
            "model": model,
            "weights": weights,
            "backend": backend,
            "precision": precision,
            "preprocessing": self.model.preprocessing_id,
        }
        if encoder_file is not None:  # a user's exported file may hold other weights than the checkpoint
            self.identity["encoder_file"] = cache.file_digest(encoder_file) if cache is not None else encoder_file
        self._runner: ImageEncoderRunner | None = None
        self.stats = EngineStats()

    @property
    def encoder(self) -> ImageEncoderRunner:
        """The image encoder on the chosen backend, built on first use."""
        if self._runner is None:
            model_file = self.encoder_file
            if self.backend == "onnxruntime" and model_file is None and self.cache is not None:
                model_file = self._export_into_cache()
            if model_file is not None and self.backend in ("onnxruntime", "tensorrt"):
                module = _SizeOnly(self.img_size)  # the file holds the weights
            else:
                module = build_image_encoder(self.name, self.checkpoint)
            self._runner = ImageEncoderRunner(
                module, self.backend, model_file=model_file, precision=self.precision, device=self.device
            )
        return self._runner

    def _export_into_cache(self) -> str:
        """Export the ONNX encoder once per encoder identity, beside the embeddings."""
        tag = hashlib.blake2b(json.dumps(self.identity, sort_keys=True).encode(), digest_size=10).hexdigest()
        path = os.path.join(self.cache.root, "encoders", f"{self.name}-{tag}.onnx")
        if not os.path.exists(path):
            export_onnx(build_image_encoder(self.name, self.checkpoint), path)
        return path

    def key(self, image: np.ndarray) -> str | None:
        """The cache key of an RGB ``uint8`` image's embedding under this engine (``None``: no cache)."""
        return self.cache.key(pixels_digest(image), self.identity) if self.cache is not None else None

    def embed(
        self, images: list[np.ndarray], batch_size: int = 1, keys: list[str | None] | None = None
    ) -> list[Embedding]:
        """Embeddings of RGB ``uint8`` images: cached ones read (verified), the others encoded
        in batches of ``batch_size`` and stored."""

        if keys is None:
            keys = [self.key(im) for im in images]
        out: list[Embedding | None] = [self.cache.get(k) if k is not None else None for k in keys]
        self.stats.cache_hits += sum(e is not None for e in out)
        missing = [i for i, e in enumerate(out) if e is None]
        if missing and not self.encode:
            raise MissingEmbeddingError(
                f"{len(missing)} of {len(images)} images have no embedding in the cache {self.cache.root} for "
                f"{self.describe()} (--no-encode): run the stage that stores them with the same settings first, "
                "or let this one encode"
            )
        for start in range(0, len(missing), max(1, batch_size)):
            chunk = missing[start : start + max(1, batch_size)]
            inputs = [self.model.preprocess(images[i]) for i in chunk]
            levels = [t.cpu() for t in self.encoder(torch.stack([x for x, _ in inputs]))]
            for j, i in enumerate(chunk):
                emb = Embedding(levels[0][j], tuple(images[i].shape[:2]), inputs[j][1], tuple(t[j] for t in levels[1:]))
                if keys[i] is not None:
                    self.cache.put(keys[i], emb)
                    # Use the stored values (fp16 by default) as a warm run will: same outputs cold or warm.
                    dtype = STORAGE_DTYPES[self.cache.dtype]
                    emb.tensor, emb.extra = emb.tensor.to(dtype), tuple(t.to(dtype) for t in emb.extra)
                out[i] = emb
            self.stats.encoded += len(chunk)
        return out  # type: ignore[return-value]

    def describe(self) -> str:
        """The encoder settings that key its embeddings, as the flags name them."""
        parts = [f"model {self.name}", f"weights {self.identity['weights']}", f"backend {self.backend}"]
        parts += [f"precision {self.precision}", f"cache dtype {self.cache.dtype if self.cache else '-'}"]
        return ", ".join(parts)

    def predict(self, embedding: Embedding, **prompts) -> MaskPrediction:
        """:func:`~wsseg_fast.sam.prompting.predict_masks` with this engine's model, no autograd."""
        with torch.inference_mode():
            return predict_masks(self.model, embedding, **prompts)

    def encode_boxes(self, embedding: Embedding, boxes) -> torch.Tensor:
        """The prompt tokens of an image's boxes (original pixels): see
        :func:`~wsseg_fast.sam.prompting.encode_boxes`."""
        return encode_boxes(self.model, boxes, embedding.original_size, embedding.input_size)

    def decode_tokens(self, embedding: Embedding, tokens: torch.Tensor) -> MaskPrediction:
        """:func:`~wsseg_fast.sam.prompting.decode_tokens` with this engine's model, no autograd."""
        with torch.inference_mode():
            return decode_tokens(self.model, embedding, tokens)


class _SizeOnly(torch.nn.Module):
    """What ImageEncoderRunner needs of the encoder when it runs an exported file."""

    def __init__(self, img_size: int):
        super().__init__()
        self.img_size = img_size
