"""Downloads against an HTTP server on 127.0.0.1 that the test starts and fills with files it wrote.

The server (http.server in a thread) serves a dict of path -> bytes, answers `Range: bytes=N-` with
206, can ignore Range (a server that always sends the whole file), and can cut the connection after
N bytes of a file the first time it is asked for it. It logs every request's path and Range header.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from scratchllm.cli import main
from scratchllm.errors import UserError
from scratchllm.interop import download as dl


class Server:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.headers: dict[str, dict[str, str]] = {}  # extra response headers per path
        self.drop_after: dict[str, int] = {}  # path -> bytes sent before the connection is cut (once)
        self.ignore_range = False
        self.redirects: dict[str, str] = {}  # path -> URL to send the client to (302)
        self.log: list[tuple[str, str | None]] = []
        self.auth: list[str | None] = []  # each request's Authorization header
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.log.append((self.path, rng))
                server.auth.append(self.headers.get("Authorization"))
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                for k, v in server.headers.get(self.path, {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = server.drop_after.pop(self.path, None)
                if cut is not None and cut > start:
                    self.wfile.write(body[start:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _online(monkeypatch, tmp_path):
    monkeypatch.delenv("SCRATCHLLM_OFFLINE", raising=False)
    monkeypatch.delenv(dl.GPT2_URLS_ENV, raising=False)
    monkeypatch.delenv(dl.HF_URL_ENV, raising=False)
    monkeypatch.delenv(dl.HF_TOKEN_ENV, raising=False)
    monkeypatch.setenv("SCRATCHLLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)  # retries without waiting


def closed_port_url() -> str:
    """http://127.0.0.1:<a port nothing listens on> (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def gpt2_files(size: str) -> dict[str, bytes]:
    """Stand-ins for OpenAI's release files: distinct bytes per file, one of them large enough to stream."""
    return {f"/{size}/{name}": (name.encode() * (5000 if "data" in name else 3)) for name in dl.GPT2_FILES}


