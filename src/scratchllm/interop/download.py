"""Downloading pretrained weights: OpenAI's GPT-2 release files and Hugging Face repositories.

Plain HTTPS with urllib: no hub library, no TensorFlow. What `download_file` guarantees:
- resumable: bytes go to `<name>.part` beside the target; a cut connection keeps it, and the next
  attempt (a retry here, or the next run) asks for the rest with `Range: bytes=N-`. A server that
  ignores Range (answers 200 with the whole file) restarts the file cleanly.
- checked: the size against Content-Length and the size the source publishes; the content against
  the sha256 (Hugging Face's LFS files) or git blob id (its small files) where the source publishes
  one. A file that fails a check is deleted, never renamed into place.
- atomic: the `.part` file is renamed to the target only when complete and checked.
- one clear line when a server cannot be reached: the URL, and what to do (check the network, or
  copy the files by hand into the folder).
- a progress bar (tqdm; quiet when stderr is not a terminal) and a socket timeout.

Sources:
- GPT-2: `https://openaipublic.blob.core.windows.net/gpt-2/models/{size}/{file}`, with the book's
  mirror `https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2/{size}/{file}` as fallback
  (OpenAI's location moved once already). Neither publishes checksums: sizes are checked.
- Hugging Face: `{base}/api/models/{repo}/revision/{rev}?blobs=true` lists the files (`siblings`,
  each with its size, git blob id and, for LFS files, sha256); each file is
  `{base}/{repo}/resolve/{commit}/{path}`, fetched at the commit the listing resolved, so every file
  comes from one revision. `HF_TOKEN` (if set) is sent for gated or private repositories.
Base URLs: parameters, or the environment (`SCRATCHLLM_GPT2_URLS`: comma-separated bases tried in
order; `SCRATCHLLM_HF_URL`), so tests point them at 127.0.0.1.

Not here: reading the files (`interop.tf_bundle`, `interop.hf`), the data sets' cache (`data.cache`).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from scratchllm.data.cache import is_offline
from scratchllm.errors import UserError
from scratchllm.files import cache_dir, fsync_dir

GPT2_SIZES = ("124M", "355M", "774M", "1558M")
GPT2_FILES = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
              "model.ckpt.index", "model.ckpt.meta", "vocab.bpe")
GPT2_URLS = ("https://openaipublic.blob.core.windows.net/gpt-2/models",
             "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2")
HF_URL = "https://huggingface.co"
GPT2_URLS_ENV = "SCRATCHLLM_GPT2_URLS"
HF_URL_ENV = "SCRATCHLLM_HF_URL"
HF_TOKEN_ENV = "HF_TOKEN"
# Seconds without a byte (or a connection) before a request gives up: long enough for a slow
# server, short enough that a dead one is reported within a minute.
TIMEOUT = 30.0
# Further attempts after a connection drops mid-file, each continuing the .part file; a flaky link
# gets a few chances, a dead one fails within seconds.
RETRIES = 3
CHUNK = 1 << 16  # bytes read per socket read: small enough for a smooth progress bar
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX40 = re.compile(r"^[0-9a-f]{40}$")


class Unreachable(UserError):
    """A server could not be reached or answered with an error: the next source may be tried."""


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: where from, where to, and what the source publishes about it."""

    url: str
    dest: Path
    size: int | None = None
    sha256: str | None = None  # hex, of the content
    git_sha1: str | None = None  # hex git blob id: sha1 of b"blob <size>\0" + content


# --- one file --------------------------------------------------------------------------------------------
def part_path(dest: Path) -> Path:
    """Where the bytes of `dest` collect until it is complete: `<name>.part` beside it."""
    return dest.with_name(dest.name + ".part")


def hash_file(path: Path, kind: str) -> str:
    """Hex sha256 of a file's content, or ("git") its git blob id."""
    h = hashlib.sha256() if kind == "sha256" else hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def check_file(path: Path, rf: RemoteFile, url: str) -> None:
    """Raise if `path` does not have the published size or checksum (the caller deletes it)."""
    got = path.stat().st_size
    if rf.size is not None and got != rf.size:
        raise UserError(f"download of {url} has {got} bytes, the source says {rf.size}; the file was not kept "
                        f"(the transfer was corrupted or the source changed): run the download again")
    for kind, want in (("sha256", rf.sha256), ("git", rf.git_sha1)):
        if want is not None and (have := hash_file(path, kind)) != want:
            name = "sha256" if kind == "sha256" else "git blob id"
            raise UserError(f"download of {url} has {name} {have}, the source says {want}; the file was not kept "
                            f"(the transfer was corrupted or the source changed): run the download again")


