"""Token pieces, bytes per token and `scratchllm inspect tokens` (colour only on a terminal or when asked)."""

from __future__ import annotations

import re

from scratchllm.cli import main
from scratchllm.visualize.tokens import bytes_per_token, render, token_pieces

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_pieces_put_back_together_are_the_text(tokenizer):
    text = "I had always thought Jack\n\tGisburn rather é"
    pieces = token_pieces(tokenizer, text)
    assert [i for i, _ in pieces] == tokenizer.encode(text)
    raw = b"".join(tokenizer.decode_bytes([i]) for i, _ in pieces)
    assert raw == text.encode("utf-8")
    assert bytes_per_token(text, len(pieces)) == len(raw) / len(pieces)


def test_render_colours_each_token_and_its_id_alike(tokenizer):
    pieces = token_pieces(tokenizer, "Jack had\nit")
    plain_text, plain_ids = render(pieces, color=False)
    assert plain_text == "|".join(p for _, p in pieces).replace("\n", "\\n")
    text, ids = render(pieces, color=True)
    assert ANSI.sub("", text) == plain_text.replace("|", "")
    assert ANSI.sub("", ids) == plain_ids
    colours = re.findall(r"48;5;(\d+)m", text)
    assert len(colours) == len(pieces) and all(a != b for a, b in zip(colours, colours[1:]))
    assert re.findall(r"48;5;(\d+)m", ids) == colours


def test_inspect_tokens_compares_tokenizers(checkpoints, tmp_path, capsys, shared_data):
    text = "Jack had always thought é"
    tok_file = tmp_path / "char.json"
    assert main(["inspect", "tokens", text, "--tokenizer", "gpt2", "--tokenizer", str(checkpoints["gpt2"]),
                 "--tokenizer", "bytes", "--data-dir", str(shared_data)]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out  # not a terminal: no colour
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:5]}
    assert rows["bytes"][1:] == ["256", "26", "1.00"]  # 26 UTF-8 bytes, é is two
    from scratchllm.tokenizer import gpt2

    n = len(gpt2(shared_data).encode(text))
    assert rows["gpt2"][2:] == [str(n), f"{26 / n:.2f}"]
    assert "\n  Jack| had| always| thought| \xe9\n" in out
    assert "|\\xc3|\\xa9\n" in out  # a byte-level token holding half a character
    from scratchllm.tokenizer import train

    train("char", [text]).save(tok_file)
    assert main(["inspect", "tokens", text, "--tokenizer", str(tok_file), "--color", "always"]) == 0
    out = capsys.readouterr().out
    assert out.count("\x1b[30;48;5;") == 2 * len(text)
    assert ANSI.sub("", out).splitlines()[-2].strip() == text
