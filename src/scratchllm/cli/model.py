"""`scratchllm model`: what a model configuration costs, before building it.

- `scratchllm model info PRESET | --config FILE [--json] [--seq-len T] [--key value ...]`: parameter
  counts, memory, FLOPs per token, KV-cache size (see `scratchllm.model.info` for the formulas).
- `scratchllm model presets [--json]`: every preset with its size.

A config FILE is TOML: either ModelConfig's fields at the top level or in a `[model]` table (so a
training config works too). `--key value` flags after that change single fields.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    from scratchllm.cli import needs_action
    from scratchllm.cli.settings import add_settings_help
    from scratchllm.config.model import ModelConfig

    p = subparsers.add_parser("model", help="model sizes, memory and FLOPs; list presets",
                              description="Inspect model configurations (no weights needed).")
    sub = p.add_subparsers(dest="model_command", metavar="ACTION")
    info = sub.add_parser(
        "info", help="parameters, memory, FLOPs per token, KV cache of a config",
        description="Costs of a model configuration. Extra --key value flags change single fields, "
                    "e.g. `scratchllm model info gpt2-small --n_layer 6 --position rope`.")
    info.add_argument("preset", nargs="?", help="a preset name (see `scratchllm model presets`)")
    info.add_argument("--config", metavar="FILE", help="TOML file with ModelConfig fields (or a [model] table)")
    info.add_argument("--seq-len", type=int, default=None, metavar="T",
                      help="sequence length for the FLOP estimates (default: the context length)")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_settings_help(info, ModelConfig(), "settings (--key value, or TOML; defaults are gpt2-small's)")
    info.set_defaults(func=cmd_info, accepts_overrides=True)
    presets = sub.add_parser("presets", help="list the model presets with their sizes")
    presets.add_argument("--json", action="store_true", help="print machine-readable JSON")
    presets.set_defaults(func=cmd_presets)
    p.set_defaults(func=needs_action(p))


def load_model_config(preset: str | None, config_file: str | None, overrides: list[str]):
    """The ModelConfig named on the command line (preset or file, then --key value overrides)."""
    from scratchllm.config.base import load_toml, parse_overrides
    from scratchllm.config.model import ModelConfig
    from scratchllm.errors import UserError

    if preset and config_file:
        raise UserError("give a preset or --config FILE, not both")
    if config_file:
        data = load_toml(config_file)
        if isinstance(data.get("model"), dict):
            data = data["model"]
        config = ModelConfig.from_dict(data, prefix="model.")
    elif preset:
        config = ModelConfig.preset(preset)
    else:
        raise UserError("name a preset (scratchllm model presets lists them) or give --config FILE")
    values = parse_overrides(overrides)
    return config.override(values) if values else config


def _human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'.

    >>> _human(124439808), _human(512, "B"), _human(2.5e12, "FLOP")
    ('124.44M', '512 B', '2.50T FLOP')
    """
    for size, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.2f}{suffix}" + (f" {unit}" if unit else "")
    return f"{n:g}" + (f" {unit}" if unit else "")


def _bytes(n: int) -> str:
    """Binary units.

    >>> _bytes(3 * 2**30)
    '3.00 GiB'
    """
    for size, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= size:
            return f"{n / size:.2f} {suffix}"
    return f"{n} B"


def format_info(s: dict) -> str:
    c, p = s["config"], s["params"]
    options = [f"{c['norm']}", f"{c['mlp']}", f"{c['position']} positions", f"attention={c['attention']}",
               "tied head" if c["tie_weights"] else "untied head"]
    if c["n_kv_head"] and c["n_kv_head"] != c["n_head"]:
        options.append(f"GQA {c['n_kv_head']} kv heads")
    if not c["bias"]:
        options.append("no bias")
    rows = [
        ("shape", f"{c['n_layer']} layers, {c['n_head']} heads, {c['n_embd']} dims, "
                  f"context {c['context_length']}, vocab {c['vocab_size']}"),
        ("options", ", ".join(options)),
        ("parameters", f"{s['params_total']:,} ({_human(s['params_total'])})"),
        ("  counting tied head twice", f"{s['params_counting_tied_head']:,}"),
        ("  without embeddings", f"{s['params_non_embedding']:,}"),
        ("  token embedding", f"{p['token_embedding']:,}"),
        ("  position embedding", f"{p['position_embedding']:,}"),
        ("  per block", f"{p['per_block']:,} x {c['n_layer']} = {p['blocks']:,}"),
        ("  final norm", f"{p['final_norm']:,}"),
        ("  head", f"{p['head']:,}" + (" (tied)" if c["tie_weights"] else "")),
        ("weights fp32 / bf16", f"{_bytes(s['bytes_fp32'])} / {_bytes(s['bytes_bf16'])}"),
        (f"train FLOPs/token (T={s['seq_len']})", _human(s["train_flops_per_token"], "FLOP") + "  (6N + 12 L d T)"),
        (f"infer FLOPs/token (T={s['seq_len']})", _human(s["inference_flops_per_token"], "FLOP") + "  (2N + 2 L d T)"),
        ("KV cache per token fp32 / bf16",
         f"{_bytes(s['kv_cache_bytes_per_token_fp32'])} / {_bytes(s['kv_cache_bytes_per_token_bf16'])}"),
        ("KV cache, full context bf16", _bytes(s["kv_cache_bytes_full_context_bf16"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cmd_info(args: argparse.Namespace) -> int:
    from scratchllm.errors import UserError
    from scratchllm.model.info import summary

    config = load_model_config(args.preset, args.config, args.overrides)
    if args.seq_len is not None and args.seq_len <= 0:
        raise UserError(f"--seq-len must be a positive integer, got {args.seq_len}")
    s = summary(config, args.seq_len)
    print(json.dumps(s, indent=2) if args.json else format_info(s))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from scratchllm.config.model import PRESET_ALIASES, PRESETS, ModelConfig
    from scratchllm.model.info import num_params

    rows = []
    for name in PRESETS:
        c = ModelConfig.preset(name)
        aliases = [a for a, target in PRESET_ALIASES.items() if target == name]
        rows.append({"name": name, "params": num_params(c), "n_layer": c.n_layer, "n_head": c.n_head,
                     "n_embd": c.n_embd, "context_length": c.context_length, "vocab_size": c.vocab_size,
                     "aliases": aliases})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'preset':<12} {'params':>9} {'layers':>6} {'heads':>5} {'dims':>5} {'context':>7} {'vocab':>6}  aliases")
    for r in rows:
        print(f"{r['name']:<12} {_human(r['params']):>9} {r['n_layer']:>6} {r['n_head']:>5} {r['n_embd']:>5} "
              f"{r['context_length']:>7} {r['vocab_size']:>6}  {', '.join(r['aliases'])}")
    return 0
