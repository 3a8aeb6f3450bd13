"""Machinery shared by every config dataclass: from/to dicts, TOML files, `--key value` overrides.

A config is a dataclass that subclasses `Config`. Its fields have simple types (int, float, bool,
str, Literal, Optional, tuple of those) or are nested configs. Validation lives in each class's
`__post_init__` (first `check_finite`: no inf or nan in any float) and raises `ConfigError` with a
message that names the field and what to do. The `#` comment above a field is its documentation
(`field_docs`): the CLI's `--help` shows it with the field's type and default, so it is written once.
Strings are taken as given (never stripped).

What this is not: a general schema library. No exec, no globals, no magic beyond dataclasses.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from scratchllm.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert `value` (from TOML or a command-line string) to the annotated type `tp`.

    >>> _coerce("4", int, "n_layer")
    4
    >>> _coerce("none", int | None, "n_kv_head") is None
    True
    """
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in get_args(tp):
                return None
        errors = []
        for a in args:
            try:
                return _coerce(value, a, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{name}: cannot use {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        for c in choices:
            if value == c or (isinstance(value, str) and str(c) == value):
                return c
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, choices))}")
    if origin in (tuple, list):
        inner = get_args(tp)[0] if get_args(tp) else str
        if isinstance(value, str):
            # From the command line: items separated by commas, taken as typed (no stripping); ""
            # is the empty list. An item holding a comma is written in TOML (or, for generate's
            # stop strings, as a repeated --stop).
            value = value.split(",") if value != "" else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        out = [_coerce(v, inner, name) for v in value]
        return tuple(out) if origin is tuple else out
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    f = None
                if f is not None and f.is_integer():
                    return int(f)
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return tp.from_dict(value, prefix=f"{name}.")
        raise ConfigError(f"{name}: expected a table of settings, got {value!r}")
    return value


class Config:
    """Base for config dataclasses: `from_dict`, `to_dict`, `from_toml`, `override`."""

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        hints = get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, d: dict[str, Any], prefix: str = ""):
        """Build from a plain dict, converting values to field types; unknown keys are errors."""
        types_ = cls.field_types()
        unknown = sorted(set(d) - set(types_))
        if unknown:
            raise ConfigError(
                f"unknown setting {prefix}{unknown[0]!s} for {cls.__name__}; "
                f"known settings: {', '.join(sorted(types_))}"
            )
        kwargs = {k: _coerce(v, types_[k], prefix + k) for k, v in d.items()}
        return cls(**kwargs)  # type: ignore[call-arg]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, Config):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def from_toml(cls, path: str | Path, section: str | None = None):
        data = load_toml(path)
        if section is not None:
            data = data.get(section, {})
        return cls.from_dict(data)

    def override(self, overrides: dict[str, Any]):
        """Return a copy with `overrides` applied; keys may be dotted into nested configs.

        >>> from scratchllm.config.model import ModelConfig
        >>> ModelConfig().override({"n_layer": "2"}).n_layer
        2
        """
        current = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(current, key, value, type(self))
        return type(self).from_dict(current)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _set_dotted(d: dict[str, Any], key: str, value: Any, cls: type) -> None:
    """Put `value` at dotted `key` in the nested dict `d` of config class `cls`.

    An undotted key that is not a field of `cls` is looked up in its nested configs, when it names
    exactly one field there, so `--lr 3e-4` works as well as `--train.lr 3e-4`.
    """
    parts = key.replace("-", "_").split(".")
    types_ = cls.field_types()  # type: ignore[attr-defined]
    if len(parts) == 1 and parts[0] not in types_:
        owners = [
            name
            for name, tp in types_.items()
            if isinstance(tp, type) and issubclass(tp, Config) and parts[0] in tp.field_types()
        ]
        if len(owners) == 1:
            parts = [owners[0], parts[0]]
        elif len(owners) > 1:
            raise ConfigError(
                f"--{key} is ambiguous: write one of {', '.join('--' + o + '.' + parts[0] for o in owners)}"
            )
    head = parts[0]
    if head not in types_:
        raise ConfigError(f"unknown setting --{key}; known: {', '.join(sorted(types_))}")
    if len(parts) == 1:
        d[head] = value
        return
    sub = types_[head]
    if not (isinstance(sub, type) and issubclass(sub, Config)):
        raise ConfigError(f"--{key}: {head} has no settings inside it")
    d.setdefault(head, {})
    _set_dotted(d[head], ".".join(parts[1:]), value, sub)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning a missing file or a syntax error into one clear line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p} is not TOML (not UTF-8 text: byte offset {e.start}); "
                          f"give a .toml recipe") from None


def parse_overrides(args: list[str]) -> dict[str, str]:
    """Turn `["--n_layer", "4", "--train.lr=3e-4", "--compile"]` into a dict of strings.

    A flag with no value (followed by another flag or nothing) means "true".

    >>> parse_overrides(["--n_layer", "4", "--train.lr=3e-4", "--compile"])
    {'n_layer': '4', 'train.lr': '3e-4', 'compile': 'true'}
    """
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or len(a) <= 2:
            raise ConfigError(f"unexpected argument {a!r}: settings are given as --key value")
        key = a[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not (args[i + 1].startswith("--") and len(args[i + 1]) > 2):
            value = args[i + 1]
            i += 2
        else:
            value = "true"
            i += 1
        out[key.replace("-", "_")] = value
    return out


def field_docs(cls: type) -> dict[str, str]:
    """Each field's explanation: the `#` comment lines right above it in the class's source.

    The one source of a setting's documentation (the CLI's `--help` reads it from here). Section
    rulers (`# --- name ---`) are not part of a field's comment.

    >>> from scratchllm.config.sample import SampleConfig
    >>> field_docs(SampleConfig)["top_k"]
    'Keep only the k most likely tokens; None keeps all.'
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):  # pragma: no cover - no source (frozen app)
            continue
        comment: list[str] = []
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("#"):
                text = stripped.lstrip("#").strip()
                if not re.fullmatch(r"-+ .* -+|-+", text):
                    comment.append(text)
                continue
            m = re.match(r"    (\w+)\s*:", line)
            if m and m.group(1) in names:
                docs[m.group(1)] = " ".join(comment)
            comment = []
    return docs


def describe_type(tp: Any) -> str:
    """A field type as the help shows it.

    >>> describe_type(int | None), describe_type(Literal["a", "b"]), describe_type(tuple[str, ...])
    ('INT or none', '{a,b}', 'STR,...')
    """
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        text = " or ".join(describe_type(a) for a in args)
        return text + " or none" if type(None) in get_args(tp) else text
    if origin is Literal:
        return "{" + ",".join(map(str, get_args(tp))) + "}"
    if origin in (tuple, list):
        return describe_type(get_args(tp)[0] if get_args(tp) else str) + ",..."
    if tp is bool:
        return "true|false"
    return getattr(tp, "__name__", str(tp)).upper()


def check_finite(config: Any, prefix: str = "") -> None:
    """Reject inf and nan in every float setting of `config` (called first in each `__post_init__`)."""
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{prefix}{f.name} must be a finite number, got {v}")


def check(condition: bool, message: str) -> None:
    """Raise `ConfigError(message)` unless `condition`; used by `__post_init__` validators."""
    if not condition:
        raise ConfigError(message)
