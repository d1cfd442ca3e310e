"""The on-disk SAM embedding cache shared by every stage.

One safetensors file per entry, ``ROOT/embeddings/<k[:2]>/<k>.safetensors``, where
the key ``k`` is a BLAKE2b digest of the decoded pixels, the preprocessing and the
encoder identity (model type, weights digest, backend, precision, storage dtype).

- Atomic: an entry is written to a temporary file in the same directory, fsynced,
  then ``os.replace``d into place; readers never see half an entry, and two
  processes writing the same key both write the same bytes (last rename wins).
- Verified: the header holds a BLAKE2b checksum of the tensor bytes and sizes; a
  mismatch, a truncated file or an unparsable header is reported (a warning),
  the entry dropped, and the caller recomputes.
- Accounted: ``info()`` (entries, bytes), ``prune(max_bytes=, older_than=)`` removes
  least-recently-used entries first (reads refresh the file's mtime).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load, save

from wsseg_fast.io import TMP_PREFIX, atomic_write_bytes, atomic_write_json, file_digest

FORMAT = "wsseg-fast-embedding-v1"
STORAGE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
SUFFIX = ".safetensors"
STALE_TMP_SECONDS = 3600


@dataclass
class Embedding:
    """The value the cache stores: one image's SAM features (as stored: fp16 or fp32) with the sizes needed
    to map prompts in and masks out. ``tensor`` is the image embedding ``[256, g, g]`` every family has;
    ``extra`` the further levels a family's decoder reads (SAM 2.1: ``[32, 4g, 4g]`` and ``[64, 2g, 2g]``)."""

    tensor: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    extra: tuple[torch.Tensor, ...] = ()

    @property
    def levels(self) -> list[torch.Tensor]:
        """Every feature level, the image embedding first."""
        return [self.tensor, *self.extra]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.levels)


class CorruptEntryWarning(UserWarning):
    """A cache entry failed verification and was dropped."""


def default_cache_dir() -> str:
    """Where the commands keep embeddings unless told otherwise: ``$WSSEG_FAST_CACHE`` or
    ``~/.cache/wsseg_fast``."""
    return os.environ.get("WSSEG_FAST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "wsseg_fast")


def pixels_digest(image: np.ndarray) -> str:
    """BLAKE2b-128 of a decoded image (shape, dtype and pixel bytes), so the key does not
    depend on the file's encoding, name or metadata."""

    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.shape}|{image.dtype}".encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()


def _checksum(data: bytes, original_size, input_size) -> str:
    h = hashlib.blake2b(data, digest_size=16)
    h.update(f"|{tuple(original_size)}|{tuple(input_size)}".encode())
    return h.hexdigest()


@dataclass
class CacheEntry:
    key: str
    path: str
    size: int
    mtime: float


