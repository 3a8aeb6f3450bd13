"""Test helpers for chat and the web page: a tiny model folder, and a program run in a pseudo-terminal.

The model reads characters (printable ASCII, newline, and `<|endoftext|>`), so whatever it writes
shows in a terminal as it is, and its answers can be compared with `generate_text` exactly.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import string
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHARS = sorted(set(string.printable[:95] + "\n"))  # printable ASCII and newline


def char_tokenizer():
    from scratchllm.tokenizer.char import CharTokenizer

    return CharTokenizer(CHARS, {"<|endoftext|>": len(CHARS)})


def save_tiny(folder: Path, template: str | None = None, seed: int = 0, context_length: int = 512) -> Path:
    """A tiny random GPT with the character tokenizer as a checkpoint folder; `template` goes into
    generation.json's "prompt_template" (None: a base model)."""
    import torch

    from scratchllm.checkpoint import save_checkpoint
    from scratchllm.config.model import ModelConfig
    from scratchllm.model import GPT

    tokenizer = char_tokenizer()
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16,
                            context_length=context_length, init_std=0.3))
    extra = None
    if template is not None:
        extra = {"generation.json": lambda p: p.write_text(json.dumps({"prompt_template": template}))}
    return save_checkpoint(folder, model, tokenizer=tokenizer, state={"step": 0}, extra_files=extra)


def child_env() -> dict[str, str]:
    """The environment of a scratchllm child process: this worktree's source, one thread, a dumb terminal."""
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               OMP_NUM_THREADS="1", TERM="dumb", PYTHONUNBUFFERED="1")
    return env


ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")


class Terminal:
    """A program in a pseudo-terminal: `send` types, `expect` reads until a text shows up."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: its stdin, stdout and stderr are the terminal
            try:
                # the signals a shell gives a program it starts in the foreground (a fork keeps this process's, and
                # pytest started as a background job, as CI may start it, ignores SIGINT: Ctrl-C would never reach
                # the child)
                signal.pthread_sigmask(signal.SIG_SETMASK, [])
                for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                os.execve(sys.executable, [sys.executable, *argv], env or child_env())
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.seen = ""  # everything read so far (escape sequences removed)
        self.pos = 0  # where the next expect starts looking
        self.returncode: int | None = None

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not data:
            return False
        self.seen = ESCAPES.sub("", self.seen + data.decode("utf-8", errors="replace"))
        return True

    def expect(self, text: str, timeout: float = 30.0) -> str:
        """Read until `text` shows after the last match; the output before it (from the last match on)."""
        deadline = time.monotonic() + timeout
        while text not in self.seen[self.pos:]:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.5)):
                if text in self.seen[self.pos:]:
                    break
                raise AssertionError(f"{text!r} did not show up; the terminal shows:\n{self.seen[self.pos:]}")
        i = self.seen.index(text, self.pos)
        before = self.seen[self.pos:i]
        self.pos = i + len(text)
        return before

    def more(self, timeout: float = 30.0) -> str:
        """Read until something shows after the last match; that text (the last match does not move)."""
        deadline = time.monotonic() + timeout
        while len(self.seen) <= self.pos:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.5)):
                raise AssertionError(f"nothing more showed up; the terminal shows:\n{self.seen[self.pos:]}")
        return self.seen[self.pos:]

    def wait(self, timeout: float = 30.0) -> int:
        """The program's exit code, reading its output meanwhile (so it never blocks on a full terminal)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                return self.returncode
            self._read(0.1)
        raise AssertionError(f"the program did not end; the terminal shows:\n{self.seen[self.pos:]}")

    def close(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)
