"""Settings dataclasses: each field declared once with its default, help and bounds.

A settings class is a frozen dataclass deriving from :class:`Settings` whose fields are
made with :func:`setting`. The field's type hint says what a value may be (an integer, a
number, text, a ``Literal``'s choices, ``None`` where optional, a tuple of integers) and
its bounds what range it may take, so one check (:meth:`Settings.__post_init__`) reads
every field, as scikit-learn's ``_parameter_constraints`` table does. Values from a TOML
file, a JSON file or a ``--set KEY=VALUE`` string are coerced to the field's type
(:func:`from_dict`), and :func:`listing` writes the ``--help`` lines. The concrete
settings are in :mod:`qcore.config`.
"""

from __future__ import annotations

import dataclasses
import numbers
import typing
from collections.abc import Callable, Sequence
from dataclasses import field, fields
from typing import Any, Literal, Self

from qcore.errors import QCoreError

# A field's bounds: an interval "(0, 1]" / "[0, 1)" / ..., "> 0", ">= 1", or a function
# ``check(key, value)`` that raises QCoreError. None (the value of an optional field) passes.
Bounds = str | Callable[[str, Any], None] | None


def setting(default: Any, help: str, bounds: Bounds = None) -> Any:  # noqa: A002  (argparse's word)
    """A dataclass field with one line of help (listed by ``--help``) and its bounds."""
    return field(default=default, metadata={"help": help, "bounds": bounds})


def check_choice(key: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise QCoreError(f"unknown {key} {value!r}: choose {', '.join(choices)}")


def check_bounds(key: str, value: Any, bounds: Bounds) -> None:
    """Raise a QCoreError naming ``key`` when ``value`` lies outside ``bounds``."""
    if bounds is None:
        return
    if callable(bounds):
        bounds(key, value)
        return
    if bounds.startswith(">"):
        op, limit = bounds.split()
        if not (value > float(limit) if op == ">" else value >= float(limit)):
            raise QCoreError(f"setting {key} must be {bounds}, got {value}")
        return
    lo, hi = (float(x) for x in bounds[1:-1].split(","))
    above = value > lo if bounds[0] == "(" else value >= lo
    below = value < hi if bounds[-1] == ")" else value <= hi
    if not (above and below):
        raise QCoreError(f"setting {key} must lie in {bounds}, got {value}")


def check_value(key: str, value: Any, hint: Any, bounds: Bounds) -> None:
    """One field's value against its type hint and its bounds."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is Literal:
        check_choice(key, value, typing.get_args(hint))
    elif typing.get_origin(hint) is tuple:
        for item in value:
            check_value(key, item, int, bounds)
        return
    elif hint is int and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise QCoreError(f"setting {key} must be an integer, got {value!r}")
    elif hint is float and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise QCoreError(f"setting {key} must be a number, got {value!r}")
    elif hint is str and not isinstance(value, str):
        raise QCoreError(f"setting {key} must be text, got {value!r}")
    check_bounds(key, value, bounds)


_HINTS: dict[type, dict[str, Any]] = {}


def hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of a settings class (read once per class)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def settings_of(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are settings (made with :func:`setting`)."""
    return [f for f in fields(cls) if "help" in f.metadata]


class Settings:
    """What every settings dataclass offers: its fields checked on construction, a
    JSON-ready dict, construction from one (each value coerced to its field's type)
    and ``replace``."""

    def __post_init__(self) -> None:
        types = hints(type(self))
        for f in settings_of(type(self)):
            check_value(f.name, getattr(self, f.name), types[f.name], f.metadata["bounds"])

    def to_dict(self) -> dict[str, object]:
        """The settings as a JSON-ready dict (tuples become lists)."""
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in settings_of(type(self))
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Self:
        return from_dict(cls, data)

    def replace(self, **changes: object) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


C = typing.TypeVar("C")


def from_dict(cls: type[C], data: dict[str, object], kind: str = "setting(s)") -> C:
    """``cls`` from a dict of (TOML, JSON or ``--set`` string) values; an unknown key
    fails with an error that names it (as ``kind``)."""
    known = {f.name for f in settings_of(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise QCoreError(f"unknown {kind}: {', '.join(unknown)}")
    types = hints(cls)
    return cls(**{k: coerce(k, v, types[k]) for k, v in data.items()})


def coerce(key: str, value: Any, hint: object) -> object:
    """Turn a TOML value or a ``--set`` string into the field's type, or say why not."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(int(str(v).strip()) for v in items if str(v).strip())
        if type(None) in args:  # optional value
            if value in (None, "", "none", "None"):
                return None
            if float in args:
                return float(value)
            return int(value) if int in args else str(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise QCoreError(f"setting {key}: cannot read {value!r} as {hint}") from None


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """``["key=value", ...]`` -> dict, with a clear error for a malformed pair."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise QCoreError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def listing(cfg: Settings, names: Sequence[str]) -> list[str]:
    """``  name = value`` and an indented help line for each setting of ``cfg`` named."""
    lines = []
    for name in names:
        value = getattr(cfg, name)
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        lines.append(f"  {name} = {'none' if shown is None else shown}")
        help_text = type(cfg).__dataclass_fields__[name].metadata["help"]  # type: ignore[attr-defined]
        lines.append(f"      {help_text}")
    return lines
