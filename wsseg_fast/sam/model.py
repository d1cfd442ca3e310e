"""Building SAM (segment-anything 1.0 modules) and loading a user's checkpoint.

``build_sam("vit_b" | "vit_l" | "vit_h" | "tiny" | "small", checkpoint=None)`` gives the
same module tree as ``segment_anything.build_sam_vit_*``, so official
checkpoints load unchanged. ``tiny`` is a small encoder (256 px input, 16x16
embedding) with the stock 256-channel neck, prompt encoder and mask decoder:
for tests and the demo; ``small`` (384 px, 24x24, 4 blocks of width 128) is the size
``pretrain-sam`` can train from scratch on a CPU. Without a checkpoint the weights are a seeded random
initialisation (deterministic, so cached embeddings stay valid), which gives
meaningless masks: real pseudo-labels need a real checkpoint.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from wsseg_fast.errors import CheckpointError
from wsseg_fast.io import file_digest


@dataclass(frozen=True)
class SamConfig:
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    window_size: int = 14


MODEL_CONFIGS = {
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    "tiny": SamConfig(64, 2, 2, (1,), img_size=256, window_size=8),
    # a stand-in that can learn shapes on a CPU (pretrain-sam): 384 px in, 24x24 tokens (96x96
    # low-res masks), 4 blocks of width 128 -- thin things (poles) keep a few pixels, and a
    # training step costs ~2x tiny's rather than vit_b's ~100x
    "small": SamConfig(128, 4, 4, (1, 3), img_size=384, window_size=8),
}
PATCH_SIZE = 16
PROMPT_DIM = 256
INIT_SEED = 0
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
# Part of every cache key: change it whenever preprocess() changes.
PREPROCESSING_ID = "resize-longest-side-PIL-bilinear/normalize-imagenet-255/pad-bottom-right-v1"


def sam_modeling():
    """``segment_anything.modeling`` without running the package ``__init__``,
    which imports torchvision (+3 s here) for the predictor classes we do not use.
    The package's own names are still there: the first access runs its ``__init__``."""
    if "segment_anything" not in sys.modules:
        spec = importlib.util.find_spec("segment_anything")
        if spec is None:
            raise ImportError("wsseg_fast.sam needs segment-anything: pip install 'segment-anything>=1.0'")
        package = importlib.util.module_from_spec(spec)

        def load_rest(name):
            del package.__getattr__
            spec.loader.exec_module(package)
            return getattr(package, name)

        package.__getattr__ = load_rest
        sys.modules["segment_anything"] = package
    return importlib.import_module("segment_anything.modeling")


class EncoderNotLoaded(nn.Module):
    """Stands in for the image encoder when every embedding comes from the cache."""

    def __init__(self, img_size: int):
        super().__init__()
        self.img_size = img_size

    def forward(self, x):  # pragma: no cover - a programming error, not a user error
        raise RuntimeError("the SAM image encoder was not built (build_sam(..., with_encoder=False))")


def _build_encoder(cfg: SamConfig) -> nn.Module:
    torch.manual_seed(INIT_SEED + 1)
    return sam_modeling().ImageEncoderViT(
        depth=cfg.depth,
        embed_dim=cfg.embed_dim,
        img_size=cfg.img_size,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=cfg.num_heads,
        patch_size=PATCH_SIZE,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=cfg.global_attn_indexes,
        window_size=cfg.window_size,
        out_chans=PROMPT_DIM,
    )


