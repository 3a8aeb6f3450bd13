"""A conversation with a model: its template, its history trimmed to the context, and the chat REPL's session.

Which text the model reads (`conversation_prompt(template, messages)`, messages being {"role",
"content"} dicts with roles system, user and assistant):

- "chat" (a checkpoint finetuned with `--template chat`, or an imported model whose own chat template
  uses ChatML's `<|im_start|>` markers, as Qwen's does): ChatML turns, the assistant's turn opened at
  the end (`generate.templates.chat_prompt`); the answer stops at `<|im_end|>`.
- "alpaca" (a checkpoint finetuned on the book's instruction format): the template is one instruction
  and its response, so a conversation is a sequence of such blocks, each earlier one followed by its
  answer and a blank line; a system message comes first, as plain text and a blank line.
- None (a base model, no template): plain continuation. The text is the system message and every
  message's content, one after the other; a user's line starts on a new line, and the model
  continues the text. Said at the start of a chat, since a base model does not answer, it continues.

`model_template(generation)` picks the template from a model's generation settings (generation.json,
`interop.load`): its "prompt_template" (written by `scratchllm finetune instruct`), else "chat" for an
imported Jinja chat template written in ChatML, else None. Other Jinja templates (Llama's, Gemma's) are
not rendered: the model is then continued as plain text.

`Conversation` holds the system message and the turns and trims them: before each answer the oldest
exchanges (a user message and its answer) are dropped until the prompt and room for the answer fit the
model's context (the room is max_new_tokens, at most half the context). Dropped turns are gone for
good, and the caller is told how many went. The newest user message is never dropped; if it alone
does not fit, the engine keeps its most recent tokens (with its warning).

`ChatSession` is the terminal REPL's logic without the terminal: `handle(line)` runs a command
(`/help`, `/reset`, `/system TEXT`, `/set KEY VALUE`, `/settings`, `/quit`) or answers a message,
streaming the answer to a text stream as it is generated; a KeyboardInterrupt (Ctrl-C) during an
answer stops it, keeps the part written so far in the history, and the session goes on. Reading
lines, Ctrl-D and the banner are the command's (`cli/chat.py`).

Not here: the decode loop and stop strings (`generate.engine`, `generate.text`), the templates'
text (`generate.templates`), the server (`serve.app`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from scratchllm.config.sample import SampleConfig
from scratchllm.errors import UserError
from scratchllm.generate.engine import TOKENIZER_EOS, EosId
from scratchllm.generate.sampling import make_generator
from scratchllm.generate.templates import (
    ALPACA_RESPONSE,
    CHAT_START,
    alpaca_prompt,
    chat_prompt,
    check_template,
    template_stops,
)
from scratchllm.generate.text import prompt_ids, stream

# What each template means for the person chatting (the REPL's first lines).
TEMPLATE_NOTES = {
    "chat": "chat template: ChatML turns (<|im_start|>role ... <|im_end|>)",
    "alpaca": "prompt template: the book's Alpaca instruction format, one block per turn",
    None: "a base model with no prompt template: plain continuation. Each line you type is added to the text "
          "and the model continues it; it does not answer as an assistant would",
}


def model_template(generation: dict[str, Any] | None) -> str | None:
    """The template of a model with generation settings `generation` (see the module doc).

    >>> model_template({"prompt_template": "alpaca"}), model_template({"chat_template": "{{'<|im_start|>'}}"})
    ('alpaca', 'chat')
    >>> model_template({}) is None, model_template({"chat_template": "[INST]"}) is None
    (True, True)
    """
    generation = generation or {}
    if generation.get("prompt_template"):
        return check_template(generation["prompt_template"])
    if CHAT_START in str(generation.get("chat_template") or ""):
        return "chat"
    return None


def conversation_prompt(template: str | None, messages: Sequence[dict[str, str]]) -> str:
    """The text a model with `template` reads before writing the next assistant message.

    >>> conversation_prompt(None, [{"role": "system", "content": "Once"}, {"role": "user", "content": "upon"}])
    'Once\\nupon'
    >>> print(conversation_prompt("alpaca", [{"role": "user", "content": "Hi"}, {"role": "assistant",
    ...     "content": "Hello."}, {"role": "user", "content": "Bye"}]).replace("\\n\\n", "|"))
    Below is an instruction that describes a task. Write a response that appropriately completes the request.|\
### Instruction:
    Hi|### Response:
    Hello.|Below is an instruction that describes a task. Write a response that appropriately completes the \
request.|### Instruction:
    Bye|### Response:
    <BLANKLINE>
    """
    if template == "chat":
        return chat_prompt(messages)
    if template == "alpaca":
        parts = []
        for m in messages:
            if m["role"] == "system":
                parts.append(m["content"] + "\n\n")
            elif m["role"] == "user":
                parts.append(alpaca_prompt(m["content"]) + ALPACA_RESPONSE)
            else:
                parts.append(m["content"] + "\n\n")
        return "".join(parts)
    if template is not None:
        check_template(template)
    text = ""
    for m in messages:
        if m["role"] == "user" and text and not text.endswith("\n"):
            text += "\n"
        text += m["content"]
    return text


def answer_stops(template: str | None) -> tuple[str, ...]:
    """Stop strings that end an answer under `template` (besides the end-of-text token)."""
    return template_stops(template) if template is not None else ()


@dataclass
class Conversation:
    """A system message and the turns so far, rendered with `template` and trimmed to `context_length`."""

    tokenizer: Any
    template: str | None
    context_length: int
    system: str = ""
    # the turns, oldest first: {"role": "user" | "assistant", "content": text}
    turns: list[dict[str, str]] = field(default_factory=list)

    def messages(self) -> list[dict[str, str]]:
        """The system message (when set) and the turns."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + list(self.turns)

    def prompt(self) -> str:
        return conversation_prompt(self.template, self.messages())

    def tokens(self) -> int:
        return len(prompt_ids(self.tokenizer, self.prompt()))

    def trim(self, room: int) -> int:
        """Drop the oldest exchanges until the prompt plus `room` tokens fit the context; how many turns
        went. The last turn (the user's new message) stays."""
        dropped = 0
        while len(self.turns) > 1 and self.tokens() + room > self.context_length:
            n = 2 if self.turns[0]["role"] == "user" and self.turns[1]["role"] == "assistant" else 1
            n = min(n, len(self.turns) - 1)
            del self.turns[:n]
            dropped += n
        return dropped

    def reset(self) -> None:
        self.turns.clear()