def is_complete(rf: RemoteFile) -> bool:
    """The target exists already with the published size and checksum (a branch such as `main` may have
    moved on to new weights of the same size: those are fetched again)."""
    if not rf.dest.is_file() or (rf.size is not None and rf.dest.stat().st_size != rf.size):
        return False
    return all(want is None or hash_file(rf.dest, kind) == want
               for kind, want in (("sha256", rf.sha256), ("git", rf.git_sha1)))


class _KeepRangeDropAuth(urllib.request.HTTPRedirectHandler):
    """Follow redirects (Hugging Face sends LFS files from a CDN) keeping the Range header, but never
    send the token (Authorization) on to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


_opener = urllib.request.build_opener(_KeepRangeDropAuth)


def _open(url: str, start: int, timeout: float, headers: dict[str, str]):
    """The response to GET `url` from byte `start` on; an Unreachable error naming the URL if none comes."""
    req = urllib.request.Request(url, headers={"User-Agent": "scratchllm", **headers})
    if start:
        req.add_header("Range", f"bytes={start}-")
    try:
        return _opener.open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # range not satisfiable: the .part is as long as the file, or longer
            return e
        hint = ("the repository is gated or private: accept its licence on its page and set HF_TOKEN"
                if e.code in (401, 403) else "check the name, size or revision")
        raise Unreachable(f"cannot download {url}: HTTP {e.code} {e.reason}; {hint}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise Unreachable(f"cannot reach {url} ({reason}); check the network connection, or copy the files "
                          f"there by hand") from None


def _published_digest(headers, rf: RemoteFile) -> RemoteFile:
    """`rf` with the checksum Hugging Face sends in X-Linked-Etag (LFS: sha256) or ETag (git blob id),
    where the listing gave none."""
    if rf.sha256 or rf.git_sha1:
        return rf
    linked = (headers.get("X-Linked-Etag") or "").strip('W/"').lower()
    etag = (headers.get("ETag") or "").strip('W/"').lower()
    if HEX64.match(linked):
        return RemoteFile(rf.url, rf.dest, rf.size, sha256=linked)
    if HEX40.match(etag):
        return RemoteFile(rf.url, rf.dest, rf.size, git_sha1=etag)
    if HEX64.match(etag):
        return RemoteFile(rf.url, rf.dest, rf.size, sha256=etag)
    return rf


def download_file(rf: RemoteFile, *, timeout: float = TIMEOUT, retries: int = RETRIES, progress: bool = True,
                  headers: dict[str, str] | None = None, trust_etag: bool = False) -> Path:
    """Fetch `rf.url` to `rf.dest` (resuming its .part file), check it, rename it into place; returns `rf.dest`.

    A connection that drops mid-file is retried `retries` times, each continuing where the last
    stopped; after that the .part file stays for the next run. `trust_etag`: take a sha256 / git
    blob id from the response headers when `rf` has none (Hugging Face's servers send them).
    """
    from tqdm.auto import tqdm

    if is_complete(rf):
        return rf.dest
    rf.dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(rf.dest)
    url = rf.url
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        resp = _open(url, have, timeout, headers or {})
        with resp:
            if trust_etag:
                rf = _published_digest(resp.headers, rf)
            status = resp.status if hasattr(resp, "status") else resp.code
            if status == 416:  # nothing left to send: complete if the size says so, else start again
                m = re.match(r"bytes \*/(\d+)", resp.headers.get("Content-Range") or "")
                size = rf.size if rf.size is not None else (int(m.group(1)) if m else None)
                if size is not None and have == size:
                    break
                part.unlink(missing_ok=True)
                continue
            if status == 206:
                m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range") or "")
                if not m or int(m.group(1)) != have:  # not the range asked for: start again
                    part.unlink(missing_ok=True)
                    continue
            else:  # 200: the whole file (a server that ignores Range): start the .part again
                have = 0
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length is not None else rf.size
            if rf.size is not None and total is not None and total != rf.size:
                part.unlink(missing_ok=True)
                raise UserError(f"{url} sends {total} bytes, the source lists {rf.size}; the file was not kept "
                                f"(the source changed?): run the download again")
            dropped = None
            with open(part, "ab" if have else "wb") as f, \
                    tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=rf.dest.name,
                         disable=None if progress else True, leave=False) as bar:
                while True:
                    try:
                        block = resp.read(CHUNK)
                    except (OSError, http.client.HTTPException) as e:  # reset, timeout, incomplete read
                        dropped = e
                        break
                    if not block:
                        break
                    f.write(block)
                    bar.update(len(block))
                f.flush()
                os.fsync(f.fileno())
            got = part.stat().st_size
            if dropped is None and (total is None or got >= total):
                break
            dropped = dropped or f"the connection closed after {got} of {total} bytes"
        if attempt == retries:
            raise UserError(f"download of {url} broke off ({dropped}); the {part.stat().st_size} bytes so far are "
                            f"kept in {part}: run the download again to continue")
        time.sleep(min(2.0, 0.2 * 2 ** attempt))  # a moment for a flaky link
    else:
        raise UserError(f"{url} did not send the rest of the file after {retries + 1} attempts; "
                        f"delete {part} and run the download again")
    try:
        check_file(part, rf, url)
    except UserError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, rf.dest)
    fsync_dir(rf.dest.parent)
    return rf.dest


def download_first(candidates: Sequence[RemoteFile], **kw) -> int:
    """Download the first of several copies of one file (mirrors, in order) that can be reached; its index."""
    failed: list[str] = []
    for i, rf in enumerate(candidates):
        try:
            download_file(rf, **kw)
            return i
        except Unreachable as e:
            failed.append(str(e))
    if len(failed) == 1:
        raise Unreachable(failed[0])
    raise Unreachable(f"no source of {candidates[0].dest.name} can be reached: "
                      + " | ".join(f"({i}) {m}" for i, m in enumerate(failed, 1)))


# --- GPT-2 -------------------------------------------------------------------------------------------------
def gpt2_urls(urls: Sequence[str] | None = None) -> list[str]:
    """Base URLs for GPT-2's files, tried in order: the argument, else $SCRATCHLLM_GPT2_URLS, else OpenAI's then
    the book's mirror."""
    if urls:
        return [u.rstrip("/") for u in urls]
    env = os.environ.get(GPT2_URLS_ENV)
    if env:
        return [u.strip().rstrip("/") for u in env.split(",") if u.strip()]
    return list(GPT2_URLS)


def default_out(*parts: str) -> Path:
    """Where downloads go without --out: <cache>/models/<parts>."""
    return cache_dir().joinpath("models", *parts)


def download_gpt2(size: str = "124M", out: str | os.PathLike | None = None, *, urls: Sequence[str] | None = None,
                  progress: bool = True, timeout: float = TIMEOUT, retries: int = RETRIES) -> Path:
    """OpenAI's GPT-2 release files for `size` (124M, 355M, 774M or 1558M) in folder `out`; returns it.

    Files already there (complete) are kept; each other file is fetched from the first base URL
    that answers, and the base that answered is asked first for the files after it (a dead
    location costs one timeout, not one per file).
    """
    if size.upper() not in GPT2_SIZES:
        raise UserError(f"GPT-2 comes in sizes {', '.join(GPT2_SIZES)}; got {size!r}")
    size = size.upper()
    folder = Path(out) if out is not None else default_out("gpt2", size)
    _check_online(f"GPT-2 {size}", folder)
    bases = gpt2_urls(urls)
    for name in GPT2_FILES:
        i = download_first([RemoteFile(f"{b}/{size}/{name}", folder / name) for b in bases],
                           progress=progress, timeout=timeout, retries=retries)
        bases.insert(0, bases.pop(i))
    return folder


# --- Hugging Face ------------------------------------------------------------------------------------------
def hf_url(base: str | None = None) -> str:
    return (base or os.environ.get(HF_URL_ENV) or HF_URL).rstrip("/")


def hf_headers() -> dict[str, str]:
    token = os.environ.get(HF_TOKEN_ENV)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _check_repo_id(repo: str) -> None:
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo) or ".." in repo:
        raise UserError(f"{repo!r} is not a Hugging Face repository id; give one like HuggingFaceTB/SmolLM2-135M")


