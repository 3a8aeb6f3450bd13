"""`scratchllm inspect attention|tokens|next|embeddings`: pictures of what a model does.

    scratchllm inspect tokens "Hello, do you like tea?" --tokenizer gpt2 --tokenizer char
    scratchllm inspect attention -m runs/verdict "I HAD always thought" --out attention.png --layers 0-1
    scratchllm inspect next -m runs/verdict "I HAD always thought" --temperature 0.8 --top-k 10 --top-p 0.8
    scratchllm inspect embeddings -m runs/verdict king queen man woman --out embeddings.png

`tokens` shows where each tokenizer cuts a text, the ids, and bytes per token (colour on a terminal;
--color always|never). `attention` draws the attention weights of every layer and head as one grid of
heatmaps (row = layer, column = head). `next` prints the most likely next tokens and how the sampler's
steps (temperature, then top-k, then top-p, as `scratchllm generate` applies them) reshape their
probabilities, and draws them as bar charts. `embeddings` places words' token embeddings in two
dimensions by PCA; each word must be one token (with a leading space, as in running text, or as typed).

-m takes what `scratchllm generate -m` takes: a run or checkpoint folder, a Hugging Face or OpenAI
GPT-2 folder, LoRA adapters, or a preset name (random weights); default: the latest run. Pictures
are PNGs written atomically (`files.save_figure`). The numbers come from `scratchllm.visualize`.
"""

from __future__ import annotations

import argparse
import sys

# Defaults of `inspect next`: settings that each change the picture, so that every step of the sampler
# shows (`generate` itself defaults to temperature 1 with no filtering).
NEXT_TEMPERATURE, NEXT_TOP_K, NEXT_TOP_P = 0.8, 10, 0.8
SHOW = 12  # tokens listed and drawn by `inspect next`


def register(subparsers) -> None:
    from scratchllm.cli import needs_action

    p = subparsers.add_parser("inspect", help="pictures: attention maps, tokens, next-token odds, embeddings",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="inspect_action", metavar="ACTION")
    p.set_defaults(func=needs_action(p))

    t = sub.add_parser("tokens", help="token boundaries, ids and bytes per token, for several tokenizers",
                       description="Show where each tokenizer cuts the text, with ids, and compare bytes per token.")
    t.add_argument("text", help="the text to tokenize")
    t.add_argument("--tokenizer", action="append", dest="tokenizers", default=None, metavar="SPEC",
                   help="gpt2, char (trained on the text), bytes (raw UTF-8 bytes), a tokenizer file, or a run, "
                        "checkpoint or model folder (its tokenizer); repeatable (default: gpt2, left out with a "
                        "note when its files are not found, and char)")
    t.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour the tokens: auto = when standard output is a terminal (default)")
    t.add_argument("--data-dir", default=None, help="folder with gpt2/encoder.json and gpt2/vocab.bpe")
    t.set_defaults(func=cmd_tokens)

    a = sub.add_parser("attention", help="attention heatmaps per layer and head, one PNG grid",
                       description="Draw the attention weights of each layer and head for a prompt.")
    a.add_argument("prompt", help="the text the model reads")
    _model_flags(a)
    a.add_argument("--layers", default=None, help="layers to draw: all (default), 0,2 or 1-3")
    a.add_argument("--out", default="attention.png", help="the PNG to write (default attention.png)")
    a.set_defaults(func=cmd_attention)

    n = sub.add_parser("next", help="next-token probabilities, reshaped by temperature, top-k and top-p",
                       description="The most likely next tokens after a prompt, and their probabilities after "
                                   "each step of the sampler (temperature, top-k, top-p), as a table and bar charts.")
    n.add_argument("prompt", help="the text the model reads")
    _model_flags(n)
    n.add_argument("--temperature", type=float, default=NEXT_TEMPERATURE,
                   help=f"temperature; 0 is greedy (default {NEXT_TEMPERATURE})")
    n.add_argument("--top-k", type=int, default=NEXT_TOP_K, help=f"keep the k most likely (default {NEXT_TOP_K}; "
                                                                  f"0 is off)")
    n.add_argument("--top-p", type=float, default=NEXT_TOP_P,
                   help=f"keep the smallest set reaching probability p (default {NEXT_TOP_P}; 1 is off)")
    n.add_argument("--show", type=int, default=SHOW, help=f"tokens to list and draw (default {SHOW})")
    n.add_argument("--out", default="next-token.png", help="the PNG to write (default next-token.png)")
    n.set_defaults(func=cmd_next)

    e = sub.add_parser("embeddings", help="2-D PCA projection of words' token embeddings, a scatter plot",
                       description="Place words' token embeddings in two dimensions (PCA). Each word must be one "
                                   "token: with a leading space (as in running text), else as typed.")
    e.add_argument("words", nargs="+", help="two or more words")
    _model_flags(e)
    e.add_argument("--out", default="embeddings.png", help="the PNG to write (default embeddings.png)")
    e.set_defaults(func=cmd_embeddings)


