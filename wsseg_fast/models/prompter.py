"""WPS-SAM's query prompter: a SAM image embedding -> Q queries, each a class
(C classes + "no object") and K prompt tokens for SAM's mask decoder.

Embedding ``[B, 256, g, g]`` -> 2x [3x3 conv stride 2, LayerNorm2d, GELU] ->
DETR-style encoder/decoder transformer with a learned positional embedding ->
``num_queries`` learned queries -> ``Linear(d, C+1)`` class head and a 3-layer
MLP giving ``num_tokens`` prompt tokens of ``prompt_dim`` per query. Defaults
are the paper's (d=256, 8 heads, FFN 1024, 6+6 layers, 25 queries, 2 tokens).

``prompt_head="box"`` (not the paper's) has the MLP give a box per query instead, turned
into SAM's 2 corner tokens by SAM's own (frozen) box encoding: random Fourier features of
the corners plus the two corner embeddings. The tokens then always are ones SAM's prompt
encoder can produce, and the head regresses 4 numbers, not 512.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

PROMPT_HEADS = ("tokens", "box")


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a ``[B, C, H, W]`` map (as SAM's neck)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class QueryPrompter(nn.Module):
    """Prompt-free prompter over cached SAM embeddings.

    Args:
        num_classes: C foreground classes (the class head has C+1 outputs, the last "no object").
        embed_dim: channels of the SAM embedding (256 for every SAM variant).
        embed_size: side g of the embedding grid (64 for vit_b/l/h, 16 for ``tiny``).
        d_model, nhead, dim_feedforward, num_encoder_layers, num_decoder_layers: the transformer.
        num_queries: Q learned queries.
        num_tokens, prompt_dim: K prompt tokens of width D per query (SAM: 2 box-corner tokens of 256).
        dropout: transformer dropout.
        stride: of the two downsampling convs (the paper's 2 takes a 64x64 embedding to 16x16
            tokens; 1 keeps the 16x16 grid of ``tiny`` instead of 4x4).
        prompt_head: ``"tokens"`` (the paper's: the MLP gives the tokens) or ``"box"`` (the MLP
            gives a box, encoded as SAM does; call :meth:`set_box_encoder` before use).

    ``forward(embeddings)`` returns ``{"pred_logits": [B, Q, C+1], "pred_prompts": [B, Q, K, D]}``
    (with a box head also ``"pred_boxes": [B, Q, 4]``, ``x0, y0, x1, y1`` as fractions of SAM's
    square input frame), the format :class:`wsseg_fast.matching.PromptSetCriterion` takes.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        embed_dim: int = 256,
        embed_size: int = 64,
        d_model: int = 256,
        nhead: int = 8,
        dim_feedforward: int = 1024,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        num_queries: int = 25,
        num_tokens: int = 2,
        prompt_dim: int = 256,
        dropout: float = 0.1,
        stride: int = 2,
        prompt_head: str = "tokens",
    ):
        super().__init__()
        if prompt_head not in PROMPT_HEADS:
            raise ValueError(
                f"QueryPrompter: prompt_head must be one of {', '.join(PROMPT_HEADS)}, got {prompt_head!r}"
            )
        if prompt_head == "box" and (num_tokens != 2 or prompt_dim % 2):
            raise ValueError(
                f"QueryPrompter: a box head gives SAM's 2 corner tokens of an even width; got "
                f"num_tokens={num_tokens}, prompt_dim={prompt_dim}"
            )
        for name, value, low in (
            ("num_classes", num_classes, 1),
            ("embed_dim", embed_dim, 1),
            ("embed_size", embed_size, 4),
            ("num_queries", num_queries, 1),
            ("num_tokens", num_tokens, 1),
            ("prompt_dim", prompt_dim, 1),
            ("stride", stride, 1),
        ):
            if int(value) < low:
                raise ValueError(f"QueryPrompter: {name} must be >= {low}, got {value}")
        if d_model % nhead:
            raise ValueError(f"QueryPrompter: d_model ({d_model}) must be divisible by nhead ({nhead})")
        self.num_classes, self.embed_dim, self.embed_size = num_classes, embed_dim, embed_size
        self.num_queries, self.num_tokens, self.prompt_dim = num_queries, num_tokens, prompt_dim
        self.stride, self.prompt_head_kind = stride, prompt_head
        self.downsample = nn.Sequential(
            nn.Conv2d(embed_dim, d_model, 3, stride=stride, padding=1),
            LayerNorm2d(d_model),
            nn.GELU(),
            nn.Conv2d(d_model, d_model, 3, stride=stride, padding=1),
            LayerNorm2d(d_model),
            nn.GELU(),
        )
        side = math.ceil(math.ceil(embed_size / stride) / stride)  # as the two convs with padding 1
        self.pos_embed = nn.Parameter(torch.randn(1, side * side, d_model) * 0.02)
        self.query_embed = nn.Parameter(torch.randn(1, num_queries, d_model) * 0.02)
        self.transformer = nn.Transformer(
            d_model=d_model,
            nhead=nhead,
            num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            batch_first=True,
        )
        self.class_head = nn.Linear(d_model, num_classes + 1)
        self.prompt_head = nn.Sequential(
            nn.Linear(d_model, d_model),
            nn.ReLU(),
            nn.Linear(d_model, d_model),
            nn.ReLU(),
            nn.Linear(d_model, 4 if prompt_head == "box" else num_tokens * prompt_dim),
        )
        # The prompt head predicts standardised tokens; forward maps them back to SAM's
        # token space with the teacher tokens' per-dimension mean and std (set by
        # set_prompt_stats before training, saved with the weights; identity by default).
        self.register_buffer("prompt_mean", torch.zeros(num_tokens, prompt_dim))
        self.register_buffer("prompt_std", torch.ones(num_tokens, prompt_dim))
        if prompt_head == "box":  # SAM's box encoding, copied from its prompt encoder by set_box_encoder
            self.register_buffer("box_gaussian", torch.zeros(2, prompt_dim // 2))
            self.register_buffer("corner_embed", torch.zeros(2, prompt_dim))

    @torch.no_grad()
    def set_box_encoder(self, prompt_encoder) -> None:
        """Copy SAM's box encoding (its prompt encoder's random Fourier matrix and the two corner
        embeddings) into a box head, so that its tokens are the ones SAM would make of the box."""
        if self.prompt_head_kind != "box":
            raise ValueError("set_box_encoder: this prompter has a token head (prompt_head='tokens')")
        gaussian = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
        if tuple(gaussian.shape) != tuple(self.box_gaussian.shape):
            raise ValueError(
                f"set_box_encoder: SAM's box encoding is {tuple(gaussian.shape)}, the prompter's "
                f"{tuple(self.box_gaussian.shape)}"
            )
        self.box_gaussian.copy_(gaussian)
        self.corner_embed.copy_(
            torch.cat([prompt_encoder.point_embeddings[2].weight, prompt_encoder.point_embeddings[3].weight])
        )

    def box_tokens(self, boxes: torch.Tensor) -> torch.Tensor:
        """``[..., 4]`` boxes (fractions of the input frame) -> ``[..., 2, D]`` SAM corner tokens,
        as SAM's ``PromptEncoder._embed_boxes`` computes them."""
        corners = boxes.reshape(*boxes.shape[:-1], 2, 2) * 2 - 1
        angles = 2 * math.pi * corners @ self.box_gaussian
        return torch.cat([angles.sin(), angles.cos()], -1) + self.corner_embed

    @torch.no_grad()
    def set_prompt_stats(self, tokens: torch.Tensor) -> None:
        """Standardise the prompt head's output with the statistics of teacher tokens ``[N, K, D]``."""
        expected = (self.num_tokens, self.prompt_dim)
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != expected or tokens.shape[0] < 2:
            raise ValueError(
                f"set_prompt_stats: tokens must be [N >= 2, {expected[0]}, {expected[1]}], got {tuple(tokens.shape)}"
            )
        tokens = tokens.to(self.prompt_mean)
        self.prompt_mean.copy_(tokens.mean(0))
        self.prompt_std.copy_(tokens.std(0).clamp_min(1e-3))

    def config(self) -> dict:
        """The constructor arguments (stored in checkpoints to rebuild and check the model)."""
        t = self.transformer
        layer = t.encoder.layers[0] if len(t.encoder.layers) else t.decoder.layers[0]
        return {
            "num_classes": self.num_classes,
            "embed_dim": self.embed_dim,
            "embed_size": self.embed_size,
            "d_model": self.pos_embed.shape[-1],
            "nhead": layer.self_attn.num_heads,
            "dim_feedforward": layer.linear1.out_features,
            "num_encoder_layers": len(t.encoder.layers),
            "num_decoder_layers": len(t.decoder.layers),
            "num_queries": self.num_queries,
            "num_tokens": self.num_tokens,
            "prompt_dim": self.prompt_dim,
            "dropout": layer.dropout.p,
            "stride": self.stride,
            "prompt_head": self.prompt_head_kind,
        }

    def forward(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        expected = (self.embed_dim, self.embed_size, self.embed_size)
        if embeddings.dim() != 4 or tuple(embeddings.shape[1:]) != expected:
            raise ValueError(
                f"QueryPrompter: embeddings must be [B, {expected[0]}, {expected[1]}, {expected[2]}] "
                f"(the SAM variant it was built for), got {tuple(embeddings.shape)}"
            )
        param = self.pos_embed
        x = self.downsample(embeddings.to(device=param.device, dtype=param.dtype))
        src = x.flatten(2).transpose(1, 2) + self.pos_embed
        tgt = self.query_embed.expand(x.shape[0], -1, -1)
        hs = self.transformer(src, tgt)
        logits = self.class_head(hs)
        if self.prompt_head_kind == "box":
            centre, size = self.prompt_head(hs).sigmoid().split(2, -1)
            boxes = torch.cat([centre - size / 2, centre + size / 2], -1)
            return {"pred_logits": logits, "pred_prompts": self.box_tokens(boxes), "pred_boxes": boxes}
        prompts = self.prompt_head(hs).view(x.shape[0], self.num_queries, self.num_tokens, self.prompt_dim)
        prompts = prompts * self.prompt_std + self.prompt_mean
        return {"pred_logits": logits, "pred_prompts": prompts}
