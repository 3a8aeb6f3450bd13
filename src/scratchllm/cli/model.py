"""`scratchllm model`: what a model configuration costs, before building it.

- `scratchllm model info PRESET | --config FILE [--json] [--seq-len T] [--key value ...]`: parameter
  counts, memory, FLOPs per token, KV-cache size (see `scratchllm.model.info` for the formulas).
- `scratchllm model info RUN` (a run or checkpoint folder): the same for its config, and what it stores:
  bytes per kind of tensor and in total (read from model.safetensors' header), a quantized model's
  scheme (bits, group size, symmetric), a pruned model's pruning and its measured sparsity.
- `scratchllm model presets [--json]`: every preset with its size.

A config FILE is TOML: either ModelConfig's fields at the top level or in a `[model]` table (so a
training config works too). `--key value` flags after that change single fields.
"""

from __future__ import annotations

import argparse
import json
import math


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
    info.add_argument("preset", nargs="?",
                      help="a preset name (see `scratchllm model presets`), or a run or checkpoint folder")
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


def checkpoint_info(path: str) -> tuple[dict, dict]:
    """(its ModelConfig's dict, what it stores) of a run or checkpoint folder: the tensors' bytes (from
    model.safetensors' header, no tensor read), quantization.json, state.json's "pruning" and the sparsity
    its masks.safetensors measures."""
    from safetensors import safe_open

    from scratchllm.checkpoint.folder import (
        CONFIG_FILE,
        MASKS_FILE,
        MODEL_FILE,
        QUANT_CONFIG,
        CheckpointError,
        read_json_object,
        read_quantization,
        read_state,
        verify_checkpoint,
    )
    from scratchllm.checkpoint.load import resolve_checkpoint
    from scratchllm.model.info import stored_summary
    from scratchllm.model.masks import unpack_mask

    folder = resolve_checkpoint(path)
    state = verify_checkpoint(folder, deep=False) if (folder / "state.json").exists() else {}
    config = read_json_object(folder / CONFIG_FILE)
    try:
        with safe_open(str(folder / MODEL_FILE), framework="pt") as f:
            tensors = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {folder / MODEL_FILE} is missing") from None
    except Exception as e:  # safetensors raises several types for a bad header
        raise CheckpointError(f"checkpoint file {folder / MODEL_FILE} is corrupted or truncated ({e})") from None
    info: dict = {"checkpoint": str(folder), "stored": stored_summary(tensors)}
    if (folder / QUANT_CONFIG).is_file():
        info["quantization"] = read_quantization(folder)
    pruning = read_state(folder).get("pruning") if state else None
    if (folder / MASKS_FILE).is_file():
        with safe_open(str(folder / MASKS_FILE), framework="pt") as f:
            sizes = {k: tensors.get(f"{k}.weight", ("", (0,)))[1] for k in f.keys()}  # noqa: SIM118
            pruned = sum(int((~unpack_mask(f.get_tensor(k), sizes[k])).sum()) for k in sizes)
        masked = sum(math.prod(s) for s in sizes.values())
        params = sum(math.prod(s) for n, (_, s) in tensors.items() if not (n == "lm_head.weight"
                                                                             and config.get("tie_weights")))
        pruning = {**(pruning or {}), "measured": {"pruned_weights": pruned, "masked_weights": masked,
                                                   "sparsity_of_masked": pruned / max(1, masked),
                                                   "sparsity_of_model": pruned / max(1, params)}}
    if pruning is not None:
        info["pruning"] = pruning
    return config, info


def format_checkpoint(info: dict) -> str:
    """The stored-tensor rows of `scratchllm model info RUN`."""
    st = info["stored"]
    rows = [("checkpoint", info["checkpoint"]), ("stored tensors", "(model.safetensors)")]
    rows += [(f"  {kind}", _bytes(n)) for kind, n in st["by_kind"].items()]
    rows.append(("  total", f"{_bytes(st['total_bytes'])} ({st['total_bytes'] / st['fp32_bytes']:.2f} of fp32's "
                            f"{_bytes(st['fp32_bytes'])})"))
    q = info.get("quantization")
    if q is not None:
        how = "int8, one scale per output channel" if q["bits"] == 8 else \
            f"int4, groups of {q['group_size']}"
        rows.append(("quantization", f"{how}, {'symmetric' if q['symmetric'] else 'asymmetric'}; "
                                     f"{len(q['modules'])} linear layers, embedding {q['embedding'] or 'kept'}"))
    p = info.get("pruning")
    if p is not None:
        if p.get("structured") == "heads":
            what = f"attention heads {p['heads_before']} -> {p['heads_after']} per block"
        elif p.get("structured") == "neurons":
            what = f"MLP neurons {p['mlp_hidden_before']} -> {p['mlp_hidden_after']} per block"
        elif "scope" in p:
            what = f"unstructured magnitude, {p['scope']} scope, sparsity {p['sparsity']:g}"
        else:
            what = "unstructured (masks)"
        m = p.get("measured")
        if m is not None:
            what += (f"; {m['sparsity_of_masked']:.1%} of the masked weights zero ({m['pruned_weights']:,}), "
                     f"{m['sparsity_of_model']:.1%} of all")
        rows.append(("pruning", what))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cmd_info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from scratchllm.config.model import ModelConfig
    from scratchllm.errors import UserError
    from scratchllm.model.info import summary

    if args.preset is not None and args.config is None and ("/" in args.preset or Path(args.preset).is_dir()):
        if args.overrides:
            raise UserError(f"--key value flags change a preset or a config file; {args.preset} has its own config")
        config_dict, stored = checkpoint_info(args.preset)
        try:
            config = ModelConfig.from_dict(config_dict)
        except (UserError, TypeError) as e:
            raise UserError(f"{stored['checkpoint']}/config.json does not describe a model ({e})") from None
        if args.seq_len is not None and args.seq_len <= 0:
            raise UserError(f"--seq-len must be a positive integer, got {args.seq_len}")
        s = {**summary(config, args.seq_len), **stored}
        print(json.dumps(s, indent=2) if args.json else format_info(s) + "\n" + format_checkpoint(s))
        return 0
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
