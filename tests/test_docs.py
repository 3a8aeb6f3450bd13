"""The walkthroughs in docs/ run: every page's code blocks, in order, with their printed output checked.

The conventions a page follows (docs/index.md tells readers the same):
- A ```python block runs. The blocks of one page share one namespace, in a fresh temporary working
  directory, with $SCRATCHLLM_DATA_DIR pointing at the shared data folder.
- A ```text block right after a ```python block (blank lines between are fine) is what that block
  prints, exactly (trailing spaces and blank lines at the end aside). A ```python block without one
  may print anything.
- A ```console block holds commands: a line `$ scratchllm ...` runs through `scratchllm.cli.main`
  in the same folder, and the lines up to the next `$` are what it prints (stdout and stderr);
  other `$` lines (pip, make) are shown, not run.
- A ```bash block is shown, never run: the real-size commands that take hours live there.
- In expected output, `<...>` matches any text within one line, and a line that is only `<...>`
  matches any number of lines (timings, paths of the temporary folder; keep them rare).
- A picture `![...](img/NAME.png)` is drawn by the page's own code, which saves it as img/NAME.png
  in its working folder; the test checks that the page drew it (a PNG, not empty), and the rewrite
  below copies it into docs/img/, where the site shows it.

Pages seed every random draw and round what they print, so the output is the same on any CPU; the
runner makes torch single-threaded (as tests/conftest.py does for tiny models) so that results do
not depend on how a sum is split between threads.

    python tests/test_docs.py docs/02-working-with-text.md   # run a page, rewrite its expected output

The rewrite fills every ```text block (and console output) with what the code prints now, except
blocks that hold `<...>`, which it leaves and reports if they no longer match, and copies the
pictures the page drew into docs/img/.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
WILDCARD = "<...>"
FENCE = re.compile(r"^```(\w*)\s*$")
IMAGE = re.compile(r"!\[[^\]]*\]\((img/[\w.-]+\.png)\)")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Block:
    lang: str  # python | console | text | bash | ...
    line: int  # 1-based line of the opening fence
    start: int  # index of the first content line (0-based, into the page's lines)
    end: int  # index of the closing fence
    lines: list[str]
    expected: Block | None = None  # the ```text block that follows a python block
    outputs: list[str] = field(default_factory=list)  # what ran: one string per python block or command


def parse(text: str) -> list[Block]:
    """The fenced blocks of a Markdown page, each python block linked to the text block after it."""
    lines = text.split("\n")
    blocks: list[Block] = []
    i = 0
    last_end = -10
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        if j == len(lines):
            raise ValueError(f"line {i + 1}: a code block is not closed")
        block = Block(m.group(1), i + 1, i + 1, j, lines[i + 1:j])
        between = lines[last_end + 1:i] if blocks else []
        if (block.lang == "text" and blocks and blocks[-1].lang == "python" and blocks[-1].expected is None
                and all(not s.strip() for s in between)):
            blocks[-1].expected = block
        blocks.append(block)
        last_end = j
        i = j + 1
    return blocks


def pages() -> list[Path]:
    """The walkthroughs: every page of docs/ with a block that runs."""
    return [p for p in sorted(DOCS.glob("*.md"))
            if any(b.lang in ("python", "console") for b in parse(p.read_text(encoding="utf-8")))]


def images(text: str) -> list[str]:
    """The pictures a page shows from docs/img/ (paths relative to docs/).

    >>> images("see ![loss](img/05-loss.png) and ![x](https://example.org/x.png)")
    ['img/05-loss.png']
    """
    return IMAGE.findall(text)


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 100 and path.read_bytes()[:8] == PNG_SIGNATURE


def matches(expected: str, actual: str) -> bool:
    """`actual` equals `expected`, where `<...>` is a wildcard (see the module doc).

    >>> matches("loss 1.5\\n<...>\\ndone", "loss 1.5\\na\\nb\\ndone"), matches("took <...> s", "took 3.2 s")
    (True, True)
    >>> matches("loss 1.5", "loss 1.6")
    False
    """
    parts = []
    for line in normalise(expected).split("\n"):
        if line.strip() == WILDCARD:
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*".join(re.escape(p) for p in line.split(WILDCARD)) + "\n")
    return re.fullmatch("".join(parts), normalise(actual) + "\n") is not None


def normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.rstrip("\n").split("\n")).strip("\n")


def commands(block: Block) -> list[tuple[int, str, list[str]]]:
    """A console block's commands: (index of the `$` line in block.lines, command, expected lines)."""
    out = []
    for k, line in enumerate(block.lines):
        if line.startswith("$ "):
            out.append((k, line[2:], []))
        elif out:
            out[-1][2].append(line)
    return out


