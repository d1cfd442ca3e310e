"""The settings that make a SAM embedding, declared once for every stage that reads embeddings.

``pseudo-label``, ``finetune``, ``train-prompter``, ``train-cam`` and ``train-student --arch
sam-head`` derive their configs from :class:`EncoderSettings`, so the same flags (``--model
--checkpoint --backend --encoder-file --precision --cache --cache-dtype``) give the same cache keys
in every stage: what one stage encoded, the next reads. ``--no-encode`` makes a stage that must only
read say so: it stops with one line if an embedding is missing instead of encoding it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from wsseg_fast.cache import EmbeddingCache, default_cache_dir
from wsseg_fast.config import Config, choice, require
from wsseg_fast.sam.engine import SamEngine
from wsseg_fast.sam.registry import MODELS


@dataclass(kw_only=True)
class EncoderSettings(Config):
    """What makes an image's SAM features and where they are kept (see the module docstring)."""

    FLAG_GROUP: ClassVar[str] = "SAM image encoder and embedding cache"

    model: str = choice("vit_b", MODELS)
    """SAM variant."""

    checkpoint: str | None = None
    """SAM checkpoint (e.g. sam_vit_b_01ec64.pth); none: seeded random weights (pipeline tests only)."""

    backend: Literal["torch", "compile", "onnxruntime", "tensorrt"] = "torch"
    """Image-encoder backend (part of the cache key: give every stage the job's)."""

    encoder_file: str | None = None
    """Exported encoder for onnxruntime/tensorrt (default: exported into the cache once)."""

    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Encoder compute precision."""

    cache: str | None = field(default_factory=default_cache_dir)
    """Embedding cache directory, shared by every stage (default: $WSSEG_FAST_CACHE or
    ~/.cache/wsseg_fast; --no-cache: encode without reading or filling a cache)."""

    cache_dtype: Literal["fp16", "fp32"] = "fp16"
    """How the cache stores embeddings."""

    encode: bool = True
    """Encode the images whose embedding the cache lacks (--no-encode: stop instead, for a stage
    that must only read what an earlier one stored)."""

    RUNTIME = ("cache", "encode")

    def validate(self) -> None:
        require(
            self.precision == "fp32" or self.backend in ("torch", "compile"),
            f"the {self.backend} backend runs the exported graph's precision: use precision fp32 (build a fp16 "
            "TensorRT engine with export-encoder --fp16)",
        )
        require(self.encode or self.cache is not None, "--no-encode needs a cache to read the embeddings from")

    def engine(self, device: str = "cpu", finetuned: str | None = None) -> SamEngine:
        """The :class:`SamEngine` these settings describe."""
        return SamEngine(
            self.model,
            self.checkpoint,
            backend=self.backend,
            encoder_file=self.encoder_file,
            cache=EmbeddingCache(self.cache, dtype=self.cache_dtype) if self.cache else None,
            finetuned=finetuned,
            precision=self.precision,
            device=device,
            encode=self.encode,
        )

    def embedding_numerics(self) -> dict:
        """What besides the weights decides an embedding's values: the backend, the precision and how
        it was stored (a run's outputs depend on them)."""
        return {
            "backend": self.backend,
            "precision": self.precision,
            "stored": self.cache_dtype if self.cache else "fp32",
        }
