"""What every command module shares: the user-error type, small argument parsers, and
``--config FILE.yaml`` for the training commands (flags override the file; the run
saves its fully resolved settings as ``config.yaml`` beside its checkpoints)."""

from __future__ import annotations

import argparse
import os

import yaml

from wsseg_fast.io import atomic_write_text

CONFIG_NAME = "config.yaml"
# Parsed values that are not settings of the run.
_NOT_SETTINGS = {"func", "command", "config"}


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def parse_size(text: str) -> int:
    """'500M', '2G', '1024' -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("B")
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 500M, 2G)") from None


def default_cache() -> str:
    return os.environ.get("WSSEG_FAST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "wsseg_fast")


def name_value(text: str, option: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise UsageError(f"{option} expects NAME=VALUE, got {text!r}")
    return name, value


def add_config(parser: argparse.ArgumentParser) -> None:
    """Give a training command ``--config FILE.yaml``: its keys are the command's flags
    (``--batch-size`` -> ``batch_size``), and flags given on the command line win."""
    parser.add_argument("--config", metavar="FILE.yaml",
                        help=f"settings from a YAML file (keys = flag names; flags override it; "
                             f"every run saves its resolved settings as OUT/{CONFIG_NAME})")


def apply_config(parser: argparse.ArgumentParser, argv: list[str], path: str) -> argparse.Namespace:
    """Parse ``argv`` with the YAML file's values as the command's defaults."""
    try:
        with open(path) as f:
            settings = yaml.safe_load(f) or {}
    except OSError as exc:
        raise UsageError(f"--config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise UsageError(f"--config {path}: not valid YAML ({where}{getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(settings, dict):
        raise UsageError(f"--config {path}: expected a mapping of flag names to values, got {type(settings).__name__}")
    actions = {a.dest: a for a in parser._actions if a.dest not in _NOT_SETTINGS | {"help"}}
    unknown = sorted(set(settings) - set(actions))
    if unknown:
        raise UsageError(f"--config {path}: unknown settings {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(actions))}")
    for key, value in settings.items():
        action = actions[key]
        if action.choices is not None and value not in action.choices and not isinstance(value, list):
            raise UsageError(f"--config {path}: {key} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
        if isinstance(value, str) and action.type is not None:
            value = action.type(value)
        action.required = False  # the file provides it
        action.default = value
    return parser.parse_args(argv)


def save_config(args: argparse.Namespace, out: str | os.PathLike) -> str:
    """Write the run's resolved settings to ``OUT/config.yaml``: ``--config`` of that file
    repeats the run."""
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_SETTINGS}
    path = os.path.join(os.fspath(out), CONFIG_NAME)
    atomic_write_text(path, yaml.safe_dump(settings, sort_keys=True))
    return path