def test_gpt2_downloads_every_file_of_a_size(server, tmp_path):
    server.files.update(gpt2_files("124M"))
    out = dl.download_gpt2("124M", tmp_path / "gpt2", urls=[server.url], progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(dl.GPT2_FILES)
    for name in dl.GPT2_FILES:
        assert (out / name).read_bytes() == server.files[f"/124M/{name}"]
    # a second run finds every file complete and asks for nothing
    n = len(server.log)
    dl.download_gpt2("124M", tmp_path / "gpt2", urls=[server.url], progress=False)
    assert len(server.log) == n


def test_gpt2_falls_back_to_the_mirror(server, tmp_path, monkeypatch):
    server.files.update({f"/mirror{k}": v for k, v in gpt2_files("355M").items()})
    down = closed_port_url()
    monkeypatch.setenv(dl.GPT2_URLS_ENV, f"{down},{server.url}/mirror")
    asked = []
    real_open = dl._open
    monkeypatch.setattr(dl, "_open", lambda url, *a: asked.append(url) or real_open(url, *a))
    out = dl.download_gpt2("355M", tmp_path / "m", progress=False)
    assert (out / "hparams.json").read_bytes() == server.files["/mirror/355M/hparams.json"]
    # the location that was down is asked once: the mirror comes first for the remaining files
    assert [u for u in asked if u.startswith(down)] == [f"{down}/355M/checkpoint"]
    assert len(server.log) == len(dl.GPT2_FILES)


def test_gpt2_a_file_missing_at_openai_comes_from_the_mirror(server, tmp_path):
    server.files.update(gpt2_files("124M"))
    server.files.update({f"/mirror{k}": v for k, v in gpt2_files("124M").items()})
    del server.files["/124M/vocab.bpe"]
    out = dl.download_gpt2("124M", tmp_path / "g", urls=[server.url, server.url + "/mirror"], progress=False)
    assert (out / "vocab.bpe").read_bytes() == server.files["/mirror/124M/vocab.bpe"]
    assert ("/mirror/124M/vocab.bpe", None) in server.log


def test_gpt2_default_folder_is_in_the_cache(server, tmp_path):
    server.files.update(gpt2_files("124M"))
    out = dl.download_gpt2("124m", urls=[server.url], progress=False)
    assert out == tmp_path / "cache" / "models" / "gpt2" / "124M"
    assert (out / "vocab.bpe").is_file()


def hf_repo(server: Server, repo: str = "org/tiny", commit: str = "a" * 40, lfs_sha: str | None = None):
    """A repository with one LFS file (sha256 in the listing) and two small ones (git blob ids)."""
    files = {"config.json": b'{"model_type": "gpt2"}', "model.safetensors": bytes(range(256)) * 400,
             "sub/tokenizer.json": b'{"version": "1.0"}'}
    siblings = []
    for name, body in files.items():
        server.files[f"/{repo}/resolve/{commit}/{name}"] = body
        if name.endswith(".safetensors"):
            sha = lfs_sha or hashlib.sha256(body).hexdigest()
            siblings.append({"rfilename": name, "size": len(body), "lfs": {"sha256": sha, "size": len(body)}})
        else:
            blob = hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()
            siblings.append({"rfilename": name, "size": len(body), "blobId": blob})
    listing = json.dumps({"sha": commit, "siblings": siblings}).encode()
    server.files[f"/api/models/{repo}/revision/main?blobs=true"] = listing
    return files


def test_hf_repo_downloads_its_listing_at_the_resolved_commit(server, tmp_path):
    files = hf_repo(server)
    out = dl.download_hf("org/tiny", out=tmp_path / "hf", base=server.url, progress=False)
    for name, body in files.items():
        assert (out / name).read_bytes() == body
    assert all("/resolve/" + "a" * 40 + "/" in p for p, _ in server.log if "resolve" in p)
    assert not list(out.rglob("*.part"))


def test_hf_fetches_again_a_file_the_branch_changed(server, tmp_path):
    files = hf_repo(server)
    out = dl.download_hf("org/tiny", out=tmp_path / "hf", base=server.url, progress=False)
    (out / "model.safetensors").write_bytes(b"\0" * len(files["model.safetensors"]))  # same size, old content
    n = len(server.log)
    dl.download_hf("org/tiny", out=tmp_path / "hf", base=server.url, progress=False)
    assert (out / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert [p for p, _ in server.log[n:]] == ["/api/models/org/tiny/revision/main?blobs=true",
                                              "/org/tiny/resolve/" + "a" * 40 + "/model.safetensors"]


def test_hf_include_picks_files(server, tmp_path):
    hf_repo(server)
    out = dl.download_hf("org/tiny", out=tmp_path / "hf", base=server.url, include=["*.json"], progress=False)
    assert (out / "config.json").is_file() and not (out / "model.safetensors").exists()


def test_a_dropped_connection_is_resumed_with_range(server, tmp_path):
    files = hf_repo(server)
    path = "/org/tiny/resolve/" + "a" * 40 + "/model.safetensors"
    server.drop_after[path] = 30000
    out = dl.download_hf("org/tiny", out=tmp_path / "hf", base=server.url, progress=False)
    assert (out / "model.safetensors").read_bytes() == files["model.safetensors"]
    asked = [rng for p, rng in server.log if p == path]
    assert asked == [None, "bytes=30000-"]


def test_a_redirect_keeps_the_range_and_drops_the_token_for_another_host(server, tmp_path, monkeypatch):
    """As Hugging Face's LFS files: resolve/ redirects to a CDN on another host."""
    files = hf_repo(server)
    cdn = Server()
    try:
        path = "/org/tiny/resolve/" + "a" * 40 + "/model.safetensors"
        cdn.files["/blob"] = files["model.safetensors"]
        cdn.drop_after["/blob"] = 5000
        server.redirects[path] = cdn.url + "/blob"
        monkeypatch.setenv(dl.HF_TOKEN_ENV, "secret")
        out = dl.download_hf("org/tiny", out=tmp_path / "hf", base=server.url, progress=False)
        assert (out / "model.safetensors").read_bytes() == files["model.safetensors"]
        assert cdn.log == [("/blob", None), ("/blob", "bytes=5000-")]
        assert cdn.auth == [None, None] and set(server.auth) == {"Bearer secret"}
    finally:
        cdn.close()


def test_a_broken_download_keeps_its_part_and_the_next_run_continues(server, tmp_path):
    files = hf_repo(server)
    path = "/org/tiny/resolve/" + "a" * 40 + "/model.safetensors"
    server.drop_after[path] = 12345
    with pytest.raises(UserError, match="run the download again to continue"):
        dl.download_hf("org/tiny", out=tmp_path / "hf", base=server.url, progress=False, retries=0)
    part = tmp_path / "hf" / "model.safetensors.part"
    assert part.stat().st_size == 12345 and not (tmp_path / "hf" / "model.safetensors").exists()
    dl.download_hf("org/tiny", out=tmp_path / "hf", base=server.url, progress=False, retries=0)
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert not part.exists()
    assert [rng for p, rng in server.log if p == path] == [None, "bytes=12345-"]


def test_a_server_that_ignores_range_restarts_the_file(server, tmp_path):
    body = b"0123456789" * 1000
    server.files["/f.bin"] = body
    server.ignore_range = True
    dest = tmp_path / "f.bin"
    dl.part_path(dest).write_bytes(b"XXXX")  # a stale start that must not stay in front
    dl.download_file(dl.RemoteFile(server.url + "/f.bin", dest, size=len(body)), progress=False)
    assert dest.read_bytes() == body
    assert server.log == [("/f.bin", "bytes=4-")]


def test_a_part_as_long_as_the_file_is_finished_without_a_body(server, tmp_path):
    body = b"abc" * 100
    server.files["/f.bin"] = body
    dest = tmp_path / "f.bin"
    dl.part_path(dest).write_bytes(body)
    dl.download_file(dl.RemoteFile(server.url + "/f.bin", dest, size=len(body),
                                   sha256=hashlib.sha256(body).hexdigest()), progress=False)
    assert dest.read_bytes() == body
    # no published size: the server's 416 says the total (Content-Range: bytes */N)
    dest.unlink()
    dl.part_path(dest).write_bytes(body)
    dl.download_file(dl.RemoteFile(server.url + "/f.bin", dest), progress=False)
    assert dest.read_bytes() == body
    assert [rng for _, rng in server.log] == [f"bytes={len(body)}-"] * 2


def test_a_wrong_checksum_is_an_error_and_leaves_no_file(server, tmp_path):
    hf_repo(server, lfs_sha="0" * 64)
    with pytest.raises(UserError, match="sha256 .* the source says 0{64}; the file was not kept"):
        dl.download_hf("org/tiny", out=tmp_path / "hf", base=server.url, progress=False)
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    assert not (tmp_path / "hf" / "model.safetensors.part").exists()


def test_a_wrong_git_blob_id_from_the_etag_is_an_error(server, tmp_path):
    server.files["/f.txt"] = b"hello"
    server.headers["/f.txt"] = {"ETag": '"' + "1" * 40 + '"'}
    dest = tmp_path / "f.txt"
    with pytest.raises(UserError, match="git blob id"):
        dl.download_file(dl.RemoteFile(server.url + "/f.txt", dest), progress=False, trust_etag=True)
    assert not dest.exists() and not dl.part_path(dest).exists()
    good = hashlib.sha1(b"blob 5\0hello").hexdigest()
    server.headers["/f.txt"] = {"ETag": f'"{good}"'}
    dl.download_file(dl.RemoteFile(server.url + "/f.txt", dest), progress=False, trust_etag=True)
    assert dest.read_bytes() == b"hello"


def test_a_wrong_size_is_an_error_and_leaves_no_file(server, tmp_path):
    server.files["/f.bin"] = b"x" * 100
    dest = tmp_path / "f.bin"
    with pytest.raises(UserError, match="sends 100 bytes, the source lists 99"):
        dl.download_file(dl.RemoteFile(server.url + "/f.bin", dest, size=99), progress=False)
    assert not dest.exists() and not dl.part_path(dest).exists()


def test_an_unreachable_server_is_one_clear_line(tmp_path, capsys):
    url = closed_port_url()
    rc = main(["download", "hf", "org/tiny", "--out", str(tmp_path / "x"), "--base-url", url])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("error: cannot reach " + url) and "check the network" in err[0]
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_gpt2_unreachable_names_every_source(tmp_path):
    a, b = closed_port_url(), closed_port_url() + "/mirror"
    with pytest.raises(UserError) as e:
        dl.download_gpt2("124M", tmp_path / "g", urls=[a, b], progress=False, timeout=5)
    assert a + "/124M/checkpoint" in str(e.value) and b + "/124M/checkpoint" in str(e.value)
    assert "\n" not in str(e.value)


def test_a_missing_file_names_the_url(server, tmp_path):
    with pytest.raises(UserError, match=r"HTTP 404 .*check the name"):
        dl.download_gpt2("774M", tmp_path / "g", urls=[server.url], progress=False)


def test_offline_and_bad_names_are_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="sizes 124M, 355M, 774M, 1558M"):
        dl.download_gpt2("125M", tmp_path)
    with pytest.raises(UserError, match="not a Hugging Face repository id"):
        dl.download_hf("../etc", out=tmp_path)
    monkeypatch.setenv("SCRATCHLLM_OFFLINE", "1")
    with pytest.raises(UserError, match="SCRATCHLLM_OFFLINE"):
        dl.download_gpt2("124M", tmp_path)


def test_a_listing_that_escapes_the_folder_is_refused(tmp_path):
    with pytest.raises(UserError, match="outside the repository"):
        dl.hf_remote_files("org/x", "c", [{"rfilename": "../../evil"}], tmp_path)


def test_cli_downloads_gpt2(server, tmp_path, capsys, monkeypatch):
    server.files.update(gpt2_files("124M"))
    monkeypatch.setenv(dl.GPT2_URLS_ENV, server.url)
    assert main(["download", "gpt2", "--size", "124M", "--out", str(tmp_path / "g")]) == 0
    assert Path(capsys.readouterr().out.strip()) == tmp_path / "g"
    assert (tmp_path / "g" / "encoder.json").read_bytes() == server.files["/124M/encoder.json"]
