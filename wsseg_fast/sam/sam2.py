"""SAM 2.1 (Meta's ``sam2`` package) in the roles SAM 1 plays: preprocess, encode, prompt, decode.

``build_sam2_model("sam2.1_hiera_t" | "sam2.1_hiera_s" | "sam2.1_hiera_b+" | "sam2.1_hiera_l")`` builds the
package's ``SAM2Base`` from its own Hydra configs, as ``sam2.build_sam.build_sam2`` does (its postprocessing
overrides included), so the official ``sam2.1_hiera_*.pt`` checkpoints load unchanged, and wraps it in a
:class:`Sam2Model` whose methods compute what ``SAM2ImagePredictor`` computes (``set_image``, ``_predict``), for N
prompts of one image in ONE mask-decoder call.

How SAM 2.1 differs from SAM 1 for the rest of the toolkit:

- the image is resized to ``S x S`` whatever its aspect ratio (no padding), so the input size is always
  ``(S, S)`` and a point ``(x, y)`` of an ``H x W`` image is ``(x * S / W, y * S / H)`` in the input frame;
- the decoder reads three feature levels, not one embedding: the image embedding ``[256, 64, 64]`` (with the
  no-memory embedding added) and two high-resolution levels already projected by the decoder's ``conv_s0`` and
  ``conv_s1`` (``[32, 256, 256]``, ``[64, 128, 128]``). A cache entry holds all three: 4x the bytes of SAM 1's.

``sam2`` is imported only when a model is built, so this module imports without it;
:func:`sam2_unavailable` says why models cannot be built here. Without a checkpoint the weights are a seeded
random initialisation (deterministic, so cached features stay valid): meaningless masks, for tests and plumbing.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsseg_fast.errors import CheckpointError, UserError
from wsseg_fast.sam.model import load_into, load_state_dict_file, weights_id

MODELS = {f"sam2.1_hiera_{size}": f"configs/sam2.1/sam2.1_hiera_{size}.yaml" for size in ("t", "s", "b+", "l")}
# What tells the sizes' checkpoints apart (their prompt encoders and decoders have the same shapes): the Hiera
# trunk's width (patch embedding channels) and number of blocks, with the official checkpoint's file name.
TRUNKS = {
    "sam2.1_hiera_t": (96, 12, "sam2.1_hiera_tiny.pt"),
    "sam2.1_hiera_s": (96, 16, "sam2.1_hiera_small.pt"),
    "sam2.1_hiera_b+": (112, 24, "sam2.1_hiera_base_plus.pt"),
    "sam2.1_hiera_l": (144, 48, "sam2.1_hiera_large.pt"),
}
# build_sam2(apply_postprocessing=True), its default: a single mask that is not stable falls back to the best
# of the three multimask outputs (in eval mode). The predictor's masks are those of a model built so.
POSTPROCESSING = (
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
)
INIT_SEED = 0
# Part of every cache key: change it whenever preprocess() changes.
PREPROCESSING_ID = "sam2-resize-square-bilinear-antialias/normalize-imagenet-unit-v1"
PIXEL_MEAN = (0.485, 0.456, 0.406)  # SAM2Transforms: on pixels scaled to [0, 1]
PIXEL_STD = (0.229, 0.224, 0.225)
INSTALL = "SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2"
# The state-dict keys of what makes the cached levels (with no_mem_embed): see Sam2ImageEncoder.
ENCODER_KEYS = ("image_encoder.", "sam_mask_decoder.conv_s0.", "sam_mask_decoder.conv_s1.")


class Sam2Unavailable(UserError):
    """The ``sam2`` package (or what it needs) is missing here; the message says how to install it."""


def sam2_unavailable() -> str | None:
    """Why SAM 2.1 models cannot be built here (for ``wsseg-fast info``), or ``None`` when they can.
    Looks for the package and its SAM 2.1 configs without importing it (importing sam2 sets up Hydra)."""
    spec = importlib.util.find_spec("sam2")
    if spec is None or not spec.submodule_search_locations:
        return f"sam2 is not installed: {INSTALL} (SAM2_BUILD_CUDA=0: it is an sdist that builds a CUDA extension)"
    root = next(iter(spec.submodule_search_locations))
    missing = [config for config in MODELS.values() if not os.path.isfile(os.path.join(root, config))]
    if missing:
        return f"sam2 {_sam2_version()} at {root} has no SAM 2.1 config {missing[0]}: upgrade it: {INSTALL} -U"
    for module, package in (("hydra", "hydra-core"), ("omegaconf", "omegaconf")):
        if importlib.util.find_spec(module) is None:
            return f"sam2 needs {package}, which is not installed: pip install {package}"
    return None


def _sam2_version() -> str:
    try:
        return version("sam2")
    except PackageNotFoundError:
        raise Sam2Unavailable(sam2_unavailable() or f"sam2 is not installed: {INSTALL}") from None


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"build_sam2_model: name must be one of {', '.join(MODELS)}, got {name!r}")


_HYDRA_LOCK = threading.Lock()


@contextmanager
def _sam2_hydra():
    """Hydra's global state set up for sam2's config module, and afterwards put back as it was.

    ``compose`` reads the process-wide GlobalHydra: importing sam2 initialises it for sam2's configs only if
    nothing else had, and a caller (or a test) may have initialised it for its own configs, or cleared it. Fresh
    singletons for the compose, the caller's own put back after, make every call work, repeatedly."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton
    from hydra.version import VersionBase

    with _HYDRA_LOCK:
        saved = {cls: Singleton._instances.pop(cls, None) for cls in (GlobalHydra, VersionBase)}
        try:
            initialize_config_module("sam2", version_base="1.2")
            yield
        finally:
            for cls, instance in saved.items():
                if instance is None:
                    Singleton._instances.pop(cls, None)
                else:
                    Singleton._instances[cls] = instance


