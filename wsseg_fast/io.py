"""Durable file I/O: the one place that writes files meant to survive a crash.

Every durable file of the toolkit (cache entries, checkpoints, pseudo-label PNGs,
manifests, reports, resolved configs) is written through :func:`atomic_write_bytes`:
the bytes go to a temporary file in the target's directory, are fsynced, then
``os.replace``d into place and the directory is fsynced. A reader sees the old
file or the whole new one, never half; a process killed mid-write leaves at most
a ``.tmp-*`` file, which the writers' owners clean up.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from contextlib import contextmanager

TMP_PREFIX = ".tmp-"


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: str | os.PathLike):
    """Yield a temporary path beside ``path`` for a writer that needs a file name (an ONNX
    export, a TensorRT engine); on success it is fsynced and renamed over ``path``, on
    failure removed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(directory)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either the old or the whole new bytes."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Indented, key-sorted JSON with a final newline (diff-friendly manifests and reports)."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` with :func:`atomic_write_bytes`' guarantee (checkpoints of every stage)."""
    import torch  # the cache's key helpers and the CLI's config code need no torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def file_digest(path: str | os.PathLike) -> str:
    """BLAKE2b-128 of a file's bytes (hex)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line to a log and fsync it (logs are the only files written in place)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
