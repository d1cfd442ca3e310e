"""A tiny SAM built in-process from segment_anything's modules (no weights)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from tests.helpers import one_torch_thread  # noqa: F401  (autouse: one thread here)


@pytest.fixture(scope="session")
def tiny_sam():
    modeling = pytest.importorskip("segment_anything.modeling")
    torch.manual_seed(0)
    img_size, patch, dim = 64, 16, 32
    grid = img_size // patch
    sam = modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            img_size=img_size,
            patch_size=patch,
            embed_dim=32,
            depth=1,
            num_heads=2,
            out_chans=dim,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=4,
        ),
        mask_decoder=modeling.MaskDecoder(
            transformer_dim=dim,
            transformer=modeling.TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            num_multimask_outputs=3,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
    )
    return sam.eval()