def model_config(name: str):
    """The resolved ``model`` node of a SAM 2.1 config, as ``build_sam2`` composes it."""
    _check_name(name)
    reason = sam2_unavailable()
    if reason is not None:
        raise Sam2Unavailable(reason)
    try:
        import sam2  # noqa: F401  (the config module; a broken install fails here, with the fix)
        from hydra import compose
        from omegaconf import OmegaConf
    except ImportError as exc:
        raise Sam2Unavailable(f"sam2 cannot be imported ({exc}): {INSTALL}") from None
    with _sam2_hydra():
        cfg = compose(config_name=MODELS[name], overrides=list(POSTPROCESSING))
    OmegaConf.resolve(cfg)
    return cfg.model


# What build_sam2_model(with_encoder=False) leaves out: the image encoder, and the memory attention, which only
# video tracking runs (it is most of the time of building the rest: 0.3 s of 0.45 s).
NOT_BUILT = ("image_encoder.", "memory_attention.")


class NotBuilt(nn.Module):
    """Stands in for a part that a model decoding cached features never runs (``SAM2Base`` reads only the
    image encoder's ``neck.d_model``)."""

    def __init__(self, what: str, d_model: int | None = None):
        super().__init__()
        self.what = what
        if d_model is not None:
            self.neck = SimpleNamespace(d_model=d_model)

    def forward(self, *args, **kwargs):  # pragma: no cover - a programming error, not a user error
        raise RuntimeError(f"the SAM 2.1 {self.what} was not built (build_sam2_model(..., with_encoder=False))")


def _build_module(cfg, with_encoder: bool) -> nn.Module:
    """``SAM2Base`` from a composed config, as Hydra's recursive instantiate builds it, but each part from its
    own seed: the random weights of the decoder (and the rest) then do not depend on which parts are built, and
    a warm run without the encoder decodes with the weights that go with the cached features."""
    from hydra.utils import instantiate

    def seeded(offset: int, node):
        torch.manual_seed(INIT_SEED + offset)
        return instantiate(node)

    with torch.random.fork_rng(devices=[]):
        if with_encoder:
            encoder, memory_attention = seeded(1, cfg.image_encoder), seeded(2, cfg.memory_attention)
        else:
            encoder = NotBuilt("image encoder", d_model=cfg.image_encoder.neck.d_model)
            memory_attention = NotBuilt("memory attention")
        memory_encoder = seeded(3, cfg.memory_encoder)  # small; SAM2Base reads its output width
        torch.manual_seed(INIT_SEED)
        module = instantiate(
            cfg, image_encoder=encoder, memory_attention=memory_attention, memory_encoder=memory_encoder
        )
    return module.eval()


