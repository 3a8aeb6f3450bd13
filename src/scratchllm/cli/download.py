"""`scratchllm download`: pretrained weights from their public locations, resumable and checked.

- `scratchllm download gpt2 [--size 124M|355M|774M|1558M] [--out DIR]`: OpenAI's GPT-2 release files
  (OpenAI's location, then the book's mirror).
- `scratchllm download hf REPO_ID [--revision R] [--include GLOB ...] [--out DIR]`: a Hugging Face
  repository's files over plain HTTPS (HF_TOKEN is sent for gated repositories).
Without --out, files go to <cache>/models/... (`scratchllm.files.cache_dir`). The folder is printed
on stdout, so `scratchllm import "$(scratchllm download gpt2)" --out runs/gpt2` works. An
interrupted download continues where it stopped when run again. See `scratchllm.interop.download`.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from scratchllm.cli import needs_action

    p = subparsers.add_parser("download", help="download pretrained weights (GPT-2, Hugging Face)",
                              description="Download pretrained weights: resumable, size- and checksum-checked.")
    sub = p.add_subparsers(dest="download_command", metavar="SOURCE")
    g = sub.add_parser("gpt2", help="OpenAI's GPT-2 release files",
                       description="OpenAI's GPT-2 files (TensorFlow checkpoint, encoder.json, vocab.bpe), "
                                   "from OpenAI's location or the book's mirror.")
    g.add_argument("--size", default="124M", metavar="SIZE",
                   help="124M (default), 355M, 774M or 1558M")
    g.add_argument("--out", metavar="DIR", help="folder for the files (default: <cache>/models/gpt2/SIZE)")
    g.add_argument("--base-url", action="append", metavar="URL",
                   help="base URL to fetch {URL}/{size}/{file} from, instead of OpenAI's and the mirror "
                        "(repeat for fallbacks; also $SCRATCHLLM_GPT2_URLS, comma-separated)")
    g.set_defaults(func=cmd_gpt2)
    h = sub.add_parser("hf", help="a Hugging Face repository's files",
                       description="A Hugging Face model repository's files over plain HTTPS, checked against "
                                   "the sizes and checksums its listing publishes.")
    h.add_argument("repo", metavar="REPO_ID", help="e.g. HuggingFaceTB/SmolLM2-135M")
    h.add_argument("--revision", default="main", help="branch, tag or commit (default: main)")
    h.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="download only files matching GLOB (repeatable), e.g. --include '*.json' "
                        "--include '*.safetensors'")
    h.add_argument("--out", metavar="DIR",
                   help="folder for the files (default: <cache>/models/hf/OWNER--NAME/REVISION)")
    h.add_argument("--base-url", metavar="URL",
                   help="the hub's address (default https://huggingface.co, or $SCRATCHLLM_HF_URL)")
    h.set_defaults(func=cmd_hf)
    p.set_defaults(func=needs_action(p))


def cmd_gpt2(args: argparse.Namespace) -> int:
    from scratchllm.interop.download import download_gpt2

    print(download_gpt2(args.size, args.out, urls=args.base_url))
    return 0


def cmd_hf(args: argparse.Namespace) -> int:
    from scratchllm.interop.download import download_hf

    print(download_hf(args.repo, args.revision, args.out, base=args.base_url, include=args.include))
    return 0
