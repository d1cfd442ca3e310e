"""A ``sam-head`` student's inputs: every training image's SAM features, encoded once before
training and read from the embedding cache in every epoch (no encoder in the training loop)."""

from __future__ import annotations

from pathlib import Path

import torch

from wsseg_fast.errors import DataError
from wsseg_fast.pipelines.label_maps import read_image
from wsseg_fast.sam.engine import SamEngine

ENCODE_CHUNK = 16  # images decoded at once while encoding: bounds the memory, not the speed


class SamFeatures:
    """The SAM features of ``paths`` under ``engine``: looked up (and the missing ones encoded, or,
    with ``engine.encode`` off, refused) on construction, then read per image. With a cache each
    read is a verified cache entry, so any number of images fits and DataLoader workers read in
    parallel; without one the features stay in memory."""

    def __init__(self, engine: SamEngine, paths: list[Path]):
        self.img_size = engine.img_size
        self.cache = engine.cache
        self.paths = [str(p) for p in paths]
        self.keys: list[str] = []
        self.sizes: list[tuple[int, int]] = []
        self.memory: list[list[torch.Tensor]] = []
        for start in range(0, len(paths), ENCODE_CHUNK):
            images = [read_image(p).numpy() for p in paths[start : start + ENCODE_CHUNK]]
            keys = [engine.key(im) for im in images]
            for key, emb in zip(keys, engine.embed(images, keys=keys)):
                self.sizes.append(tuple(emb.original_size))
                if self.cache is None:
                    self.memory.append(emb.levels)
                else:
                    self.keys.append(key)
        self.stats = engine.stats

    def __len__(self) -> int:
        return len(self.sizes)

    def original_size(self, index: int) -> tuple[int, int]:
        return self.sizes[index]

    def levels(self, index: int) -> list[torch.Tensor]:
        """Image ``index``'s feature levels as stored (fp16 by default), the image embedding first."""
        if self.cache is None:
            return self.memory[index]
        embedding = self.cache.get(self.keys[index])
        if embedding is None:
            raise DataError(
                f"the embedding of {self.paths[index]} left the cache {self.cache.root} during training (pruned or "
                "corrupt): re-run the command, which encodes it again and resumes"
            )
        return embedding.levels
