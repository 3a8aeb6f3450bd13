"""The documentation site's generated pages: command reference, configuration reference, benchmarks.

They are made from the code itself at every build, so they cannot drift from it:
- `reference/commands.md`: every command's `--help`, from the CLI's own parser
  (`scratchllm.cli.build_parser`), walked down every level of subcommands.
- `reference/config.md`: every config dataclass of `scratchllm.config` (each module's, in source
  order) with each field's type, default and the comment above it (`config.base.field_docs`, the
  text `--help` shows).
- `benchmarks.md`: `benchmarks/RESULTS.md`, the benchmarks' latest results, as they wrote it.

mkdocs runs this file as a hook (`hooks:` in mkdocs.yml): `on_files` adds the pages to the build
without writing into docs/. To read them without mkdocs: `python docs/gen_reference.py OUT_DIR`.
The package is imported from this checkout's `src/`, so the site documents the code beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import os
import pkgutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Help text is wrapped to the terminal's width: fix it so the pages are the same on every machine.
HELP_COLUMNS = "100"
# Config modules in the order the reference lists them (any module not named here comes after).
CONFIG_ORDER = ["train", "model", "tokenizer", "data", "sample", "finetune", "lora"]


def _import_package():
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    import scratchllm

    return scratchllm


# --- commands -------------------------------------------------------------------------------------
def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """A parser's subcommands in the order `--help` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen, out = set(), []
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases point at the same parser
                    seen.add(id(sub))
                    out.append((name, sub))
            return out
    return []


def command_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """("scratchllm", parser), ("scratchllm data", ...), ("scratchllm data list", ...), ... depth first."""
    _import_package()
    from scratchllm.cli import build_parser

    out: list[tuple[str, argparse.ArgumentParser]] = []

    def walk(path: str, parser: argparse.ArgumentParser) -> None:
        out.append((path, parser))
        for name, sub in _subparsers(parser):
            walk(f"{path} {name}", sub)

    walk("scratchllm", build_parser())
    return out


def commands_page() -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        parsers = command_parsers()
        lines = ["# Command reference", "",
                 "Every command of `scratchllm` with its `--help`, generated from the command's own parser "
                 "(`scratchllm.cli.build_parser()`) when the site is built. Settings given as `--key value` "
                 "are described in the [configuration reference](config.md). Every command prints one "
                 "`error: ...` line and exits with code 2 on input it cannot use.", ""]
        lines += [f"- [`{path}`](#{_anchor(path)})" for path, _ in parsers[1:]]
        for path, parser in parsers:
            lines += ["", f"## {path} {{#{_anchor(path)}}}", "", "```text", parser.format_help().rstrip(), "```"]
        return "\n".join(lines) + "\n"
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def _anchor(text: str) -> str:
    return text.replace(" ", "-").replace("_", "-").lower()


# --- configuration ---------------------------------------------------------------------------------
def config_classes() -> list[type]:
    """Every Config dataclass defined in a module of `scratchllm.config`, modules in CONFIG_ORDER."""
    _import_package()
    import scratchllm.config as pkg
    from scratchllm.config.base import Config

    names = [m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name != "base"]
    names.sort(key=lambda n: (CONFIG_ORDER.index(n) if n in CONFIG_ORDER else len(CONFIG_ORDER), n))
    out = []
    for name in names:
        module = importlib.import_module(f"scratchllm.config.{name}")
        found = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, Config)
                 and c is not Config and dataclasses.is_dataclass(c) and c.__module__ == module.__name__]
        out += sorted(found, key=lambda c: inspect.getsourcelines(c)[1])
    return out


def _defaults(cls: type) -> dict[str, Any]:
    """Each field's default: from an instance when the class builds without arguments (defaults that
    __post_init__ or a factory fills), else from the field declarations."""
    try:
        obj = cls()
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)}
    except Exception:
        out = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                out[f.name] = f.default_factory()  # type: ignore[misc]
        return out


def _show(value: Any) -> str:
    """A default as it is written in TOML or on the command line."""
    from scratchllm.config.base import Config

    if isinstance(value, Config):
        return "its defaults"
    if value is None:
        return "`none`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value!r}`"
    if isinstance(value, (tuple, list)):
        return "`[" + ", ".join(repr(v) for v in value) + "]`"
    return f"`{value}`"


def config_page() -> str:
    from scratchllm.config.base import Config, describe_type, field_docs

    classes = config_classes()
    lines = ["# Configuration reference", "",
             "Every setting of scratchllm's typed configs, generated from the dataclasses in "
             "`scratchllm.config` when the site is built: name, type, default and the comment that explains "
             "it (the same text each command's `--help` shows). A recipe sets them in TOML tables "
             "(`[model]`, `[data]`, `[train]`, `[sample]`); on the command line they are `--table.key value` "
             "(or `--key value` when the name is unique). Values are checked when the config is built, with "
             "an error that names the field.", ""]
    lines += [f"- [`{c.__name__}`](#{c.__name__.lower()}) ({c.__module__})" for c in classes]
    for cls in classes:
        docs, types, defaults = field_docs(cls), cls.field_types(), _defaults(cls)
        lines += ["", f"## {cls.__name__} {{#{cls.__name__.lower()}}}", "", f"`{cls.__module__}.{cls.__name__}`"]
        about = inspect.getdoc(cls)
        if about and about != inspect.getdoc(Config) and not about.startswith(f"{cls.__name__}("):
            lines += ["", about]
        lines.append("")
        for f in dataclasses.fields(cls):
            tp = types[f.name]
            if isinstance(tp, type) and issubclass(tp, Config):
                kind = f"[{tp.__name__}](#{tp.__name__.lower()})"
            else:
                kind = f"`{describe_type(tp)}`"
            default = _show(defaults[f.name]) if f.name in defaults else "required"
            text = docs.get(f.name, "")
            lines.append(f"- **`{f.name}`** {kind}, default {default}" + (f": {text}" if text else ""))
    return "\n".join(lines) + "\n"


# --- benchmarks ------------------------------------------------------------------------------------
def benchmarks_page() -> str:
    results = ROOT / "benchmarks" / "RESULTS.md"
    body = results.read_text(encoding="utf-8")
    note = ("> Copied from `benchmarks/RESULTS.md` when the site is built. Each benchmark in `benchmarks/` "
            "replaces its own section when it runs; see the README for the commands.\n\n")
    first, _, rest = body.partition("\n")
    return first + "\n\n" + note + rest.lstrip("\n")


PAGES = {"reference/commands.md": commands_page, "reference/config.md": config_page,
         "benchmarks.md": benchmarks_page}


# --- the mkdocs hook -------------------------------------------------------------------------------
def on_files(files, config):
    from mkdocs.structure.files import File

    for uri, make in PAGES.items():
        files.append(File.generated(config, uri, content=make()))
    return files


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python docs/gen_reference.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    for uri, make in PAGES.items():
        path = out / uri
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(make(), encoding="utf-8")
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
