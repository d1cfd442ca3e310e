"""A command's flags, generated from its config dataclass, and ``--config FILE.yaml``.

:func:`add_settings` gives a parser one flag per field of a :class:`~wsseg_fast.config.Config`:
``--field-name`` (or the name in ``flags``), typed, defaulted and documented by the field (its
attribute docstring is the ``--help`` text). By type:

- ``bool``: ``--x`` / ``--no-x``;
- ``Literal[...]``: the choices;
- ``tuple[int, ...]``: comma-separated (``--widths 16,32,64``);
- ``list[str]``: one or more values;
- ``dict[str, T]``: repeatable ``NAME=VALUE`` (``--weight boxes=2 --weight tags=0.5``);
- an optional field whose default is not ``None`` also gets ``--no-x`` (sets it to ``None``).

:func:`settings_from_args` builds the config from the parsed flags: the one place a command
turns its arguments into settings. ``--config FILE.yaml`` (:func:`parse_with_config`) takes the
same names as the fields (``batch_size: 8``); flags given on the command line win.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Literal

import yaml

from wsseg_fast.cli.common import UsageError
from wsseg_fast.config import field_docs, optional_part, typed_fields

# Parsed values that are not settings of the run.
NOT_SETTINGS = {"func", "command", "config", "help", "settings_class"}


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers (16,32,64), got {text!r}") from None


def _argument(field: dataclasses.Field, kind, flag: str) -> dict:
    """``add_argument`` keywords for a field of type ``kind``."""
    inner, _ = optional_part(kind)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    default = _default(field)
    if inner is bool:
        return {"action": argparse.BooleanOptionalAction, "default": default}
    if origin is Literal:
        return {"choices": args, "default": default, "required": required, "type": type(args[0])}
    if origin is tuple:
        return {"type": _int_tuple, "default": default, "required": required, "metavar": "N,N,..."}
    if origin is list:
        return {"nargs": "+", "default": default, "required": required}
    if origin is dict or inner is dict:
        return {"action": "append", "default": None, "metavar": "NAME=VALUE"}
    if inner in (int, float, str):
        return {"type": inner, "default": default, "required": required, "choices": field.metadata.get("choices")}
    raise TypeError(f"add_settings: no flag for field {field.name!r} of type {kind}")


def _help(doc: str, default) -> str:
    if (
        default is None
        or default is False
        or default == ""
        or (isinstance(default, (tuple, list, dict)) and not default)
    ):
        return doc.replace("%", "%%")
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    return f"{doc} (default: {default})".replace("%", "%%")


def add_settings(
    parser: argparse.ArgumentParser, cls: type, flags: dict[str, str] | None = None, skip: tuple[str, ...] = ()
) -> None:
    """One flag per field of config class ``cls`` (see the module docstring), and ``--config``.
    ``flags`` renames the flags that read differently from their field; ``skip`` leaves fields
    to their defaults (or to the command, which passes them to :func:`settings_from_args`)."""
    docs = field_docs(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field, kind in typed_fields(cls):
        if field.name in skip:
            continue
        title = _group_title(cls, field.name)
        if title is None:
            target = parser
        else:
            target = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        flag = (flags or {}).get(field.name, "--" + field.name.replace("_", "-"))
        options = _argument(field, kind, flag)
        target.add_argument(
            flag, dest=field.name, help=_help(docs.get(field.name, ""), options.get("default")), **options
        )
        if optional_part(kind)[1] and _default(field) is not None:
            target.add_argument(
                f"--no-{flag[2:]}", dest=field.name, action="store_const", const=None, help=f"no {flag[2:]}"
            )
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="settings from a YAML file (keys = setting names, e.g. batch_size; flags given "
        "here win; every training run saves its resolved settings as OUT/config.yaml)",
    )
    parser.set_defaults(settings_class=cls)


def _group_title(cls: type, name: str) -> str | None:
    """The ``FLAG_GROUP`` of the class that declares field ``name`` (settings shared by several
    commands, listed under their own heading in ``--help``), if it has one."""
    for klass in cls.__mro__:
        if name in vars(klass).get("__annotations__", {}):
            return vars(klass).get("FLAG_GROUP")
    return None


def _pairs(name: str, flag: str, items) -> dict[str, str]:
    if isinstance(items, dict):
        return dict(items)
    out = {}
    for text in items:
        key, sep, value = str(text).partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{flag} expects NAME=VALUE, got {text!r}")
        out[key] = value  # a later pair wins (a flag over the --config file's)
    return out


def settings_from_args(cls: type, args: argparse.Namespace, flags: dict[str, str] | None = None, **given):
    """The config of class ``cls`` from parsed flags (dict flags' ``NAME=VALUE`` pairs become the
    mapping, typed by the field), with ``given`` values taking precedence."""
    values = {}
    for field, kind in typed_fields(cls):
        if field.name in given or not hasattr(args, field.name):
            continue
        value = getattr(args, field.name)
        inner, _ = optional_part(kind)
        if typing.get_origin(inner) is dict or inner is dict:
            if value is None:
                if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                    flag = (flags or {}).get(field.name, "--" + field.name.replace("_", "-"))
                    raise UsageError(f"the following arguments are required: {flag}")
                continue
            flag = (flags or {}).get(field.name, "--" + field.name.replace("_", "-"))
            value = _pairs(field.name, flag, value)
            value_type = (typing.get_args(inner) or (str, str))[1]
            if value_type in (int, float):
                try:
                    value = {k: value_type(v) for k, v in value.items()}
                except ValueError as exc:
                    raise UsageError(f"{flag}: {exc}") from None
        values[field.name] = value
    return cls(**values, **given)


def _load_yaml(path: str) -> dict:
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
        raise UsageError(
            f"--config {path}: expected a mapping of setting names to values, got {type(settings).__name__}"
        )
    return settings


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str], path: str) -> argparse.Namespace:
    """Parse ``argv`` with the YAML file's values as the parser's defaults."""
    settings = _load_yaml(path)
    actions = {a.dest: a for a in parser._actions if a.dest not in NOT_SETTINGS and a.option_strings}
    unknown = sorted(set(settings) - set(actions))
    if unknown:
        raise UsageError(f"--config {path}: unknown settings {', '.join(unknown)}; known: {', '.join(sorted(actions))}")
    for key, value in settings.items():
        action = actions[key]
        if action.choices is not None and value not in action.choices:
            raise UsageError(
                f"--config {path}: {key} must be one of {', '.join(map(str, action.choices))}, got {value!r}"
            )
        if isinstance(value, str) and action.type is not None:
            value = action.type(value)
        if isinstance(action, argparse._AppendAction) and isinstance(value, dict):  # NAME=VALUE flags
            value = [f"{k}={v}" for k, v in value.items()]
        action.required = False  # the file provides it
        parser.set_defaults(**{key: value})
    return parser.parse_args(argv)