def run_cli(command: str) -> str:
    from scratchllm.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            rc = main(shlex.split(command)[1:])
        except SystemExit as e:  # --help exits
            rc = e.code
    if rc not in (0, None):
        buf.write(f"[exit code {rc}]\n")
    return buf.getvalue()


class PageFailed(AssertionError):
    pass


def run_page(path: Path, check: bool = True) -> list[Block]:
    """Run a page's blocks in order (in the current directory); with `check`, stop at the first
    output that differs from the page's. Returns the blocks with `outputs` filled."""
    blocks = parse(path.read_text(encoding="utf-8"))
    namespace: dict = {"__name__": f"docs.{path.stem}"}
    for b in blocks:
        where = f"{path.name}, block at line {b.line}"
        if b.lang == "python":
            buf = io.StringIO()
            code = compile("\n".join(b.lines) + "\n", f"{path.name}:{b.line}", "exec")
            with contextlib.redirect_stdout(buf):
                try:
                    exec(code, namespace)
                except Exception as e:
                    raise PageFailed(f"{where} raised {type(e).__name__}: {e}\n--- printed ---\n"
                                     f"{buf.getvalue()}") from e
            b.outputs = [buf.getvalue()]
            if check and b.expected is not None:
                want = "\n".join(b.expected.lines)
                if not matches(want, b.outputs[0]):
                    raise PageFailed(f"{where} printed\n{b.outputs[0]}\n--- the page shows ---\n{want}")
        elif b.lang == "console":
            for _, command, want in commands(b):
                if not command.startswith("scratchllm "):
                    b.outputs.append("")
                    continue
                got = run_cli(command)
                b.outputs.append(got)
                if check and not matches("\n".join(want), got):
                    raise PageFailed(f"{where}: `{command}` printed\n{got}\n--- the page shows ---\n"
                                     + "\n".join(want))
    return blocks


@contextlib.contextmanager
def page_environment(folder: Path, data_dir: Path):
    """A fresh working folder, the shared data, fixed terminal width, one torch thread; all put back."""
    import torch

    saved_env = {k: os.environ.get(k) for k in ("SCRATCHLLM_DATA_DIR", "COLUMNS", "MPLBACKEND")}
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.environ.update(SCRATCHLLM_DATA_DIR=str(data_dir), COLUMNS="100", MPLBACKEND="Agg")
    os.chdir(folder)
    torch.set_num_threads(1)
    torch.set_printoptions(profile="default")  # a page's print options do not leak into the next
    try:
        yield
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
        torch.set_printoptions(profile="default")
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.slow
@pytest.mark.parametrize("page", pages(), ids=lambda p: p.stem)
def test_walkthrough_runs(page: Path, tmp_path: Path, shared_data: Path) -> None:
    with page_environment(tmp_path, shared_data):
        blocks = run_page(page)
    for picture in images(page.read_text(encoding="utf-8")):
        assert is_png(tmp_path / picture), f"{page.name} shows {picture} but its code did not draw it"
        assert is_png(DOCS / picture), f"docs/{picture} is missing: run `python tests/test_docs.py {page}`"
    ran = [b for b in blocks if b.lang in ("python", "console")]
    assert ran and all(b.outputs for b in ran)
    checked = [b for b in ran if b.expected is not None or b.lang == "console"]
    assert checked, f"{page.name} shows no output to check"


def test_every_numbered_page_is_a_walkthrough() -> None:
    numbered = sorted(DOCS.glob("[0-9][0-9]-*.md"))
    assert numbered and set(numbered) <= set(pages())


