"""Prompt templates: how an instruction (and its input) becomes the text a finetuned model reads.

- `alpaca_prompt(instruction, input)`: the book's chapter 7 format (`format_input`, after the
  Stanford Alpaca project): a fixed preamble, `### Instruction:`, an optional `### Input:`, and the
  model answers after `ALPACA_RESPONSE`.

The same template serves finetuning (`finetune.instruct`, `finetune.dpo`), `scratchllm generate`
and, later, chat and the server: a finetuned checkpoint names its template in generation.json.
Not here: tokens (the tokenizer), the decode loop (`generate.engine`).
"""

from __future__ import annotations

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
