"""Reading a ``train-cam`` checkpoint: this version's run directory, or the format before it."""

from __future__ import annotations

import os

import torch

from wsseg_fast.errors import CheckpointError
from wsseg_fast.models.cam import CamClassifier, resnet50_body
from wsseg_fast.pipelines.training import FORMAT

LEGACY_VERSION = 2  # checkpoints written before the shared run directory: {"meta": {"version": 2, ...}, "model"}


def _meta(state, path: str) -> dict:
    """The metadata of a train-cam checkpoint of this version or the legacy one."""
    if isinstance(state, dict) and state.get("format") == FORMAT and state.get("trainer") == "cam":
        return state["meta"]
    meta = state.get("meta") if isinstance(state, dict) else None
    if isinstance(meta, dict) and meta.get("version") == LEGACY_VERSION:
        return meta
    if isinstance(meta, dict) and "version" in meta:
        raise CheckpointError(
            f"{path} is a train-cam checkpoint of format {meta['version']}, this version reads "
            f"{LEGACY_VERSION} and its own: train it again"
        )
    raise CheckpointError(f"{path} is not a train-cam checkpoint")


def load_cam(path: str, backbone: str | None = None, model: str | None = None) -> tuple[CamClassifier, dict]:
    """A trained classifier (eval mode) and its metadata. A checkpoint of another ``backbone``
    than the one asked for (None: any), or of a ``sam`` backbone whose SAM variant is not
    ``model``, is one :class:`CheckpointError` line."""
    if not path or not os.path.isfile(path):
        raise CheckpointError(f"cam=PATH: checkpoint not found: {path!r} (train one with wsseg-fast train-cam)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file at all
        raise CheckpointError(f"{path} is not a train-cam checkpoint ({type(exc).__name__})") from None
    meta = _meta(state, path)
    sam_mismatch = meta["backbone"] == "sam" and model is not None and meta["model"] != model
    if (backbone is not None and meta["backbone"] != backbone) or sam_mismatch:
        wanted = f"{backbone or 'sam'} ({model})" if model else backbone
        raise CheckpointError(
            f"{path} was trained on backbone {meta['backbone']} ({meta['model']}); this run uses {wanted}"
        )
    body = resnet50_body() if meta["backbone"] == "resnet50" else None
    net = CamClassifier(meta["in_channels"], meta["num_classes"], meta["hidden"], meta["num_subclasses"], body)
    net.load_state_dict(state["model"])
    return net.eval(), meta