def _model_flags(p) -> None:
    p.add_argument("--model", "-m", default=None,
                   help="run, checkpoint, Hugging Face or OpenAI folder, or a preset; default: the latest run")
    p.add_argument("--runs-dir", default="runs", help="where to look for the latest run (default: runs)")
    p.add_argument("--data-dir", default=None, help="folder with GPT-2's tokenizer files, for presets")


# --- what the commands share ---------------------------------------------------------------------
def load_model(args):
    """(model, tokenizer, description) of -m, read as `scratchllm generate -m` reads it."""
    from scratchllm.cli.generate import load
    from scratchllm.files import check_data_dir

    if args.data_dir is not None:
        check_data_dir(args.data_dir)
    model, tokenizer, what, _ = load(args)
    return model, tokenizer, what


def out_path(out: str):
    """--out as a path: a .png file; its folder is made if missing."""
    from pathlib import Path

    from scratchllm.errors import UserError

    p = Path(out)
    if p.suffix.lower() != ".png":
        raise UserError(f"--out {out}: the picture is a PNG; name a .png file")
    if p.is_dir():
        raise UserError(f"--out {out} is a folder; name a .png file")
    return p


def save(fig, path) -> None:
    from scratchllm.files import save_figure

    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    print(f"wrote {path}")


def prompt_ids(args, tokenizer, model) -> tuple[list[int], list[str]]:
    """The prompt's ids and each token's text; an empty prompt or one longer than the context is an error."""
    from scratchllm.cli.inputs import read_argument
    from scratchllm.visualize.attention import check_length
    from scratchllm.visualize.tokens import token_pieces

    text = read_argument(args.prompt, "the prompt")
    if not text:
        check_length(model, 0)
    pieces = token_pieces(tokenizer, text)
    check_length(model, len(pieces))
    return [i for i, _ in pieces], [p for _, p in pieces]


# --- the commands --------------------------------------------------------------------------------
def cmd_tokens(args) -> int:
    from scratchllm.cli.inputs import read_argument
    from scratchllm.errors import UserError
    from scratchllm.visualize.tokens import bytes_per_token, render, token_pieces

    text = read_argument(args.text, "the text")
    if not text:
        raise UserError("the text is empty; give some text to tokenize")
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    specs = args.tokenizers or ["gpt2", "char"]
    rows = []
    for spec in specs:
        try:
            tok = tokenizer_for(spec, text, args)
        except UserError as e:
            if args.tokenizers or spec != "gpt2":
                raise
            print(f"note: gpt2 left out: {e}", file=sys.stderr)  # a default, not asked for: say so, go on
            continue
        rows.append((spec, tok, token_pieces(tok, text)))
    specs = [spec for spec, _, _ in rows]
    n_bytes = len(text.encode("utf-8"))
    width = max(12, *(len(spec) for spec in specs)) + 2
    print(f"{n_bytes:,} bytes, {len(text):,} characters")
    print(f"{'tokenizer':<{width}}{'vocab':>8}{'tokens':>8}{'bytes/token':>13}")
    for spec, tok, pieces in rows:
        print(f"{spec:<{width}}{tok.vocab_size:>8,}{len(pieces):>8,}{bytes_per_token(text, len(pieces)):>13.2f}")
    for spec, _, pieces in rows:
        shown, ids = render(pieces, color)
        print(f"\n{spec}\n  {shown}\n  {ids}")
    return 0


