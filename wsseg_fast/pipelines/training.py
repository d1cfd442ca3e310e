"""What every trainer shares: the run directory, the epoch loop, loss meters, the epoch's
seeded order and mixed precision.

::

    OUT/config.yaml   the resolved settings: ``--config OUT/config.yaml`` repeats the run
    OUT/last.pt       the state after the last finished epoch (the checkpoint, below)
    OUT/log.jsonl     one record per finished epoch, rewritten from the checkpoint's history
    OUT/<artifact>    what the trainer delivers (``prompter.pt``, ``finetuned.pth``, ``sam.pth``)

One checkpoint convention, readable with ``torch.load(weights_only=True)``::

    {"format": "wsseg_fast.run/1", "trainer": "student", "settings": {...}, "epoch": 3,
     "history": [{"epoch": 1, ...}, ...], **state}

where ``settings`` is the config's :meth:`~wsseg_fast.config.Config.run_settings` and ``state``
is the trainer's (``model``, ``optimizer``, and what its loader needs under ``meta``).

Re-running a command resumes it: a directory holding a checkpoint of the same trainer and
settings continues after its last finished epoch (a larger ``epochs`` extends a finished run);
another trainer or other settings is refused in one line. Every file is written atomically and
only by rank 0 under ``torchrun``; the epoch's shuffling and augmentation depend only on
(seed, epoch), so a resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

import torch
import yaml

from wsseg_fast.config import Config, field_defaults
from wsseg_fast.errors import UserError
from wsseg_fast.io import TMP_PREFIX, atomic_torch_save, atomic_write_text

FORMAT = "wsseg_fast.run/1"
CHECKPOINT_NAME = "last.pt"
LOG_NAME = "log.jsonl"
CONFIG_NAME = "config.yaml"


class RunDirError(UserError):
    """An output directory that holds another run (one line from the CLI)."""


class RunDir:
    """A trainer's output directory (see the module docstring).

    Args:
        out: the directory.
        trainer: the trainer's name, recorded in the checkpoint (``student``, ``cam``, ...).
        config: the run's settings.
        settings: what a resumed run must repeat (default ``config.run_settings()``).
        rank: this process's rank; only rank 0 writes.
    """

    def __init__(
        self, out: str | os.PathLike, trainer: str, config: Config, settings: dict | None = None, rank: int = 0
    ):
        self.path, self.trainer, self.config, self.rank = Path(out), trainer, config, rank
        self.settings = config.run_settings() if settings is None else settings
        self.history: list[dict] = []

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_NAME

    def start(self) -> dict | None:
        """Create the directory and save ``config.yaml``; return the checkpoint to resume from
        (``None``: a new run), or refuse one of another trainer or other settings. A killed
        run's temporary files are removed, and a log that missed the checkpoint's last epoch
        (the disk filled between the two) is rewritten."""
        if self.rank == 0:
            self.path.mkdir(parents=True, exist_ok=True)
            for name in os.listdir(self.path):
                if name.startswith(TMP_PREFIX):
                    os.unlink(self.path / name)
            atomic_write_text(self.path / CONFIG_NAME, yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        if not self.checkpoint.exists():
            return None
        try:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated by something other than this code, or not a checkpoint
            raise RunDirError(
                f"{self.checkpoint} cannot be read ({type(exc).__name__}); delete it to start over"
            ) from None
        if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("trainer") != self.trainer:
            raise RunDirError(
                f"{self.checkpoint} is not a {self.trainer} checkpoint of this version of wsseg_fast: "
                "use another --out, or delete it to start over"
            )
        changed = self._changed(state["settings"])
        if changed:
            raise RunDirError(
                f"{self.path} holds a {self.trainer} run with other settings ({', '.join(changed)} "
                f"differ): use another --out, or delete {self.checkpoint} to start over"
            )
        self.history = list(state["history"])
        if self.rank == 0 and self.history and not self._log_is_current():
            atomic_write_text(self.path / LOG_NAME, self._log_text())
        return state

    def _log_text(self) -> str:
        return "".join(json.dumps(r) + "\n" for r in self.history)

    def _log_is_current(self) -> bool:
        try:
            return (self.path / LOG_NAME).read_text() == self._log_text()
        except (OSError, UnicodeDecodeError):
            return False

    def _changed(self, stored: dict) -> list[str]:
        """Settings that differ from the stored ones (a setting the checkpoint predates counts
        as its default)."""
        defaults = field_defaults(type(self.config))
        return sorted(k for k, v in self.settings.items() if stored.get(k, defaults.get(k)) != v)

    def save(self, record: dict, state: dict) -> None:
        """Record a finished epoch: the checkpoint (atomic), then ``log.jsonl`` from its history."""
        self.history.append(record)
        if self.rank != 0:
            return
        atomic_torch_save(
            {
                "format": FORMAT,
                "trainer": self.trainer,
                "settings": self.settings,
                "epoch": record["epoch"],
                "history": self.history,
                **state,
            },
            self.checkpoint,
        )
        atomic_write_text(self.path / LOG_NAME, self._log_text())

    def save_artifact(self, name: str, obj) -> Path:
        """``OUT/name``: a file the trainer delivers (``torch.save`` format, atomic, rank 0)."""
        if self.rank == 0:
            atomic_torch_save(obj, self.path / name)
        return self.path / name


class Trainer(Protocol):
    """What :func:`fit` runs: one epoch at a time, with a state to checkpoint and resume, and
    ``meta``: what its data and weights decided (classes, digests), which a resumed run must share."""

    meta: dict

    def train_epoch(self, epoch: int) -> dict:
        """Train epoch ``epoch`` (from 0); return its record (losses, ...)."""

    def state_dict(self) -> dict:
        """Everything a resumed run needs, and what the trainer's loader reads."""

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's state."""

    def describe(self, record: dict) -> str:
        """One line about an epoch's record, for the log on the console."""


