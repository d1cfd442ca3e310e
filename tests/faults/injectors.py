"""Faults to inject: a disk that fills up under the durable writer."""

from __future__ import annotations

import builtins
import errno
import os

from wsseg_fast import io as wio


class _FullFile:
    """A file on a disk that fills up: half of the first write lands, then ENOSPC."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


class DiskFull:
    """Makes the durable writer (:mod:`wsseg_fast.io`) hit a full disk at its ``after``-th file
    (0-based) and every one after it, until :meth:`free` is called."""

    def __init__(self, after: int):
        self.after, self.writes, self.failed, self.full = after, 0, [], True

    def open(self, path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        if mode == "wb" and os.path.basename(path).startswith(wio.TMP_PREFIX):
            self.writes += 1
            if self.full and self.writes > self.after:
                self.failed.append(path)
                return _FullFile(f)
        return f

    def free(self) -> None:
        self.full = False


def leftovers(root) -> list[str]:
    """Temporary files of the atomic writer anywhere under ``root``."""
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.startswith(wio.TMP_PREFIX)]