HELP = """commands:
  /help               this list
  /reset              forget the conversation (the system message stays)
  /system TEXT        set the system message (/system alone clears it)
  /set KEY VALUE      change a sampling setting: temperature, top_p, top_k, max_new_tokens,
                      repetition_penalty, seed (none: fresh draws); e.g. /set temperature 0.7
  /settings           show the sampling settings and the conversation's size
  /quit               leave (as Ctrl-D does)
Ctrl-C stops an answer and keeps what was written; Ctrl-D leaves."""

# SampleConfig fields that /set may change (stop strings come from the template).
SETTABLE = ("temperature", "top_p", "top_k", "max_new_tokens", "repetition_penalty", "seed")


class ChatSession:
    """The REPL's logic: commands and streamed answers, written to `out` (see the module doc)."""

    def __init__(self, model: Any, tokenizer: Any, template: str | None, config: SampleConfig, *,
                 eos_id: EosId = TOKENIZER_EOS, out: TextIO) -> None:
        self.model, self.tokenizer, self.eos_id, self.out = model, tokenizer, eos_id, out
        self.template = template
        self.config = config
        self.conversation = Conversation(tokenizer, template, model.config.context_length)
        self._generator = make_generator(config.seed)  # one stream of draws for the session

    # --- output --------------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # --- commands ------------------------------------------------------------------------------------
    def handle(self, line: str) -> bool:
        """Run one line typed by the user (a command or a message); False when the user leaves."""
        text = line.rstrip("\r\n")
        if not text.strip():
            return True
        if text.startswith("/"):
            return self.command(text)
        self.answer(text)
        return True

    def command(self, text: str) -> bool:
        name, _, rest = text.partition(" ")
        rest = rest.strip()
        if name in ("/quit", "/exit", "/bye"):
            return False
        if name == "/help":
            self.say(HELP)
        elif name == "/reset":
            self.conversation.reset()
            self.say("[conversation reset]")
        elif name == "/system":
            self.conversation.system = rest
            self.say(f"[system message set: {rest}]" if rest else "[system message cleared]")
        elif name == "/set":
            self.set(rest)
        elif name == "/settings":
            c = self.config
            seed = "none" if c.seed is None else c.seed
            self.say(f"[temperature {c.temperature}, top_p {c.top_p}, top_k {c.top_k or 'none'}, max_new_tokens "
                     f"{c.max_new_tokens}, repetition_penalty {c.repetition_penalty}, seed {seed}; "
                     f"{len(self.conversation.turns)} turns, {self.conversation.tokens()} of "
                     f"{self.conversation.context_length} context tokens]")
        else:
            self.say(f"error: unknown command {name}; /help lists the commands")
        return True

    def set(self, rest: str) -> None:
        key, _, value = rest.partition(" ")
        key, value = key.replace("-", "_"), value.strip()
        if key not in SETTABLE or not value:
            self.say(f"error: use /set KEY VALUE with KEY one of {', '.join(SETTABLE)}; e.g. /set temperature 0.7")
            return
        try:
            self.config = self.config.override({key: value})
        except UserError as e:
            self.say(f"error: {e}")
            return
        if key == "seed":
            self._generator = make_generator(self.config.seed)
        self.say(f"[{key} = {getattr(self.config, key)}]")

    # --- answers -------------------------------------------------------------------------------------
    def answer(self, text: str) -> str:
        """Add the user's message, trim the history, stream the answer to `out`; the answer's text.

        Ctrl-C while it streams stops it: the part written so far is the answer and stays in the history.
        """
        conv = self.conversation
        try:
            prompt_ids(self.tokenizer, text)  # a character the vocabulary lacks: say so, keep the history
        except UserError as e:
            self.say(f"error: {e}")
            return ""
        conv.turns.append({"role": "user", "content": text})
        room = min(self.config.max_new_tokens, conv.context_length // 2)
        dropped = conv.trim(room)
        if dropped:
            self.say(f"[history trimmed: the {dropped} oldest turns were dropped to fit the model's "
                     f"{conv.context_length}-token context]")
        if conv.tokens() > conv.context_length:
            self.say(f"[the conversation is longer than the model's {conv.context_length}-token context; "
                     f"the model reads its last {conv.context_length} tokens]")
        stops = tuple(dict.fromkeys(self.config.stop + answer_stops(self.template)))
        config = self.config.replace(stop=stops)
        pieces: list[str] = []
        stopped = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the prompt's overflow is the trim note's business
            try:
                for piece in stream(self.model, self.tokenizer, conv.prompt(), config, eos_id=self.eos_id,
                                    generator=self._generator):
                    pieces.append(piece)
                    self.out.write(piece)
                    self.out.flush()
            except KeyboardInterrupt:
                stopped = True
        reply = "".join(pieces)
        self.out.write("\n[stopped]\n" if stopped else "\n")
        self.out.flush()
        conv.turns.append({"role": "assistant", "content": reply})
        return reply
