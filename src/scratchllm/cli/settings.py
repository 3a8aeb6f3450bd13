"""A config dataclass on the command line: its fields as flags, and as a section of `--help`.

One source: each field's name, type, default and the comment above it in the config's source
(`config.base.field_docs`). `settings_help` writes them as a help section for commands that take
`--key value` overrides (train, data prepare, model info); `add_setting_flags` makes real flags of
chosen fields (generate's sampling options) and `given_settings` collects the ones typed. Values
stay strings here: the config converts and validates them, so a bad value gets the config's one
line. No torch here (`scratchllm --help` stays instant).
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from typing import Any

from scratchllm.config.base import Config, describe_type, field_docs

WIDTH = 100


def _show(value: Any) -> str:
    """A default as the user would type it.

    >>> _show(None), _show(True), _show("\\n"), _show(("a", "b")), _show(6e-4)
    ('none', 'true', "'\\\\n'", "'a','b'", '0.0006')
    """
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return ",".join(_show(v) for v in value) or "(none)"
    return str(value)


def field_lines(config: Config, prefix: str = "", indent: int = 2, skip: tuple[str, ...] = ()) -> list[str]:
    """`--prefix.name TYPE (default X)` and the field's comment, for each non-nested field of `config`
    (but those in `skip`)."""
    cls = type(config)
    types_, docs = cls.field_types(), field_docs(cls)
    out: list[str] = []
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        tp = types_[f.name]
        if (isinstance(tp, type) and issubclass(tp, Config)) or f.name in skip:
            continue
        out.append(f"{' ' * indent}--{prefix}{f.name} {describe_type(tp)} (default {_show(getattr(config, f.name))})")
        if docs.get(f.name):
            out += textwrap.wrap(docs[f.name], WIDTH, initial_indent=" " * (indent + 4),
                                 subsequent_indent=" " * (indent + 4), break_on_hyphens=False,
                                 break_long_words=False)
    return out


def settings_help(config: Config, title: str, prefix: str = "", skip: tuple[str, ...] = ()) -> str:
    """Every setting of `config` and of its nested configs, one section each (TOML table and flag),
    a nested table's own comment under its heading; top-level fields in `skip` are left out (they
    are flags of their own, see `add_setting_flags`)."""
    sections: list[str] = []

    def walk(c: Config, path: str, doc: str = "") -> None:
        lines = field_lines(c, f"{path}." if path else prefix, skip=skip if c is config else ())
        if lines:
            head = f"[{path}] settings" if path else title
            about = textwrap.wrap(doc, WIDTH, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False,
                                  break_long_words=False)
            sections.append(f"{head}:\n" + "\n".join(about + lines))
        types_, docs = type(c).field_types(), field_docs(type(c))
        for f in dataclasses.fields(c):  # type: ignore[arg-type]
            tp = types_[f.name]
            if isinstance(tp, type) and issubclass(tp, Config):
                walk(getattr(c, f.name), f"{path}.{f.name}" if path else f.name, docs.get(f.name, ""))

    walk(config, prefix.rstrip("."))
    return "\n\n".join(sections)


def add_settings_help(parser: argparse.ArgumentParser, config: Config, title: str, prefix: str = "",
                      note: str = "", skip: tuple[str, ...] = ()) -> None:
    """Append `settings_help` to the parser's help (as its epilog, kept verbatim)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    text = settings_help(config, title, prefix, skip)
    parser.epilog = (textwrap.fill(note, WIDTH) + "\n\n" if note else "") + text


def add_setting_flags(parser: argparse.ArgumentParser, config: Config, names: tuple[str, ...],
                      title: str, metavars: dict[str, str] | None = None,
                      aliases: dict[str, list[str]] | None = None) -> None:
    """A flag for each field in `names`, documented from the config: `top_k` -> `--top-k`.

    A tuple field's flag is repeatable (each use one item, taken whole); a bool field gets
    `--name/--no-name`. The field's own spelling (`--top_k`) and `aliases` (older spellings) work too
    but are not listed. Unset flags stay None, so only the typed ones reach `given_settings`.
    """
    group = parser.add_argument_group(title)
    cls = type(config)
    types_, docs = cls.field_types(), field_docs(cls)
    for name in names:
        tp = types_[name]
        if dataclasses.is_dataclass(tp):  # pragma: no cover - nested configs are not flags
            raise TypeError(f"{name} is a nested config")
        kind = describe_type(tp).replace(",...", ", repeatable")
        help_ = f"{kind}, default {_show(getattr(config, name))}. {docs.get(name, '')}".strip()
        kwargs: dict[str, Any] = {"dest": name}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            text = describe_type(tp)
            kwargs["metavar"] = (metavars or {}).get(name, text if text.startswith("{") else text.split(" ")[0])
            if text.endswith(",..."):
                kwargs["action"] = "append"
                kwargs["metavar"] = kwargs["metavar"].removesuffix(",...")
        flag = f"--{name.replace('_', '-')}"
        group.add_argument(flag, default=None, help=help_.replace("%", "%%"), **kwargs)
        hidden = ([f"--{name}"] if "_" in name and tp is not bool else []) + (aliases or {}).get(name, [])
        if hidden:
            group.add_argument(*hidden, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def given_settings(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """The fields among `names` whose flags were typed, as {name: value} (lists for repeatable ones)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