def tokenizer_for(spec: str, text: str, args):
    """The tokenizer `spec` names (see --tokenizer's help)."""
    from pathlib import Path

    from scratchllm.errors import UserError
    from scratchllm.tokenizer import TOKENIZER_FILE, train
    from scratchllm.tokenizer import load as load_tokenizer

    if spec == "char":
        return train("char", [text])
    if spec == "bytes":
        from scratchllm.tokenizer.bpe import BPETokenizer

        return BPETokenizer([bytes([i]) for i in range(256)], [])  # no merges: one token per byte
    if spec == "gpt2":
        from scratchllm.cli.tokenizer import _load_tokenizer

        return _load_tokenizer("gpt2", args.data_dir)
    p = Path(spec)
    if p.is_file() or (p / TOKENIZER_FILE).is_file():
        return load_tokenizer(p)
    if p.is_dir():
        from scratchllm.interop.load import detect, load_any

        if detect(p) == "scratchllm":
            from scratchllm.checkpoint import resolve_checkpoint

            return load_tokenizer(resolve_checkpoint(p))
        tokenizer = load_any(p)[1]
        if tokenizer is None:
            raise UserError(f"model folder {p} has no tokenizer files")
        return tokenizer
    raise UserError(f"--tokenizer {spec}: not gpt2, char, bytes, a tokenizer file or a model folder")


def cmd_attention(args) -> int:
    from scratchllm.visualize.attention import attention_maps, parse_layers, plot_attention

    out = out_path(args.out)
    model, tokenizer, what = load_model(args)
    layers = parse_layers(args.layers, model.config.n_layer)
    ids, pieces = prompt_ids(args, tokenizer, model)
    maps = attention_maps(model, ids)  # (n_layer, n_head, T, T)
    print(f"[{what}]", file=sys.stderr)
    n = len(layers)
    print(f"{len(ids)} tokens, {n} layer{'s' if n > 1 else ''} x {maps.shape[1]} heads; the last token attends "
          f"most to:")
    for layer in layers:
        best = maps[layer, :, -1].max(dim=-1)  # per head: the largest weight of the last query, and its key
        cells = "  ".join(f"h{h} {pieces[int(j)]!r} {float(w):.2f}" for h, (w, j) in
                          enumerate(zip(best.values, best.indices)))
        print(f"  layer {layer}: {cells}")
    save(plot_attention(maps, pieces, layers, title=f"attention: {what}"), out)
    return 0


def cmd_next(args) -> int:
    from scratchllm.config.sample import SampleConfig
    from scratchllm.errors import UserError
    from scratchllm.visualize.next_token import next_token_logits, plot_next_token, sampler_steps, table, top_tokens

    out = out_path(args.out)
    top_k = None if args.top_k == 0 else args.top_k
    SampleConfig(temperature=args.temperature, top_k=top_k, top_p=args.top_p)  # the sampler's own checks
    if args.show < 1:
        raise UserError(f"--show must be at least 1, got {args.show}")
    model, tokenizer, what = load_model(args)
    ids, _ = prompt_ids(args, tokenizer, model)
    steps = sampler_steps(next_token_logits(model, ids), args.temperature, top_k, args.top_p)
    shown = top_tokens(steps[0][1], args.show)
    pieces = [tokenizer.decode_bytes([i]).decode("utf-8", "backslashreplace") for i in shown]
    print(f"[{what}]", file=sys.stderr)
    print(f"next token after {args.prompt!r} ({len(ids)} tokens); the last column is what `generate` draws from")
    print("\n".join(table(steps, shown, pieces)))
    save(plot_next_token(steps, shown, pieces, title=f"next token after {args.prompt!r}"), out)
    return 0


def cmd_embeddings(args) -> int:
    from scratchllm.cli.inputs import read_argument
    from scratchllm.visualize.embeddings import pca_2d, plot_embeddings, word_ids

    out = out_path(args.out)
    words = [read_argument(w, "a word") for w in args.words]
    model, tokenizer, what = load_model(args)
    found = word_ids(tokenizer, words)
    vectors = model.tok_emb.weight.detach()[[i for _, i, _ in found]]  # (n, n_embd)
    coords, explained = pca_2d(vectors)
    print(f"[{what}]", file=sys.stderr)
    print(f"{len(found)} token embeddings of {vectors.shape[1]} numbers, projected on their 2 principal "
          f"components ({float(explained.sum()):.0%} of the variance)")
    print(f"{'word':<16}{'token':<18}{'id':>7}{'pc1':>9}{'pc2':>9}")
    for (word, i, piece), (x, y) in zip(found, coords.tolist()):
        print(f"{word:<16}{piece!r:<18}{i:>7}{x:>9.3f}{y:>9.3f}")
    save(plot_embeddings(coords, [p for _, _, p in found], explained, title=f"token embeddings: {what}"), out)
    return 0