def hf_listing(repo: str, revision: str = "main", *, base: str | None = None,
               timeout: float = TIMEOUT) -> tuple[str, list[dict]]:
    """(commit, siblings) of a Hugging Face model repository at `revision`, from its API."""
    _check_repo_id(repo)
    rev = urllib.parse.quote(revision, safe="")
    url = f"{hf_url(base)}/api/models/{repo}/revision/{rev}?blobs=true"
    try:
        with _open(url, 0, timeout, hf_headers()) as resp:
            data = json.loads(resp.read().decode("utf-8"))
    except (OSError, ValueError) as e:  # a dropped listing, or not JSON
        raise Unreachable(f"cannot read the file list of {repo} from {url} ({e}); check the network connection "
                          f"or the repository id") from None
    if not isinstance(data, dict) or not isinstance(data.get("siblings"), list):
        raise UserError(f"{url} did not return a repository's file list (no 'siblings'); check the repository id")
    commit = data.get("sha") if isinstance(data.get("sha"), str) else revision
    return commit, [s for s in data["siblings"] if isinstance(s, dict) and isinstance(s.get("rfilename"), str)]


def hf_remote_files(repo: str, commit: str, siblings: list[dict], folder: Path, *, base: str | None = None,
                    include: Sequence[str] = ()) -> list[RemoteFile]:
    """The files to fetch from a listing, with what it publishes about each; only those matching an
    `include` glob if any are given."""
    from fnmatch import fnmatch

    out = []
    root = folder.resolve()
    for s in siblings:
        name = s["rfilename"]
        if include and not any(fnmatch(name, pat) for pat in include):
            continue
        dest = (folder / name)
        if name.startswith("/") or root not in dest.resolve().parents:
            raise UserError(f"the listing of {repo} names a file outside the repository ({name!r}); not downloaded")
        lfs = s.get("lfs") if isinstance(s.get("lfs"), dict) else {}
        sha = str(lfs.get("sha256") or lfs.get("oid") or "").lower().removeprefix("sha256:") or None
        size = lfs.get("size", s.get("size"))
        git = None if lfs else (str(s.get("blobId") or "").lower() or None)
        url = f"{hf_url(base)}/{repo}/resolve/{urllib.parse.quote(commit, safe='')}/{urllib.parse.quote(name)}"
        out.append(RemoteFile(url, dest, int(size) if isinstance(size, int) else None,
                              sha256=sha if sha and HEX64.match(sha) else None,
                              git_sha1=git if git and HEX40.match(git) else None))
    return out


