"""The errors a user can fix.

Every problem with a user's input (a setting, a data file, a checkpoint, an output directory)
raises a :class:`UserError`; the ``wsseg-fast`` command prints it as one line and exits with
status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input; the message says what and how to fix it."""


class ConfigError(UserError):
    """A setting outside what a run accepts (a config dataclass failed its checks)."""


class DataError(UserError):
    """A dataset the run cannot use: annotations (missing, not JSON, not COCO-shaped), images or label maps."""


class CheckpointError(UserError):
    """A checkpoint file that is missing, unreadable/truncated, or made for another model or trainer."""
