"""``key=value`` overrides and config values checked against a dataclass's annotations.

Generic over any config dataclass (the linear trainer's :class:`vsc.config.Config`, the
DNN trainer's): the expected type of each key is its field annotation.

* ``int``: an integer (``2.0`` and ``1e4`` are taken as 2 and 10000; ``2.5``, ``"abc"``,
  ``true`` are refused);
* ``float``: a finite number (``1`` is taken as 1.0; strings, booleans, ``nan`` and
  ``inf`` are refused);
* ``bool``: ``true`` or ``false``;
* ``str``: any text (an override's text is taken as written, so ``name=2024`` is the
  string ``"2024"``); with choices (a field made by :func:`choice`, any field with
  ``metadata={"choices": (...)}``, or a ``Literal[...]`` annotation) one of them;
* ``X | None``: an ``X``, or ``none``/``null`` on the command line;
* ``dict``/``list``: a TOML inline table/array.

Override values use TOML syntax (``1e-3``, ``true``, ``"max"``, ``[1, 2]``); text that
is not TOML is a bare string. Every bad key or value is reported, one line each naming
the key, the value and what is expected, in one :class:`ConfigError` (a ``ValueError``);
an unknown key gets the closest known key as a suggestion. :func:`describe_fields` is
the table ``vsc keys`` prints (types, defaults, one-line help taken from the field's
``metadata["help"]`` or its trailing ``# comment`` in the class source).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import io
import math
import tokenize
import tomllib
import types
import typing
from typing import Any, Literal

NONE_WORDS = ("none", "null", "None")


class ConfigError(ValueError):
    """One or more bad config keys or values; ``lines`` holds one message per problem."""

    def __init__(self, lines: list[str]):
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


def parse_value(text: str) -> Any:
    """A command-line value with TOML syntax (``1e-3``, ``true``, ``"max"``), or the bare
    text when it is not a single TOML value."""
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    # "1\nw = 2" parses as two keys: that is not one value.
    return parsed["v"] if list(parsed) == ["v"] else text


def split_overrides(overrides) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """``["k=v", ...]`` -> (parsed values, the raw text of each, error lines)."""
    values, raw, errors = {}, {}, []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            errors.append(f"override {item!r} is not key=value (see `vsc keys` for the keys)")
            continue
        key, text = item.split("=", 1)
        key, text = key.strip(), text.strip()
        values[key], raw[key] = parse_value(text), text
    return values, raw, errors


# --------------------------------------------------------------------------------------
# What each field expects
# --------------------------------------------------------------------------------------

def _unwrap_optional(tp) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], optional
        return typing.Union[tuple(args)], optional
    return tp, False


def choice(default: str, choices, help: str = "") -> Any:
    """A dataclass field whose value must be one of ``choices``."""
    return dataclasses.field(default=default, metadata={"choices": tuple(choices), "help": help})


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def field_choices(field: dataclasses.Field, tp) -> tuple | None:
    choices = field.metadata.get("choices") if field.metadata else None
    if choices is not None:
        return tuple(choices)
    base, _ = _unwrap_optional(tp)
    if typing.get_origin(base) is Literal:
        return typing.get_args(base)
    return None


def type_name(tp) -> str:
    base, optional = _unwrap_optional(tp)
    if isinstance(base, type):
        name = base.__name__
    else:
        name = str(base).replace("typing.", "")
    return name + (" | None" if optional else "")


def _expected(tp, choices) -> str:
    base, optional = _unwrap_optional(tp)
    if choices is not None:
        what = "one of " + ", ".join(map(repr, choices))
    else:
        what = {bool: "true or false", int: "an integer", float: "a finite number",
                str: "a string", dict: "a table {key = value, ...}",
                list: "a list [...]"}.get(base, type_name(base))
    return what + (" or none" if optional else "")


class _Bad(Exception):
    pass


def coerce(value, tp, choices=None, raw: str | None = None):
    """``value`` as the annotation ``tp`` wants it, or :class:`_Bad`."""
    base, optional = _unwrap_optional(tp)
    if value is None or (optional and raw is not None and value in NONE_WORDS):
        if optional:
            return None
        raise _Bad
    if base is bool:
        if isinstance(value, bool):
            return value
        raise _Bad
    if base is int:
        if isinstance(value, bool):
            raise _Bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise _Bad
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Bad
        if not math.isfinite(value):
            raise _Bad
        return float(value)
    if base is str or choices is not None:
        if not isinstance(value, str):
            if raw is None:
                raise _Bad
            value = raw  # name=2024: the text as written
        if choices is not None and value not in choices:
            raise _Bad
        return value
    if base in (dict, list) or typing.get_origin(base) in (dict, list):
        expected = typing.get_origin(base) or base
        if isinstance(value, expected):
            return value
        raise _Bad
    return value


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if not close:
        parts = set(key.lower().split("_"))
        close = [k for k in known if parts & set(k.split("_")) - {""}][:1]
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{hint} (`vsc keys` lists the keys)"


def _shown(key, value, raw) -> str:
    text = f"{key}={raw if raw is not None else repr(value)}"
    return text if text.isprintable() else repr(text)


def check_values(cls, values: dict, raw: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> dict:
    """``values`` coerced to the field types of dataclass ``cls`` (plus ``extra``:
    key -> type of keys that are not fields, such as ``quick``); raises
    :class:`ConfigError` listing every unknown key and every bad value."""
    raw = raw or {}
    extra = extra or {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    types_ = {**field_types(cls), **extra}
    out, errors = {}, []
    for key, value in values.items():
        if key not in types_:
            errors.append(f"{_shown(key, value, raw.get(key))}: unknown key"
                          f"{_suggest(key, types_)}")
            continue
        choices = field_choices(fields[key], types_[key]) if key in fields else None
        try:
            out[key] = coerce(value, types_[key], choices, raw.get(key))
        except _Bad:
            errors.append(f"{_shown(key, value, raw.get(key))}: expected "
                          f"{_expected(types_[key], choices)}")
    if errors:
        raise ConfigError([f"config: {line}" for line in errors])
    return out


def check_instance(instance) -> None:
    """Coerce and check every field of a dataclass instance in place (for
    ``__post_init__``, so that a config built in Python is checked as a file is)."""
    values = {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}
    for key, value in check_values(type(instance), values).items():
        object.__setattr__(instance, key, value)


# --------------------------------------------------------------------------------------
# `vsc keys`
# --------------------------------------------------------------------------------------

def field_help(cls) -> dict[str, str]:
    """One line of help per field: ``metadata["help"]``, else the trailing comment of
    the field's line in the class source (comment lines indented further continue the
    previous field's comment), else the section comment above it, in brackets."""
    try:
        source = inspect.getsource(cls)
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (OSError, TypeError, tokenize.TokenError, SyntaxError):
        source, tokens = "", []
    names = {f.name for f in dataclasses.fields(cls)}
    lines = source.splitlines()
    comments = {t.start[0]: (t.string[1:], not lines[t.start[0] - 1][:t.start[1]].strip())
                for t in tokens if t.type == tokenize.COMMENT}
    helps: dict[str, str] = {}
    section, last = "", None
    for number, line in enumerate(lines, 1):
        name = line.strip().split(":", 1)[0].strip() if ":" in line else None
        text, standalone = comments.get(number, ("", False))
        if text.startswith("  ") and last is not None:  # continues the previous comment
            helps[last] = f"{helps[last]} {text.strip()}".strip()
            text = ""
        if name in names:
            helps[name] = text.strip() or (f"[{section}]" if section else "")
            last = name
        elif standalone and text:
            section, last = text.strip(), None
    for f in dataclasses.fields(cls):
        if f.metadata and f.metadata.get("help"):
            helps[f.name] = f.metadata["help"]
    return helps


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return "(required)"


def describe_fields(cls, values: dict | None = None) -> str:
    """A table of the keys of dataclass ``cls``: name, type, default (or the value in
    ``values``, e.g. a loaded config) and help."""
    types_ = field_types(cls)
    helps = field_help(cls)
    rows = [("key", "type", "value" if values is not None else "default", "help")]
    for f in dataclasses.fields(cls):
        value = values[f.name] if values is not None and f.name in values else _default(f)
        shown = "none" if value is None else json_like(value)
        choices = field_choices(f, types_[f.name])
        help = helps.get(f.name, "")
        if choices is not None:
            help = f"one of {', '.join(map(str, choices))}" + (f": {help}" if help else "")
        rows.append((f.name, type_name(types_[f.name]), shown, help))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3]
                     for r in rows).rstrip()


def json_like(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
