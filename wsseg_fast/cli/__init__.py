"""The ``wsseg-fast`` command (also ``python -m wsseg_fast``).

One module per command group; each has ``register(subparsers)``, which adds its parsers and
sets ``func``. The flags of a command that runs a config dataclass are generated from its
fields (:mod:`wsseg_fast.cli.settings`), and such commands take ``--config FILE.yaml``.
``main`` dispatches; a :class:`~wsseg_fast.errors.UserError` (a bad setting, data file,
checkpoint or output directory) is printed as one line with exit status 2, not a traceback; so is a
full disk (ENOSPC, EDQUOT): every durable file is written whole or not at all, so running the same
command again once there is room resumes it.
"""

from __future__ import annotations

import argparse
import errno
import sys

from wsseg_fast.cli import cache, cam, data, experiment, info, prompter, pseudo_label, sam, student
from wsseg_fast.cli.common import UsageError
from wsseg_fast.cli.settings import parse_with_config
from wsseg_fast.errors import UserError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

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


def _command(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The (sub)parser that the leading command words of ``argv`` select, and the rest of ``argv``."""
    while parser._subparsers is not None:
        choices = parser._subparsers._group_actions[0].choices
        if not argv or argv[0] not in choices:
            break
        parser, argv = choices[argv[0]], argv[1:]
    return parser, argv


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    command = argv[0] if argv else None
    try:
        config = _config_path(argv)
        leaf, rest = _command(parser, argv)
        if config is not None and leaf is not parser:
            args = parse_with_config(leaf, rest, config)
            args.command = command
        else:
            args = parser.parse_args(argv)
        return args.func(args)
    except SystemExit as exc:  # argparse's --help, --list-methods, and its own usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except UserError as exc:
        print(f"wsseg-fast {command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(
            f"wsseg-fast {command}: error: {exc.strerror or 'no space left on device'}{where}: "
            "make room and run the same command again (it resumes)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"wsseg-fast {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
