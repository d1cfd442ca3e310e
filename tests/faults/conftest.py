"""Fault injection: a full disk, corrupted cache entries, replaced inputs, killed processes."""

import pytest

from tests.faults.injectors import DiskFull
from tests.helpers import one_torch_thread  # noqa: F401  (autouse: one thread here)
from wsseg_fast import io as wio


@pytest.fixture
def disk_full(monkeypatch):
    """``disk_full(after)``: from the ``after``-th durable file on, every write fails with ENOSPC."""

    def install(after: int) -> DiskFull:
        fault = DiskFull(after)
        monkeypatch.setattr(wio, "open", fault.open, raising=False)
        return fault

    return install