def _trunk(state: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """(width, blocks) of the Hiera trunk whose weights ``state`` holds, if it holds one."""
    patch = state.get("image_encoder.trunk.patch_embed.proj.weight")
    if patch is None:
        return None
    prefix = "image_encoder.trunk.blocks."
    blocks = {int(k[len(prefix) :].split(".", 1)[0]) for k in state if k.startswith(prefix)}
    return int(patch.shape[0]), len(blocks)


def _check_checkpoint(name: str, state: dict[str, torch.Tensor], path: str) -> None:
    """One line for the checkpoints of another model that the key check alone would report as hundreds of
    missing keys (SAM 1, SAM 2.0) or, with ``with_encoder=False``, not at all (another size: its prompt
    encoder and decoder have the same shapes)."""
    width, blocks, file = TRUNKS[name]
    expected = f"{name} needs {file} (keys image_encoder.trunk.*, sam_prompt_encoder.*, sam_mask_decoder.*)"
    if any(k.startswith(("mask_decoder.", "prompt_encoder.")) for k in state):
        raise CheckpointError(
            f"checkpoint {path} is a SAM 1 (segment-anything) checkpoint (mask_decoder.*, "
            f"prompt_encoder.* keys), not SAM 2.1: it goes with a SAM 1 model; {expected}"
        )
    if "sam_mask_decoder.iou_token.weight" in state and "no_obj_embed_spatial" not in state:
        raise CheckpointError(
            f"checkpoint {path} is a SAM 2 (2.0) checkpoint (no no_obj_embed_spatial), not SAM 2.1: {expected}"
        )
    found = _trunk(state)
    if found is not None and found != (width, blocks):
        other = next((n for n, (w, b, _) in TRUNKS.items() if (w, b) == found), None)
        what = f"a {other} checkpoint" if other else "not a SAM 2.1 checkpoint"
        raise CheckpointError(
            f"checkpoint {path} is {what} (Hiera trunk of {found[1]} blocks, width {found[0]}), "
            f"not {name} ({blocks} blocks, width {width}): {expected}"
        )


def build_sam2_model(name: str, checkpoint: str | os.PathLike | None = None, *, with_encoder: bool = True) -> Sam2Model:
    """A SAM 2.1 model in eval mode, on the CPU.

    Args:
        name: ``sam2.1_hiera_t``, ``sam2.1_hiera_s``, ``sam2.1_hiera_b+`` or ``sam2.1_hiera_l`` (:data:`MODELS`).
        checkpoint: the official ``sam2.1_hiera_*.pt`` (``{"model": state_dict}``), or a file of the state dict
            itself (``torch.save`` or ``.safetensors``). ``None``: seeded random weights.
        with_encoder: ``False`` does not build (nor load) the Hiera image encoder, for runs whose feature levels
            all come from the cache (``encode`` then raises), nor the video-only memory attention
            (:data:`NOT_BUILT`: their keys are missing from ``module.state_dict()``). The prompt encoder and
            mask decoder are built and loaded as usual, with the same weights.
    """
    cfg = model_config(name)
    state = None
    if checkpoint is not None:
        path = os.fspath(checkpoint)
        state = load_state_dict_file(path)
        _check_checkpoint(name, state, path)
        if not with_encoder:
            state = {k: v for k, v in state.items() if not k.startswith(NOT_BUILT)}
    module = _build_module(cfg, with_encoder)
    if state is not None:
        what = f"SAM 2.1 {name}" + ("" if with_encoder else " (without image encoder and memory attention)")
        load_into(module, state, what, path)
    return Sam2Model(name, module)


def sam2_weights_id(name: str, checkpoint: str | os.PathLike | None) -> str:
    """What identifies the weights in cache keys: the checkpoint's content digest, or the seeded random
    initialisation (tied to the sam2 version that draws it and to how the parts are seeded here)."""
    _check_name(name)
    if checkpoint is not None:
        return weights_id(name, checkpoint)
    return f"random-init-seed{INIT_SEED}-per-part-sam2-{_sam2_version()}"


class Sam2ImageEncoder(nn.Module):
    """Everything that makes the feature levels of an image batch: the Hiera trunk and FPN neck, the decoder's
    ``conv_s0``/``conv_s1`` (SAM 2 projects the two high-resolution levels once per image, in
    ``forward_image``, rather than per prompt) and the no-memory embedding added to the image embedding.

    The parts are ``SAM2Base``'s own (shared, not copied), registered under the names they have there, so the
    keys of this module's state dict are the official checkpoint's keys the cached features depend on.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.image_encoder = module.image_encoder
        self.sam_mask_decoder = nn.Module()
        self.sam_mask_decoder.conv_s0 = module.sam_mask_decoder.conv_s0
        self.sam_mask_decoder.conv_s1 = module.sam_mask_decoder.conv_s1
        self.no_mem_embed = module.no_mem_embed
        self.img_size = module.image_size

    def forward(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """``[B, 3, S, S]`` -> ``[image embedding, level s0, level s1]``, as ``SAM2ImagePredictor.set_image``
        computes them (``forward_image``, ``_prepare_backbone_features``, ``+ no_mem_embed``) without its
        flatten/permute round trip (the same values)."""
        fpn = self.image_encoder(batch)["backbone_fpn"]
        image_embedding = fpn[2] + self.no_mem_embed.view(1, -1, 1, 1)
        return [image_embedding, self.sam_mask_decoder.conv_s0(fpn[0]), self.sam_mask_decoder.conv_s1(fpn[1])]


def _as_tensor(method: str, name: str, value, shape_tail: tuple, expected: str, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim != len(shape_tail) + 1 or any(s is not None and t.shape[i + 1] != s for i, s in enumerate(shape_tail)):
        raise ValueError(f"Sam2Model.{method}: {name} must be {expected}, got shape {tuple(t.shape)}")
    return t


class Sam2Model:
    """A SAM 2.1 ``SAM2Base`` behind the family-neutral interface; coordinates in the ``S x S`` input frame.

    ``image_encoder``, ``prompt_encoder`` and ``mask_decoder`` are the parts by role, for freezing and training.
    ``image_encoder`` (:class:`Sam2ImageEncoder`) includes ``sam_mask_decoder.conv_s0``/``conv_s1`` and
    ``no_mem_embed``: they act on encoder features and their output is what the cache holds, so they change
    with the encoder, never with a decoder trained on cached features. ``mask_decoder`` is the real
    ``sam_mask_decoder`` (its ``train()``/``eval()`` switch the dynamic multimask fallback, and its state dict
    is the checkpoint's ``sam_mask_decoder.*``), whose ``conv_s0``/``conv_s1`` therefore appear in both: those
    get no gradient from cached levels; to train them, train the encoder.
    """

    family = "sam2.1"
    preprocessing_id = PREPROCESSING_ID

    def __init__(self, name: str, module: nn.Module):
        if not (
            module.use_high_res_features_in_sam and module.directly_add_no_mem_embed and module.num_feature_levels == 3
        ):
            raise ValueError(f"Sam2Model: {name} is not a SAM 2.1 image model (high-res features, no-memory embedding)")
        self.name, self.module = name, module
        self.img_size = module.image_size
        self.grid = module.sam_image_embedding_size
        c, g = module.hidden_dim, self.grid
        # [C, H, W] of the levels encode() returns and decode() reads
        self.level_shapes = ((c, g, g), (c // 8, 4 * g, 4 * g), (c // 4, 2 * g, 2 * g))
        self.image_encoder = Sam2ImageEncoder(module)
        self.prompt_encoder = module.sam_prompt_encoder
        self.mask_decoder = module.sam_mask_decoder

    def to(self, device) -> Sam2Model:
        self.module.to(device)  # the parts are the module's own: they move with it
        return self

    @staticmethod
    def role_of(key: str) -> str | None:
        """The part a key of ``module.state_dict()`` belongs to: ``image_encoder`` (what makes the cached
        levels, the decoder's ``conv_s0``/``conv_s1`` and ``no_mem_embed`` included), ``prompt_encoder``,
        ``mask_decoder``, or ``None`` (the video-only memory parts)."""
        if key.startswith(ENCODER_KEYS) or key == "no_mem_embed":
            return "image_encoder"
        if key.startswith("sam_prompt_encoder."):
            return "prompt_encoder"
        if key.startswith("sam_mask_decoder."):
            return "mask_decoder"
        return None

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """An RGB ``uint8`` ``[H, W, 3]`` image -> the encoder's ``[3, S, S]`` float32 input and ``(S, S)``,
        as ``SAM2Transforms`` makes it (``ToTensor``, ``Resize((S, S))`` with antialiasing, ``Normalize``),
        with torch's kernels directly: torchvision costs seconds to import."""
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            raise TypeError(
                f"preprocess: image must be a uint8 [H, W, 3] RGB array, got "
                f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}"
            )
        size = (self.img_size, self.img_size)
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div(255)
        if tuple(x.shape[1:]) != size:  # torchvision's resize returns an image of the right size as it is
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        x = (x - torch.tensor(PIXEL_MEAN).view(3, 1, 1)) / torch.tensor(PIXEL_STD).view(3, 1, 1)
        return x, size

    def encode(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """``[B, 3, S, S]`` -> the levels the decoder reads: ``[B, 256, 64, 64]`` (the image embedding),
        ``[B, 32, 256, 256]`` and ``[B, 64, 128, 128]`` (see :class:`Sam2ImageEncoder`)."""
        if batch.ndim != 4 or tuple(batch.shape[1:]) != (3, self.img_size, self.img_size):
            raise ValueError(
                f"Sam2Model.encode: batch must be [B, 3, {self.img_size}, {self.img_size}], got {tuple(batch.shape)}"
            )
        return self.image_encoder(batch)

    def _levels(self, method: str, levels) -> list[torch.Tensor]:
        """One image's levels (``[1, C, H, W]`` or ``[C, H, W]``) checked, on the decoder's device and dtype."""
        param = next(self.mask_decoder.parameters())
        levels = [t[None] if t.ndim == 3 else t for t in levels]
        if len(levels) != 3 or any(tuple(t.shape) != (1, *s) for t, s in zip(levels, self.level_shapes)):
            expected = ", ".join(f"[1, {c}, {h}, {w}]" for c, h, w in self.level_shapes)
            raise ValueError(
                f"Sam2Model.{method}: levels must be one image's {expected}, got {[tuple(t.shape) for t in levels]}"
            )
        return [t.to(device=param.device, dtype=param.dtype) for t in levels]

    def prompt(self, boxes=None, points=None, labels=None, masks=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse ``[N, T, 256]`` and dense ``[N, 256, 64, 64]`` embeddings of N prompts, as
        ``SAM2ImagePredictor._predict`` builds them: a box ``[N, 4]`` (x0, y0, x1, y1) becomes two points
        labelled 2 and 3, placed before any points ``[N, K, 2]`` (labels ``[N, K]``: 1 foreground,
        0 background, -1 padding); the prompt encoder then appends one not-a-point token. ``masks``
        ``[N, 1, 256, 256]``: low-resolution logits (e.g. a previous prediction's)."""
        like = next(self.prompt_encoder.parameters())
        coords = point_labels = None
        n = None
        if boxes is not None:
            coords = _as_tensor("prompt", "boxes", boxes, (4,), "[N, 4] (x0, y0, x1, y1)", like).reshape(-1, 2, 2)
            n = coords.shape[0]
            point_labels = torch.tensor([[2, 3]], device=like.device).repeat(n, 1)
        if points is not None or labels is not None:
            if points is None or labels is None:
                raise ValueError("Sam2Model.prompt: points and labels go together")
            points = _as_tensor("prompt", "points", points, (None, 2), "[N, K, 2] (x, y)", like)
            given_labels = torch.as_tensor(labels, device=like.device).to(torch.int64)
            if given_labels.shape != points.shape[:2]:
                raise ValueError(
                    f"Sam2Model.prompt: labels must be [N, K] = {tuple(points.shape[:2])}, "
                    f"got {tuple(given_labels.shape)}"
                )
            if n is not None and points.shape[0] != n:
                raise ValueError(f"Sam2Model.prompt: {points.shape[0]} point sets for {n} boxes")
            coords = points if coords is None else torch.cat([coords, points], dim=1)
            point_labels = given_labels if point_labels is None else torch.cat([point_labels, given_labels], dim=1)
            n = points.shape[0]
        if masks is not None:
            low = self.prompt_encoder.mask_input_size
            masks = torch.as_tensor(masks, dtype=like.dtype, device=like.device)
            if masks.ndim != 4 or tuple(masks.shape[1:]) != (1, *low) or (n is not None and masks.shape[0] != n):
                raise ValueError(
                    f"Sam2Model.prompt: masks must be [N, 1, {low[0]}, {low[1]}], got {tuple(masks.shape)}"
                )
        elif n is None:
            raise ValueError("Sam2Model.prompt: give boxes, points (with labels) or masks")
        points_in = None if coords is None else (coords, point_labels)
        return self.prompt_encoder(points=points_in, boxes=None, masks=masks)

    def decode(
        self, levels, sparse: torch.Tensor, dense: torch.Tensor, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's levels and N prompts' embeddings -> low-resolution logits ``[N, M, 256, 256]`` and
        predicted IoU ``[N, M]`` (M = 3 with ``multimask``, else 1), in ONE mask-decoder call.

        Without ``multimask``, in eval mode, an unstable single mask is replaced by the best of the three
        (``dynamic_multimask_via_stability``), as the predictor does. The logits are not clamped (the
        predictor clamps the low-resolution logits it returns to [-32, 32], not those it upsamples)."""
        image_embedding, s0, s1 = self._levels("decode", levels)
        low_res, iou, _, _ = self.mask_decoder(
            image_embeddings=image_embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=True,
            high_res_features=[s0, s1],
        )
        return low_res, iou

    def upsample(self, low_res: torch.Tensor, input_size, output_size) -> torch.Tensor:
        """Low-resolution logits -> logits at ``output_size`` ``(H, W)``, as the predictor post-processes them:
        one bilinear resize (SAM 2 does not pad, so there is nothing to crop)."""
        if tuple(input_size) != (self.img_size, self.img_size):
            raise ValueError(
                f"Sam2Model.upsample: input_size must be ({self.img_size}, {self.img_size}) for SAM 2.1 "
                f"(the whole image is resized to it), got {tuple(input_size)}"
            )
        return F.interpolate(low_res.float(), tuple(int(v) for v in output_size), mode="bilinear", align_corners=False)

    def encode_boxes(self, boxes) -> torch.Tensor:
        """``[N, 2, 256]``: the prompt encoder on N boxes ``x0, y0, x1, y1`` (input frame) alone, their two
        corner tokens (what a prompter learns to predict); the first two tokens of ``prompt(boxes=...)``."""
        like = next(self.prompt_encoder.parameters())
        boxes = _as_tensor("encode_boxes", "boxes", boxes, (4,), "[N, 4] (x0, y0, x1, y1)", like)
        with torch.no_grad():
            sparse, _ = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        return sparse

    def decode_tokens(self, levels, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """N predicted prompts ``[N, K, 256]`` of one image through the mask decoder (single mask), with the
        no-mask dense embedding. One not-a-point token is appended, as the prompt encoder appends it to every
        SAM 2 point/box prompt (``SAM2Base`` and the predictor never pass it ``boxes=``, so the decoder was
        trained with it): ``decode_tokens(levels, encode_boxes(b))`` is ``decode(levels, *prompt(boxes=b))``."""
        if tokens.ndim != 3 or tokens.shape[2] != self.module.hidden_dim:
            raise ValueError(
                f"Sam2Model.decode_tokens: tokens must be [N, K, {self.module.hidden_dim}], got {tuple(tokens.shape)}"
            )
        pe = self.prompt_encoder
        n = tokens.shape[0]
        tokens = tokens.to(pe.not_a_point_embed.weight)
        sparse = torch.cat([tokens, pe.not_a_point_embed.weight.expand(n, 1, -1)], dim=1)
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, *pe.image_embedding_size)
        return self.decode(levels, sparse, dense, multimask=False)