def test_expected_output_conventions() -> None:
    text = "x\n\n```python\nprint(1)\n```\n\n```text\n1\n```\n\n```text\nnot output\n```\n"
    py, out, other = parse(text)
    assert py.expected is out and other.lang == "text" and other is not py.expected
    block = parse("```console\n$ scratchllm --version\nscratchllm <...>\n$ pip install x\n```\n")[0]
    assert [c for _, c, _ in commands(block)] == ["scratchllm --version", "pip install x"]
    assert matches("a\n<...>\nz", "a\nz") and not matches("a\nz", "a\nb\nz")


# --- rewriting a page's expected output -------------------------------------------------------------
def rewrite(path: Path, blocks: list[Block]) -> list[str]:
    """Put what ran into the page's text blocks and console outputs; returns the blocks left alone."""
    lines = path.read_text(encoding="utf-8").split("\n")
    edits: list[tuple[int, int, list[str]]] = []  # (start, end) line range -> new lines
    kept = []
    for b in blocks:
        if b.lang == "python" and b.expected is not None and b.outputs:
            want = "\n".join(b.expected.lines)
            if WILDCARD in want:
                if not matches(want, b.outputs[0]):
                    kept.append(f"line {b.expected.line}: differs, has {WILDCARD}:\n{b.outputs[0]}")
                continue
            edits.append((b.expected.start, b.expected.end, normalise(b.outputs[0]).split("\n")))
        elif b.lang == "console" and b.outputs:
            new: list[str] = []
            for (_, command, want), got in zip(commands(b), b.outputs):
                new.append("$ " + command)
                if not command.startswith("scratchllm ") or WILDCARD in "\n".join(want):
                    new += want
                elif got.strip():
                    new += normalise(got).split("\n")
            edits.append((b.start, b.end, new))
    for start, end, new in sorted(edits, reverse=True):
        lines[start:end] = new
    path.write_text("\n".join(lines), encoding="utf-8")
    return kept


def main(argv: list[str]) -> int:
    import shutil
    import tempfile

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import shared_data_dir

    for name in argv:
        path = Path(name).resolve()
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp, page_environment(Path(tmp), shared_data_dir()):
            blocks = run_page(path, check=False)
            for picture in images(path.read_text(encoding="utf-8")):
                if not is_png(Path(tmp) / picture):
                    print(f"{path.name}: shows {picture} but its code did not draw it")
                    continue
                (DOCS / picture).parent.mkdir(exist_ok=True)
                shutil.copyfile(Path(tmp) / picture, DOCS / picture)
        for note in rewrite(path, blocks):
            print(f"{path.name} {note}")
        print(f"{path.name}: ran in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# --- the generated reference pages (docs/gen_reference.py) ----------------------------------------
def _gen_reference():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_command_reference_lists_every_command() -> None:
    import argparse

    from scratchllm.cli import COMMANDS, build_parser

    page = _gen_reference().commands_page()
    found = []

    def walk(path: str, parser: argparse.ArgumentParser) -> None:
        found.append(path)
        assert f"\n## {path} {{#" in page, f"{path} is missing from the command reference"
        assert parser.description is None or " ".join(parser.description.split()[:4]) in " ".join(page.split())
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(f"{path} {name}", sub)

    walk("scratchllm", build_parser())
    assert len(found) > len(COMMANDS)  # the commands and their subcommands (data list, export hf, ...)


def test_config_reference_lists_every_field() -> None:
    import dataclasses
    import importlib
    import pkgutil

    import scratchllm.config as pkg
    from scratchllm.config.base import Config, field_docs

    page = _gen_reference().config_page()
    classes = set()
    for m in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"scratchllm.config.{m.name}")
        classes |= {c for c in vars(module).values() if isinstance(c, type) and issubclass(c, Config)
                    and c is not Config and c.__module__ == module.__name__}
    assert {"ModelConfig", "TrainConfig", "RunConfig", "SampleConfig", "DataConfig"} <= {c.__name__ for c in classes}
    sections = page.split("\n## ")
    for cls in classes:
        section = next((s for s in sections if s.startswith(f"{cls.__name__} ")), None)
        assert section is not None, f"{cls.__name__} is missing from the config reference"
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            line = next((ln for ln in section.splitlines() if ln.startswith(f"- **`{f.name}`**")), None)
            assert line is not None, f"{cls.__name__}.{f.name} is missing from the config reference"
            assert docs.get(f.name, "") in line