def _build_modules(cfg: SamConfig, with_encoder: bool) -> nn.Module:
    m = sam_modeling()
    grid = cfg.img_size // PATCH_SIZE
    # Each part from its own seed, so that the random initialisation of the
    # decoder does not depend on whether the encoder is built.
    torch.manual_seed(INIT_SEED)
    prompt_encoder = m.PromptEncoder(
        embed_dim=PROMPT_DIM,
        image_embedding_size=(grid, grid),
        input_image_size=(cfg.img_size, cfg.img_size),
        mask_in_chans=16,
    )
    mask_decoder = m.MaskDecoder(
        num_multimask_outputs=3,
        transformer=m.TwoWayTransformer(depth=2, embedding_dim=PROMPT_DIM, mlp_dim=2048, num_heads=8),
        transformer_dim=PROMPT_DIM,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    encoder = _build_encoder(cfg) if with_encoder else EncoderNotLoaded(cfg.img_size)
    return m.Sam(
        image_encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


def _instantiate(make, state: dict | None, what: str, source: str | None) -> nn.Module:
    """``make()`` with its seeded random weights, then ``state`` loaded over them.
    (Building on the meta device would skip the init, but its first use imports
    torch's meta kernels: slower than initialising even vit_b's encoder.)"""
    with torch.random.fork_rng(devices=[]):
        module = make()
    if state is not None:
        load_into(module, state, what, source)
    return module.eval()


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict (``torch.save`` file or ``.safetensors``), memory-mapped,
    with a :class:`CheckpointError` naming the file when it cannot be read."""

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.endswith(".safetensors"):
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises RuntimeError/EOFError/UnpicklingError/... for bad files
        raise CheckpointError(
            f"cannot read checkpoint {path} ({os.path.getsize(path)} bytes): it is truncated or not a "
            f"PyTorch/safetensors state dict ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    for wrapper in ("model", "state_dict"):  # training checkpoints often nest the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    return state


def check_keys(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], what: str, source: str) -> None:
    """One readable :class:`CheckpointError` for missing/unexpected keys and shape mismatches of
    ``state`` against ``own`` (e.g. a vit_l file given for vit_b)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {'; '.join(wrong[:2])})")
        raise CheckpointError(f"checkpoint {source} does not match {what}: " + ", ".join(parts))


def load_into(module: nn.Module, state: dict[str, torch.Tensor], what: str, source: str) -> None:
    """``module.load_state_dict(state)`` after :func:`check_keys`."""
    check_keys(module.state_dict(), state, what, source)
    module.load_state_dict(state)


def _check_model(model: str) -> SamConfig:
    if model not in MODEL_CONFIGS:
        raise ValueError(f"build_sam: model must be one of {', '.join(MODEL_CONFIGS)}, got {model!r}")
    return MODEL_CONFIGS[model]


def build_sam(model: str, checkpoint: str | os.PathLike | None = None, *, with_encoder: bool = True) -> nn.Module:
    """A ``segment_anything.modeling.Sam`` in eval mode, on the CPU.

    Args:
        model: ``vit_b``, ``vit_l``, ``vit_h`` (the official architectures), ``tiny`` or ``small``.
        checkpoint: a state dict file of the whole model (the official
            ``sam_vit_*.pth`` files load as they are). ``None``: seeded random weights.
        with_encoder: ``False`` skips building and loading the image encoder
            (a placeholder keeps ``img_size``), for runs served from the cache;
            :func:`build_image_encoder` builds it when needed.
    """

    cfg = _check_model(model)
    state = None
    if checkpoint is not None:
        state = load_state_dict_file(checkpoint)
        if any(k.startswith(("sam_mask_decoder.", "sam_prompt_encoder.")) for k in state):
            raise CheckpointError(
                f"checkpoint {os.fspath(checkpoint)} is a SAM 2 checkpoint (sam_mask_decoder.* keys), not SAM 1: "
                f"it goes with a sam2.1_hiera_* model; {model} needs a SAM 1 (segment-anything) checkpoint"
            )
        if not with_encoder:
            state = {k: v for k, v in state.items() if not k.startswith("image_encoder.")}
    what = f"SAM {model}" + ("" if with_encoder else " (prompt encoder and mask decoder)")
    sam = _instantiate(
        lambda: _build_modules(cfg, with_encoder), state, what, os.fspath(checkpoint) if checkpoint else None
    )
    return sam


def build_image_encoder(model: str, checkpoint: str | os.PathLike | None = None) -> nn.Module:
    """Only SAM's image encoder (``ImageEncoderViT``), with the same weights as
    ``build_sam(model, checkpoint).image_encoder``."""

    cfg = _check_model(model)
    state = None
    if checkpoint is not None:
        prefix = "image_encoder."
        state = {k[len(prefix) :]: v for k, v in load_state_dict_file(checkpoint).items() if k.startswith(prefix)}
    return _instantiate(
        lambda: _build_encoder(cfg),
        state,
        f"the SAM {model} image encoder",
        os.fspath(checkpoint) if checkpoint else None,
    )


def weights_id(model: str, checkpoint: str | os.PathLike | None) -> str:
    """What identifies the weights in cache keys: the checkpoint's content digest, or the
    seeded random initialisation (tied to the segment-anything version that draws it)."""
    if checkpoint is None:
        from importlib.metadata import version

        return f"random-init-seed{INIT_SEED}-segment-anything-{version('segment-anything')}"
    if not os.path.isfile(checkpoint):
        raise CheckpointError(f"checkpoint not found: {os.fspath(checkpoint)}")
    return "blake2b:" + file_digest(checkpoint)


# --- SAM 1 behind the family-neutral interface (see wsseg_fast.sam.registry.SamModel) ---------------------


def input_size(original_size: tuple[int, int], img_size: int) -> tuple[int, int]:
    """(h, w) of the image resized so its longest side is ``img_size`` (SAM's ResizeLongestSide)."""
    h, w = original_size
    scale = img_size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def preprocess(image: np.ndarray, img_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """An RGB ``uint8`` ``[H, W, 3]`` image -> the encoder's ``[3, S, S]`` float32 input
    (resized as SAM's predictor does, normalised, zero-padded) and the resized ``(h, w)``."""

    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        raise TypeError(
            f"preprocess: image must be a uint8 [H, W, 3] RGB array, got "
            f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}"
        )
    h, w = input_size(image.shape[:2], img_size)
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    x = torch.from_numpy(resized.copy()).permute(2, 0, 1).float()
    x = (x - torch.tensor(PIXEL_MEAN).view(3, 1, 1)) / torch.tensor(PIXEL_STD).view(3, 1, 1)
    return F.pad(x, (0, img_size - w, 0, img_size - h)), (h, w)


class Sam1Model:
    """A ``segment_anything`` ``Sam`` behind the family-neutral interface; coordinates in the ``S x S``
    input frame (the image resized so its longest side is S, padded bottom-right). One feature level:
    the image embedding ``[256, g, g]``."""

    family = "sam"
    preprocessing_id = PREPROCESSING_ID
    ROLES = {"image_encoder.": "image_encoder", "prompt_encoder.": "prompt_encoder", "mask_decoder.": "mask_decoder"}

    def __init__(self, name: str, module: nn.Module):
        self.name, self.module = name, module
        self.img_size = module.image_encoder.img_size
        self.grid = module.prompt_encoder.image_embedding_size[0]
        self.level_shapes = ((module.prompt_encoder.embed_dim, self.grid, self.grid),)
        self.image_encoder = module.image_encoder
        self.prompt_encoder = module.prompt_encoder
        self.mask_decoder = module.mask_decoder

    def to(self, device) -> Sam1Model:
        self.module.to(device)
        return self

    @staticmethod
    def role_of(key: str) -> str | None:
        """The part (image_encoder, prompt_encoder, mask_decoder) a state-dict key belongs to."""
        return next((role for prefix, role in Sam1Model.ROLES.items() if key.startswith(prefix)), None)

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        return preprocess(image, self.img_size)

    def encode(self, batch: torch.Tensor) -> list[torch.Tensor]:
        return [self.image_encoder(batch)]

    def _embedding(self, levels) -> torch.Tensor:
        param = next(self.mask_decoder.parameters())
        emb = levels[0][None] if levels[0].ndim == 3 else levels[0]
        if emb.ndim != 4 or emb.shape[0] != 1 or tuple(emb.shape[1:]) != self.level_shapes[0]:
            raise ValueError(
                f"{self.name}: the image embedding must be {list(self.level_shapes[0])}, got {tuple(emb.shape)}"
            )
        return emb.to(device=param.device, dtype=param.dtype)

    def prompt(self, boxes=None, points=None, labels=None, masks=None) -> tuple[torch.Tensor, torch.Tensor]:
        point_pair = None if points is None else (points, labels)
        return self.prompt_encoder(points=point_pair, boxes=boxes, masks=masks)

    def decode(self, levels, sparse: torch.Tensor, dense: torch.Tensor, multimask: bool):
        return self.mask_decoder(
            image_embeddings=self._embedding(levels),
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )

    def upsample(self, low_res: torch.Tensor, input_size, output_size) -> torch.Tensor:
        """Low-resolution logits -> logits at ``output_size``, as SAM post-processes them (upsample to
        the input frame, crop the padding, resize); in the input frame itself one resize."""
        frame = (self.img_size, self.img_size)
        if tuple(output_size) == tuple(input_size) == frame:  # SAM's second resize would be the identity
            return F.interpolate(low_res, frame, mode="bilinear", align_corners=False)
        return self.module.postprocess_masks(low_res, input_size=tuple(input_size), original_size=tuple(output_size))

    def encode_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """``[N, 2, 256]``: the prompt encoder on N boxes (input frame) alone, their two corner tokens."""
        with torch.no_grad():
            sparse, _ = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        return sparse

    def decode_tokens(self, levels, tokens: torch.Tensor):
        """N prompts given as tokens ``[N, K, 256]`` (the prompt encoder's output) with the no-mask dense
        embedding, through the decoder in one call (single mask)."""
        n = tokens.shape[0]
        grid = tuple(self.prompt_encoder.image_embedding_size)
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, *grid)
        return self.decode(levels, tokens.to(dense), dense, multimask=False)


def build_sam1_model(name: str, checkpoint: str | os.PathLike | None = None, *, with_encoder: bool = True) -> Sam1Model:
    """:func:`build_sam` behind the family-neutral interface."""
    return Sam1Model(name, build_sam(name, checkpoint, with_encoder=with_encoder))
