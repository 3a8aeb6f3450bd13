"""`scratchllm finetune METHOD`: finetune a trained model on a task, every setting overridable.

    scratchllm finetune classify --init-from runs/shakespeare-bpe           # SMS spam, the book's ch. 6
    scratchllm finetune classify --init-from gpt2-124M --data mails.csv --text_column body
    scratchllm finetune instruct --init-from gpt2-124M --lora r=8,alpha=16  # the book's ch. 7, with LoRA
    scratchllm finetune dpo --init-from runs/instruct-alpaca-book           # preference tuning

Settings come from the method's defaults (the book's), then a TOML file (`--config`), then flags:
`--init-from`, `--data`, `--name`, `--runs-dir` and any setting as `--key value` (`--train.lr 1e-4`,
`--epochs 3`, `--lora.r 8`). `--lora r=8,alpha=16,targets=attn,mlp` sets the adapters in one go.
`--resume` continues a stopped run exactly; Ctrl-C saves and exits 130, SIGTERM 143.

Many processes, as for `scratchllm train`: `torchrun --nproc-per-node N -m scratchllm finetune
METHOD ... --train.strategy ddp` (or fsdp; LoRA trains with ddp), or `--nproc N` for N processes on
this machine (`cli.train.launch`). train.batch_size stays the job's batch: each process takes its
share of every batch, so the result is one process's.
"""

from __future__ import annotations

# Each method's one-line description, in the order `--help` lists them.
METHODS = {
    "classify": "a classification head (spam or any labelled CSV/TSV/JSONL), the book's chapter 6",
    "instruct": "instruction following (Alpaca-format or chat data), the book's chapter 7",
    "dpo": "preference tuning with DPO (chosen/rejected responses), the book's chapter 7 bonus",
}
# Config fields that are flags of their own (the rest are --key value settings).
FLAGS = ("init_from", "data", "name", "runs_dir")


def register(subparsers) -> None:
    from scratchllm.cli import needs_action

    p = subparsers.add_parser("finetune", help="finetune a trained model: classify, instruct, dpo",
                              description="Finetune a trained model on a task with the one training loop "
                                          "(checkpoints, exact resume, metrics, plots, model card).")
    sub = p.add_subparsers(dest="method", metavar="METHOD")
    p.set_defaults(func=needs_action(p))
    for method, about in METHODS.items():
        _register_method(sub, method, about)


def _register_method(sub, method: str, about: str) -> None:
    from scratchllm.cli.settings import add_setting_flags, add_settings_help
    from scratchllm.finetune.job import config_class

    config = config_class(method)()
    p = sub.add_parser(method, help=about, description=f"Finetune for {about}.")
    p.add_argument("--config", "-c", default=None, help="TOML file of settings (top-level keys, [train], [lora])")
    p.add_argument("--lora", default=None, metavar="SPEC",
                   help="LoRA adapters in one go, e.g. r=8,alpha=16,targets=attn,mlp (see [lora] settings)")
    p.add_argument("--resume", action="store_true", help="continue the run runs_dir/<name> from its latest checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings as JSON and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="run N processes on this machine (torchrun, standalone); needs train.strategy ddp or fsdp")
    add_setting_flags(p, config, FLAGS, "the run")
    add_settings_help(p, config, "settings (top level of the TOML)", skip=FLAGS,
                      note="Settings (TOML, or --table.key value; undotted --key works when the name is unique). "
                           "Each with its type, default and what it does.")
    p.set_defaults(func=run, accepts_overrides=True, method=method)


def load_config(method: str, path: str | None, overrides: dict) -> object:
    """The method's defaults, then the TOML file, then the overrides (dotted keys)."""
    from scratchllm.config.base import load_toml
    from scratchllm.finetune.job import config_class

    cls = config_class(method)
    data = load_toml(path) if path is not None else {}
    config = cls.from_dict(data)
    return config.override(overrides) if overrides else config


def run(args) -> int:
    import json

    from scratchllm.cli.settings import given_settings
    from scratchllm.config.base import parse_overrides

    overrides = parse_overrides(args.overrides)
    if args.lora is not None:
        from scratchllm.config.lora import LoraConfig

        overrides.update({f"lora.{k}": v for k, v in LoraConfig.spec_overrides(args.lora).items()})
    if args.resume:
        overrides["train.resume"] = "true"
    if args.quiet:
        overrides["train.progress"] = "false"
    overrides.update(given_settings(args, FLAGS))
    config = load_config(args.method, args.config, overrides)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=1))
        return 0
    if args.nproc is not None:
        from scratchllm.cli.train import launch
        from scratchllm.finetune.job import check_strategy

        check_strategy(config)  # one line here rather than one from each process
        return launch(args, config)
    from scratchllm.finetune.job import finetune

    state = finetune(config, args.method, progress=not args.quiet)
    return {"interrupted": 130, "terminated": 143}.get(state.stop_reason, 0)
