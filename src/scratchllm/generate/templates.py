"""Prompt templates: how an instruction (and its input) becomes the text a finetuned model reads.

- `alpaca_prompt(instruction, input)`: the book's chapter 7 format (`format_input`, after the
  Stanford Alpaca project): a fixed preamble, `### Instruction:`, an optional `### Input:`, and the
  model answers after `ALPACA_RESPONSE`.
- The chat template, for multi-turn data (a list of {"role", "content"} messages, roles system,
  user and assistant): ChatML's role turns (OpenAI's format, also Qwen's), written as plain text,
  `<|im_start|>ROLE\nCONTENT<|im_end|>\n` per message. `render_chat(messages)` gives the text to
  train on and the character spans of the assistant responses (each response's content and its
  `<|im_end|>`: what the model learns to write, the loss targets when the prompt is masked);
  `chat_prompt(messages)` gives the text to generate from, which ends where the assistant's turn
  begins (`<|im_start|>assistant\n`); generation stops at `CHAT_END`. With a tokenizer that has the
  markers as special tokens (Qwen's) they encode as those tokens; with GPT-2's they are ordinary text.

`TEMPLATES` names both; `instruction_prompt(template, instruction, input)` is one instruction (and
input) as the prompt of either, and `template_stops(template)` the stop strings that end a response.

The same template serves finetuning (`finetune.instruct`, `finetune.dpo`), `scratchllm generate`
and, later, chat and the server: a finetuned checkpoint names its template in generation.json.
Not here: tokens (the tokenizer), the decode loop (`generate.engine`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scratchllm.errors import UserError

# The templates a checkpoint may name (generation.json's "prompt_template").
TEMPLATES = ("alpaca", "chat")

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
# What follows the prompt; the response comes right after it.
ALPACA_RESPONSE = "\n\n### Response:\n"


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The book's `format_input`: the preamble, the instruction and, when not empty, the input.

    >>> print(alpaca_prompt("Name a colour.", "warm"))
    Below is an instruction that describes a task. Write a response that appropriately completes the request.
    <BLANKLINE>
    ### Instruction:
    Name a colour.
    <BLANKLINE>
    ### Input:
    warm
    """
    text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}"
    return text + (f"\n\n### Input:\n{input}" if input else "")


# --- the chat template (ChatML's turns as plain text) ----------------------------------------------
CHAT_START = "<|im_start|>"
CHAT_END = "<|im_end|>"
ROLES = ("system", "user", "assistant")


def chat_turn(role: str, content: str) -> str:
    """One message as text.

    >>> chat_turn("user", "Hi")
    '<|im_start|>user\\nHi<|im_end|>\\n'
    """
    return f"{CHAT_START}{role}\n{content}{CHAT_END}\n"


def check_messages(messages: Any, where: str = "the conversation") -> list[dict[str, str]]:
    """`messages` as a list of {"role", "content"} dicts, or a UserError that names `where` and the
    message at fault (a role outside ROLES, content that is not text)."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UserError(f"{where}: message {i} must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise UserError(f"{where}: message {i} has the unknown role {m['role']!r}; roles are "
                            f"{', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise UserError(f"{where}: message {i}'s content is {type(m['content']).__name__}, expected text")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def render_chat(messages: Sequence[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """(text, spans): the conversation as text, and the [start, end) character range of each assistant
    response in it (its content and the `<|im_end|>` that closes it; not the role line before it nor
    the newline after it).

    >>> text, spans = render_chat([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    >>> [text[a:b] for a, b in spans]
    ['Hello<|im_end|>']
    """
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    at = 0
    for m in messages:
        turn = chat_turn(m["role"], m["content"])
        if m["role"] == "assistant":
            start = at + len(CHAT_START) + len(m["role"]) + 1
            spans.append((start, start + len(m["content"]) + len(CHAT_END)))
        parts.append(turn)
        at += len(turn)
    return "".join(parts), spans


def chat_prompt(messages: Sequence[dict[str, str]]) -> str:
    """The conversation so far, then the opening of the assistant's turn: the text to generate from.

    >>> chat_prompt([{"role": "user", "content": "Hi"}])
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    return "".join(chat_turn(m["role"], m["content"]) for m in messages) + f"{CHAT_START}assistant\n"


# --- either template --------------------------------------------------------------------------------
def check_template(template: str) -> str:
    if template not in TEMPLATES:
        raise UserError(f"unknown prompt template {template!r}; choose one of {', '.join(TEMPLATES)}")
    return template


def instruction_prompt(template: str, instruction: str, input: str = "") -> str:
    """One instruction (and input) as the text a model with `template` answers after: the Alpaca
    prompt and its response header, or a user turn (instruction, a blank line, input) and the
    assistant's opening.

    >>> instruction_prompt("chat", "Add 2 and 3.")
    '<|im_start|>user\\nAdd 2 and 3.<|im_end|>\\n<|im_start|>assistant\\n'
    """
    if check_template(template) == "alpaca":
        return alpaca_prompt(instruction, input) + ALPACA_RESPONSE
    return chat_prompt([{"role": "user", "content": instruction + (f"\n\n{input}" if input else "")}])


def template_stops(template: str) -> tuple[str, ...]:
    """Stop strings that end a response (besides the end-of-text token): the chat template's `<|im_end|>`."""
    return (CHAT_END,) if check_template(template) == "chat" else ()
