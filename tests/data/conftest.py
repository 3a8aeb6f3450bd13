"""Fixtures for the data tests: a local HTTP server, a tiny corpus, a small tokenizer."""

import functools
import http.server
import threading

import pytest

from scratchllm.tokenizer.char import CharTokenizer


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def http_dir(tmp_path):
    """(folder, base_url): files put in the folder are served on 127.0.0.1."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def no_data_dir(monkeypatch):
    """No SCRATCHLLM_DATA_DIR: only the (temporary) cache and downloads."""
    monkeypatch.delenv("SCRATCHLLM_DATA_DIR", raising=False)
    monkeypatch.delenv("SCRATCHLLM_OFFLINE", raising=False)


PLAYS = [
    "ACT I.\nSCENE 1. A room.\n\nFIRST LORD.\nWhat say you, sirrah? Speak, and speak the truth.\n",
    "ACT I.\nSCENE 1. A heath.\n\nWITCH.\nWhen shall we three meet again, in thunder, lightning, or rain?\n",
    "ACT I.\nSCENE 1. Elsinore.\n\nBARNARDO.\nWho's there? Nay, answer me: stand and unfold yourself.\n",
]


@pytest.fixture
def plays():
    return list(PLAYS)


@pytest.fixture
def char_tok():
    text = "".join(PLAYS) + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'-\n"
    return CharTokenizer.train(text, special_tokens=["<|endoftext|>"])