def fit(
    trainer: Trainer,
    run: RunDir,
    epochs: int,
    say: Callable[[str], None] = print,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> int:
    """Resume ``trainer`` from ``run``'s checkpoint (if any) and train it to ``epochs``, checkpointing
    after every epoch; returns the epoch it started from."""
    state = run.start()
    start = 0
    if state is not None:
        stored = state.get("meta", {})
        changed = sorted(k for k, v in getattr(trainer, "meta", {}).items() if stored.get(k) != v)
        if changed:  # what the data or the weights decided: they must not have changed either
            raise RunDirError(
                f"cannot resume {run.path}: its {', '.join(changed)} differ from this run's "
                f"(other data or weights): use another --out, or delete {run.checkpoint}"
            )
        trainer.load_state_dict(state)
        start = int(state["epoch"])
    for epoch in range(start, epochs):
        began = time.perf_counter()
        record = {"epoch": epoch + 1, **trainer.train_epoch(epoch)}
        record.setdefault("seconds", round(time.perf_counter() - began, 3))
        run.save(record, trainer.state_dict())
        say(f"epoch {epoch + 1}/{epochs}: {trainer.describe(record)} [{record['seconds']:.1f} s]")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)
    return start


class Meter:
    """Named means over an epoch, summed over the ranks: each value counts with a weight (a
    batch's images, say) and ``means`` divides each name's sum by its own total weight."""

    def __init__(self, *names: str):
        self.names = names
        self.sums = torch.zeros(2, len(names), dtype=torch.float64)  # weighted sums, weights

    def add(self, weight: float = 1.0, **values: float) -> None:
        """Values that each count ``weight`` times (a batch's mean loss, weighted by its images)."""
        self.add_sums(weight, **{name: value * weight for name, value in values.items()})

    def add_sums(self, weight: float, **sums: float) -> None:
        """Sums over ``weight`` items (a loss summed over an image's instances)."""
        for name, value in sums.items():
            i = self.names.index(name)
            self.sums[0, i] += value
            self.sums[1, i] += weight

    def means(self, ctx=None) -> dict[str, float]:
        """Each name's mean over what every rank added (``ctx``: a DistContext; 0 for a name
        nothing was added to)."""
        sums = self.sums if ctx is None else ctx.all_sum(self.sums)
        return {name: (sums[0, i] / sums[1, i]).item() if sums[1, i] > 0 else 0.0 for i, name in enumerate(self.names)}


def epoch_shard(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's indices of ``n`` items for ``epoch``: a permutation seeded by (seed, epoch), padded
    by wrapping around to a multiple of ``world`` (as DistributedSampler pads), every ``world``-th
    from ``rank``."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    pad = -n % world
    order = torch.cat([order, order.repeat(pad // n + 1)[:pad]]) if pad else order
    return order[rank::world]


Amp = Literal["auto", "bf16", "fp16", "off"]
AMP_MODES = typing.get_args(Amp)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``; ``None`` = fp32. ``auto`` keeps fp32 on CPUs,
    where bf16 autocast is usually slower without AMX units."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16
