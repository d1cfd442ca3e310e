"""Settings declared once.

A command's settings are the fields of one config dataclass derived from :class:`Config`: each
field's type, default and attribute docstring are the only place a setting is written. The
``wsseg-fast`` flags are generated from them (:mod:`wsseg_fast.cli.settings`), ``--config
FILE.yaml`` takes the same names, and every training run saves its resolved config as
``OUT/config.yaml``::

    @dataclass
    class MyConfig(Config):
        epochs: int = 10
        \"\"\"Passes over the data.\"\"\"

        amp: Literal["auto", "bf16", "off"] = "auto"
        \"\"\"Mixed precision.\"\"\"

        def validate(self):
            at_least(1, epochs=self.epochs)

On construction a config coerces and checks every value against its field's type (``Literal``
choices, ints, floats, tuples, dicts; paths become ``str``), then runs :meth:`Config.validate`;
a bad value raises :class:`~wsseg_fast.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import os
import textwrap
import types
import typing
from typing import Any, ClassVar, Literal

from wsseg_fast.errors import ConfigError


@dataclasses.dataclass
class Config:
    """Base of every run's settings (see the module docstring)."""

    RUNTIME: ClassVar[tuple[str, ...]] = ()
    """Fields that change where or how fast a run goes, not what it computes: a resumed run may
    change them (and ``epochs``, where a longer run continues a shorter one exactly)."""

    def __post_init__(self) -> None:
        for field, kind in typed_fields(type(self)):
            value = coerce(field.name, getattr(self, field.name), kind)
            allowed = field.metadata.get("choices")
            if allowed is not None and value is not None and value not in allowed:
                raise ConfigError(f"{field.name} must be one of {', '.join(map(str, allowed))}, got {value!r}")
            setattr(self, field.name, value)
        self.validate()

    def validate(self) -> None:
        """Checks beyond the field types; raise :class:`ConfigError` (see :func:`require`)."""

    def to_dict(self) -> dict[str, Any]:
        """The settings as builtins (YAML-, JSON- and ``weights_only``-safe)."""
        return {f.name: _builtins(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def run_settings(self) -> dict[str, Any]:
        """What a resumed run must repeat: every setting but the :attr:`RUNTIME` ones."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RUNTIME}


def choice(default, allowed) -> Any:
    """A field whose values come from a registry (``allowed``, e.g. the SAM models): checked on
    construction and offered as the flag's choices."""
    return dataclasses.field(default=default, metadata={"choices": tuple(allowed)})


def _builtins(value):
    if isinstance(value, (tuple, list)):
        return [_builtins(v) for v in value]
    if isinstance(value, dict):
        return {k: _builtins(v) for k, v in value.items()}
    return value


@functools.cache
def typed_fields(cls: type) -> tuple[tuple[dataclasses.Field, Any], ...]:
    """``(field, resolved type)`` of each init field of a config class."""
    hints = typing.get_type_hints(cls)
    return tuple((f, hints[f.name]) for f in dataclasses.fields(cls) if f.init)


def field_defaults(cls: type) -> dict[str, Any]:
    """Field name -> default, for the fields that have one."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = _builtins(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = _builtins(f.default_factory())
    return out


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its attribute docstring (the string right below it), whitespace collapsed,
    for the class and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError):  # defined where there is no source (an interactive session)
            continue
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def optional_part(kind) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; any other type -> ``(type, False)``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(kind)) == 2:
            return args[0], True
    return kind, False


def coerce(name: str, value, kind):
    """``value`` as the type ``kind`` of field ``name``, or a :class:`ConfigError`."""
    inner, optional = optional_part(kind)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must be set (got None)")
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if inner is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if inner is str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        items = [coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or inner is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        if not args:
            return dict(value)
        return {coerce(f"{name} key", k, args[0]): coerce(f"{name}[{k}]", v, args[1]) for k, v in value.items()}
    return value


def require(condition: bool, message: str) -> None:
    """A :class:`ConfigError` with ``message`` unless ``condition``."""
    if not condition:
        raise ConfigError(message)


def at_least(minimum: float, **values) -> None:
    """Each named value is a finite number >= ``minimum``."""
    for name, value in values.items():
        require(
            value is not None and math.isfinite(value) and value >= minimum, f"{name} must be >= {minimum}, got {value}"
        )


def positive(**values) -> None:
    """Each named value is a finite number > 0."""
    for name, value in values.items():
        require(
            value is not None and math.isfinite(value) and value > 0, f"{name} must be a positive number, got {value}"
        )


def within(low: float, high: float, **values) -> None:
    """Each named value lies in ``[low, high]``."""
    for name, value in values.items():
        require(value is not None and low <= value <= high, f"{name} must lie in [{low}, {high}], got {value}")