def download_hf(repo: str, revision: str = "main", out: str | os.PathLike | None = None, *,
                base: str | None = None, include: Sequence[str] = (), progress: bool = True,
                timeout: float = TIMEOUT, retries: int = RETRIES,
                on_file: Callable[[RemoteFile], None] | None = None) -> Path:
    """A Hugging Face repository's files (at `revision`, or those matching `include` globs) in `out`; returns it."""
    _check_repo_id(repo)
    folder = Path(out) if out is not None else default_out("hf", repo.replace("/", "--"), revision)
    _check_online(repo, folder)
    commit, siblings = hf_listing(repo, revision, base=base, timeout=timeout)
    files = hf_remote_files(repo, commit, siblings, folder, base=base, include=include)
    if not files:
        raise UserError(f"no file of {repo} at {revision} matches {', '.join(include) or 'anything'}; "
                        f"check --include")
    for rf in files:
        if on_file is not None:
            on_file(rf)
        download_file(rf, progress=progress, timeout=timeout, retries=retries, headers=hf_headers(),
                      trust_etag=True)
    return folder


def _check_online(what: str, folder: Path) -> None:
    if is_offline():
        raise UserError(f"cannot download {what}: SCRATCHLLM_OFFLINE is set; unset it, or copy the files "
                        f"by hand into {folder}")
