"""The models a server offers, by name: each loaded once, with what its routes need to know.

`-m RUN` names a model folder (anything `interop.load.load_any` reads: a run, a checkpoint folder, a
Hugging Face folder, a quantized checkpoint, LoRA adapters); its name in the API is the folder's
name, or NAME with `-m NAME=PATH`. A model whose head has classes (`scratchllm finetune classify`)
is a classifier: it answers /v1/classifications (labels and pooling from its state.json, read by
`finetune.classify.load_classifier`) and no generation route; every other model generates.

What a generating model's chat route reads (`ServedModel.chat_prompt`): the checkpoint's prompt
template (generation.json's "prompt_template", written by `scratchllm finetune instruct`; else "chat"
for an imported Jinja template written in ChatML's `<|im_start|>` turns):
- "chat": ChatML turns, the assistant's turn opened at the end; the answer stops at `<|im_end|>`;
- "alpaca": each user message an Alpaca instruction block, each earlier answer after its
  `### Response:` and a blank line, a system message first as plain text;
- none (a base model): plain continuation. The messages' contents are joined (a user message on a
  new line) and the model continues the text; it does not answer as an assistant would. The chat
  route still works, so a client can talk to any model; /v1/models says which template each has.
These are the rules of the terminal chat (`scratchllm chat`), so a model reads the same text there
and here.

Not here: the templates' text (`generate.templates`), the routes (`serve.app`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.errors import UserError
from scratchllm.generate.engine import TOKENIZER_EOS, end_of_text
from scratchllm.serve.chat import answer_stops, conversation_prompt, model_template


@dataclass
class ServedModel:
    name: str
    source: str  # the folder it was loaded from
    model: Any
    tokenizer: Any
    meta: dict[str, Any]
    task: dict[str, Any] | None = None  # a classifier's task (labels, pooling, max_length); None: generates
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def is_classifier(self) -> bool:
        return self.task is not None

    @property
    def context_length(self) -> int:
        return self.model.config.context_length

    @property
    def generation(self) -> dict[str, Any]:
        return self.meta.get("generation") or {}

    @property
    def eos_ids(self) -> frozenset[int]:
        """The ids that end an answer: the model's own (generation.json), else the tokenizer's <|endoftext|>."""
        own = self.generation.get("eos_token_id")
        return end_of_text(TOKENIZER_EOS if own is None else own, self.tokenizer)

    @property
    def template(self) -> str | None:
        """The prompt template the chat route uses (`serve.chat.model_template`); None: plain continuation."""
        return model_template(self.generation)

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> tuple[str, tuple[str, ...]]:
        """(the text the model reads before its answer, the stop strings that end the answer): the same
        rule as the terminal chat's (`serve.chat.conversation_prompt`)."""
        return conversation_prompt(self.template, messages), answer_stops(self.template)

    def card(self) -> dict[str, Any]:
        """The model as /v1/models lists it (OpenAI's fields, then this server's)."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "scratchllm",
                "kind": "classifier" if self.is_classifier else "generator",
                "context_length": self.context_length, "template": None if self.is_classifier else self.template,
                **({"labels": list(self.task["labels"])} if self.is_classifier else {})}


def parse_spec(spec: str) -> tuple[str, str]:
    """(name, path) of a `-m` value: NAME=PATH, or PATH named after its folder.

    >>> parse_spec("tiny=runs/x"), parse_spec("runs/shakespeare/")
    (('tiny', 'runs/x'), ('shakespeare', 'runs/shakespeare/'))
    """
    name, sep, path = spec.partition("=")
    if sep and name and path and "/" not in name:
        return name, path
    return Path(spec).resolve().name if Path(spec).name in ("", ".", "..") else Path(spec).name, spec


def load_served(name: str, path: str, device: Any = "cpu") -> ServedModel:
    """One model folder, ready to serve (a clear UserError for a folder that cannot be)."""
    from scratchllm.interop.load import load_any

    if not Path(path).exists():
        raise UserError(f"model {name}: {path} does not exist; give a run, checkpoint, Hugging Face or adapters "
                        f"folder (-m PATH or -m NAME=PATH)")
    model, tokenizer, meta = load_any(path, device)
    task = None
    if model.config.n_classes is not None:
        from scratchllm.finetune.classify import load_classifier

        del model
        model, tokenizer, task = load_classifier(path, device)  # checks the labels and the pooling
    if tokenizer is None:
        raise UserError(f"model {name}: {path} has no tokenizer files; the server turns text into tokens with it")
    return ServedModel(name, str(path), model.eval(), tokenizer, meta, task)


def load_models(specs: Sequence[str], device: Any = "cpu") -> dict[str, ServedModel]:
    """The models of `-m` values, by name (each name once)."""
    models: dict[str, ServedModel] = {}
    for spec in specs:
        name, path = parse_spec(spec)
        if name in models:
            raise UserError(f"two models are named {name!r}; name them apart with -m NAME=PATH")
        models[name] = load_served(name, path, device)
    if not models:
        raise UserError("no model to serve; give one with -m RUN (repeatable)")
    return models
