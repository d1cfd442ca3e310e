"""The ``wsseg-fast`` command (also ``python -m wsseg_fast``).

One module per command group; each has ``register(subparsers)``, which adds its
parsers and sets ``func``. ``main`` dispatches. Errors a user can fix exit with
status 2 and one clear line (:class:`UsageError`), not a traceback. Training
commands take ``--config FILE.yaml`` (see :mod:`wsseg_fast.cli.common`).
"""

from __future__ import annotations

import argparse
import sys

from wsseg_fast.cli import cache, cam, data, experiment, info, prompter, pseudo_label, sam, student
from wsseg_fast.cli.common import UsageError, apply_config

COMMAND_GROUPS = (info, data, pseudo_label, cache, sam, experiment, student, cam, prompter)

__all__ = ["UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsseg-fast", description="Weakly-supervised segmentation with SAM, fast.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    command = argv[0] if argv else None
    try:
        config = _config_path(argv)
        subparsers = parser._subparsers._group_actions[0].choices
        if config is not None and command in subparsers:
            args = apply_config(subparsers[command], argv[1:], config)
            args.command = command
        else:
            args = parser.parse_args(argv)
        return args.func(args)
    except UsageError as exc:
        print(f"wsseg-fast {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wsseg-fast {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
