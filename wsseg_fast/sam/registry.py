"""Every SAM the toolkit runs, by name, behind one interface.

``vit_b | vit_l | vit_h | tiny | small`` are SAM 1 (segment-anything; :mod:`wsseg_fast.sam.model`),
``sam2.1_hiera_t | _s | _b+ | _l`` SAM 2.1 (Meta's ``sam2`` package, an optional extra;
:mod:`wsseg_fast.sam.sam2`). :func:`build_model` gives a :class:`SamModel` whatever the family,
so the engine, the pseudo-label methods and every trainer run on either with no per-family code.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np
import torch
from torch import nn

from wsseg_fast.errors import CheckpointError
from wsseg_fast.sam.model import (
    MODEL_CONFIGS,
    Sam1Model,
    build_sam1_model,
    check_keys,
    load_state_dict_file,
    weights_id,
)
from wsseg_fast.sam.sam2 import MODELS as SAM2_MODELS
from wsseg_fast.sam.sam2 import Sam2Model, build_sam2_model, sam2_unavailable, sam2_weights_id

FAMILIES = {**dict.fromkeys(MODEL_CONFIGS, "sam"), **dict.fromkeys(SAM2_MODELS, "sam2.1")}
MODELS = tuple(FAMILIES)
"""Every model name ``--model`` takes."""


class SamModel(Protocol):
    """A promptable SAM of either family. Coordinates are in its ``S x S`` input frame; an image's
    features are a list of levels, the image embedding ``[256, g, g]`` first."""

    family: str  # "sam" or "sam2.1"
    name: str
    img_size: int  # S
    grid: int  # g; low-resolution masks are 4g x 4g
    preprocessing_id: str  # part of every cache key
    level_shapes: tuple[tuple[int, int, int], ...]
    module: nn.Module  # the whole model: its state dict has the official checkpoint's keys
    image_encoder: nn.Module  # the parts by role, for freezing and training
    prompt_encoder: nn.Module
    mask_decoder: nn.Module

    def to(self, device) -> SamModel: ...

    def role_of(self, key: str) -> str | None:
        """``image_encoder``, ``prompt_encoder`` or ``mask_decoder``: the part a state-dict key is of."""

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """uint8 ``[H, W, 3]`` -> the encoder's ``[3, S, S]`` input and the image's size in the frame."""

    def encode(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """``[B, 3, S, S]`` -> the feature levels ``[B, C, H, W]`` the decoder reads."""

    def prompt(self, boxes=None, points=None, labels=None, masks=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse and dense embeddings of N prompts (input frame)."""

    def decode(self, levels, sparse, dense, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's levels and N prompts -> low-resolution logits ``[N, M, 4g, 4g]`` and IoU ``[N, M]``."""

    def upsample(self, low_res, input_size, output_size) -> torch.Tensor:
        """Low-resolution logits -> logits at ``output_size``, as the family post-processes them."""

    def encode_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """``[N, 2, 256]``: the prompt encoder's two corner tokens of N boxes."""

    def decode_tokens(self, levels, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """N prompts given as tokens through the decoder (single mask)."""


def check_name(name: str) -> str:
    """The family of model ``name``, or a ``ValueError`` listing the valid names."""
    if name not in FAMILIES:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
    return FAMILIES[name]


def build_model(name: str, checkpoint: str | os.PathLike | None = None, *, with_encoder: bool = True) -> SamModel:
    """The SAM called ``name`` (eval mode, CPU), from ``checkpoint`` (official files load as they are)
    or seeded random weights; ``with_encoder=False`` leaves the image encoder out (every feature
    comes from the cache)."""
    if check_name(name) == "sam":
        return build_sam1_model(name, checkpoint, with_encoder=with_encoder)
    return build_sam2_model(name, checkpoint, with_encoder=with_encoder)


def build_image_encoder(name: str, checkpoint: str | os.PathLike | None = None) -> nn.Module:
    """What makes an image's feature levels (``[B, 3, S, S]`` -> a tensor, or a list of levels), for the
    encoder backends and the export."""
    return build_model(name, checkpoint, with_encoder=True).image_encoder


def model_weights_id(name: str, checkpoint: str | os.PathLike | None) -> str:
    """What identifies the weights in cache keys (see :func:`wsseg_fast.sam.model.weights_id`)."""
    return weights_id(name, checkpoint) if check_name(name) == "sam" else sam2_weights_id(name, checkpoint)


def available_models() -> dict[str, str | None]:
    """Each model name -> ``None`` when it can be built here, else why not."""
    sam2 = sam2_unavailable()
    return {name: (sam2 if family == "sam2.1" else None) for name, family in FAMILIES.items()}


def role_of(name: str, key: str) -> str | None:
    """The part (``image_encoder``, ``prompt_encoder``, ``mask_decoder``) of model ``name`` a state-dict
    key belongs to."""
    return (Sam1Model if check_name(name) == "sam" else Sam2Model).role_of(key)


def finetuned_has_encoder(name: str, checkpoint: str | os.PathLike) -> bool:
    """Whether fine-tuned weights hold the image encoder: then they are a whole model (``finetune
    --train all`` writes all of it), to be given as the checkpoint, since the cached features differ."""
    return any(role_of(name, k) == "image_encoder" for k in load_state_dict_file(checkpoint))


def load_finetuned(model: SamModel, checkpoint: str | os.PathLike) -> None:
    """Load fine-tuned prompt-encoder and mask-decoder weights over ``model``: the entries of
    ``finetune``'s ``finetuned.pth`` (or any state dict of the model: its other parts are left alone;
    weights that change the image encoder are a whole model, see :func:`finetuned_has_encoder`), or
    the mask decoder's own state dict."""
    source = os.fspath(checkpoint)
    state = load_state_dict_file(checkpoint)
    if all(model.role_of(k) is None for k in state):  # the mask decoder's own state dict, without its prefix
        prefix = _decoder_prefix(model, next(iter(state)))
        if prefix is None:
            raise CheckpointError(
                f"checkpoint {source} does not match the {model.name} mask decoder (nor its other parts)"
            )
        state = {prefix + k: v for k, v in state.items()}
    parts = {k: v for k, v in state.items() if model.role_of(k) in ("prompt_encoder", "mask_decoder")}
    roles = {model.role_of(k) for k in parts}
    own = {k: v for k, v in model.module.state_dict().items() if model.role_of(k) in roles}
    check_keys(own, parts, f"the {model.name} {' and '.join(sorted(r.replace('_', ' ') for r in roles))}", source)
    model.module.load_state_dict(parts, strict=False)


def _decoder_prefix(model: SamModel, key: str) -> str | None:
    """The mask decoder's key prefix in ``model.module`` (``mask_decoder.``, ``sam_mask_decoder.``), if
    ``key`` is one of its keys."""
    for own in model.module.state_dict():
        if own.endswith("." + key) and model.role_of(own) == "mask_decoder":
            return own[: -len(key)]
    return None
