"""What every command module shares: the command-line error and small argument parsers."""

from __future__ import annotations

import argparse

from wsseg_fast.errors import UserError


class UsageError(UserError):
    """A problem with the command line: printed as one line, exit status 2."""


def parse_size(text: str) -> int:
    """'500M', '2G', '1024' -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("B")
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 500M, 2G)") from None


def add_quiet(parser: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bars or per-epoch lines (``--no-progress`` is the same flag)."""
    parser.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress output")