class EmbeddingCache:
    """See the module docstring. ``dtype``: how embeddings are stored, ``fp16`` (default) or ``fp32``."""

    def __init__(self, root: str | os.PathLike, dtype: str = "fp16"):
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"EmbeddingCache: dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
        self.root = os.fspath(root)
        self.dtype = dtype
        os.makedirs(os.path.join(self.root, "embeddings"), exist_ok=True)

    # -- keys ---------------------------------------------------------------
    def key(self, pixels: str, identity: dict) -> str:
        """The entry key for an image digest (:func:`pixels_digest`) and an encoder identity."""
        payload = json.dumps({"pixels": pixels, "storage": self.dtype, **identity}, sort_keys=True)
        return hashlib.blake2b(payload.encode(), digest_size=20).hexdigest()

    def path(self, key: str) -> str:
        return os.path.join(self.root, "embeddings", key[:2], key + SUFFIX)

    # -- read/write ---------------------------------------------------------
    def get(self, key: str) -> Embedding | None:
        """The entry, verified, or ``None`` when absent or corrupt (then dropped, with a warning)."""
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        problem = self._check(raw, key)
        if isinstance(problem, str):
            warnings.warn(
                f"embedding cache: dropped corrupt entry {path}: {problem}", CorruptEntryWarning, stacklevel=2
            )
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return None
        try:
            os.utime(path)  # LRU: a read makes the entry recent
        except OSError:
            pass
        return problem

    def put(self, key: str, embedding: Embedding) -> str:
        """Store an embedding's levels (cast to the storage dtype) atomically; returns the path."""
        levels = [t.detach().to("cpu", STORAGE_DTYPES[self.dtype]).contiguous() for t in embedding.levels]
        data = b"".join(t.numpy().tobytes() for t in levels)
        meta = {
            "format": FORMAT,
            "key": key,
            "original_size": json.dumps(list(embedding.original_size)),
            "input_size": json.dumps(list(embedding.input_size)),
            "checksum": _checksum(data, embedding.original_size, embedding.input_size),
        }
        path = self.path(key)
        tensors = {"embedding": levels[0], **{f"level{i}": t for i, t in enumerate(levels[1:], start=1)}}
        atomic_write_bytes(path, save(tensors, metadata=meta))
        return path

    @staticmethod
    def _check(raw: bytes, key: str | None) -> Embedding | str:
        """The embedding in ``raw``, or a string saying what is wrong with it."""
        try:
            n = int.from_bytes(raw[:8], "little")
            header = json.loads(raw[8 : 8 + n])
            meta = header.get("__metadata__", {})
            tensors = load(raw)
            levels = [tensors["embedding"]] + [tensors[f"level{i}"] for i in range(1, len(tensors))]
        except Exception as exc:
            return f"unreadable ({type(exc).__name__}: {exc})"
        if meta.get("format") != FORMAT:
            return f"unknown format {meta.get('format')!r}"
        if key is not None and meta.get("key") != key:
            return f"holds key {meta.get('key')!r}, expected {key!r}"
        try:
            original, resized = tuple(json.loads(meta["original_size"])), tuple(json.loads(meta["input_size"]))
        except Exception:
            return "bad size fields"
        if _checksum(b"".join(t.numpy().tobytes() for t in levels), original, resized) != meta.get("checksum"):
            return "checksum mismatch"
        return Embedding(tensor=levels[0], original_size=original, input_size=resized, extra=tuple(levels[1:]))

    # -- maintenance ----------------------------------------------------------
    def entries(self) -> list[CacheEntry]:
        out = []
        base = os.path.join(self.root, "embeddings")
        for shard in sorted(os.listdir(base)) if os.path.isdir(base) else ():
            sdir = os.path.join(base, shard)
            if not os.path.isdir(sdir):
                continue
            for name in sorted(os.listdir(sdir)):
                if not name.endswith(SUFFIX) or name.startswith(TMP_PREFIX):
                    continue
                p = os.path.join(sdir, name)
                try:
                    st = os.stat(p)
                except FileNotFoundError:  # removed by another process meanwhile
                    continue
                out.append(CacheEntry(name[: -len(SUFFIX)], p, st.st_size, st.st_mtime))
        return out

    def _temporaries(self) -> list[str]:
        base = os.path.join(self.root, "embeddings")
        found = []
        for shard in os.listdir(base) if os.path.isdir(base) else ():
            sdir = os.path.join(base, shard)
            if os.path.isdir(sdir):
                found += [os.path.join(sdir, n) for n in os.listdir(sdir) if n.startswith(TMP_PREFIX)]
        return found

    def info(self) -> dict:
        entries = self.entries()
        return {
            "root": self.root,
            "entries": len(entries),
            "bytes": sum(e.size for e in entries),
            "oldest_access": min((e.mtime for e in entries), default=None),
            "newest_access": max((e.mtime for e in entries), default=None),
            "temporary_files": len(self._temporaries()),
        }

    def verify(self, remove: bool = True) -> dict:
        """Check every entry; corrupt ones are listed (and removed when ``remove``)."""
        ok, bad = 0, []
        for e in self.entries():
            try:
                with open(e.path, "rb") as f:
                    problem = self._check(f.read(), e.key)
            except FileNotFoundError:
                continue
            if isinstance(problem, str):
                bad.append({"path": e.path, "problem": problem})
                if remove:
                    try:
                        os.unlink(e.path)
                    except FileNotFoundError:
                        pass
            else:
                ok += 1
        return {"ok": ok, "corrupt": bad, "removed": remove}

    def prune(self, max_bytes: int | None = None, older_than: float | None = None) -> dict:
        """Remove entries not read for ``older_than`` seconds, then least recently used ones
        until the cache holds at most ``max_bytes``; also removes stale temporary files."""
        now = time.time()
        removed, freed = 0, 0
        for tmp in self._temporaries():  # left behind by killed writers
            try:
                if now - os.stat(tmp).st_mtime > STALE_TMP_SECONDS:
                    freed += os.stat(tmp).st_size
                    os.unlink(tmp)
            except FileNotFoundError:
                pass
        entries = sorted(self.entries(), key=lambda e: e.mtime)
        total = sum(e.size for e in entries)
        for e in entries:
            too_old = older_than is not None and now - e.mtime > older_than
            too_big = max_bytes is not None and total > max_bytes
            if not (too_old or too_big):
                continue
            try:
                os.unlink(e.path)
            except FileNotFoundError:
                continue
            removed, freed, total = removed + 1, freed + e.size, total - e.size
        return {"removed": removed, "freed_bytes": freed, "bytes": total}

    # -- weights digests ---------------------------------------------------------
    def file_digest(self, path: str | os.PathLike) -> str:
        """BLAKE2b of a (checkpoint) file, remembered by path, size and mtime so that a
        warm run does not re-read a 2.5 GB checkpoint to compute its cache keys."""
        st = os.stat(path)
        memo_path = os.path.join(self.root, "file-digests.json")
        token = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"
        try:
            with open(memo_path) as f:
                memo = json.load(f)
        except (FileNotFoundError, ValueError):
            memo = {}
        if token not in memo:
            memo[token] = file_digest(path)
            atomic_write_json(memo_path, memo)
        return memo[token]
