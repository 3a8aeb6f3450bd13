"""Sampling settings for generation: what the sampler and the generate command take.

Defaults sample from the model's full distribution, unchanged, as most GPT demos do (temperature
1.0, no top-k/top-p filtering, no repetition penalty); temperature 0 means greedy decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from scratchllm.config.base import Config, check, check_finite


@dataclass
class SampleConfig(Config):
    # Tokens to generate after the prompt (fewer if a stop string or the end-of-text token comes first);
    # 200 is a paragraph or two.
    max_new_tokens: int = 200
    # 0 means greedy (argmax); above 1 flattens the distribution, below 1 sharpens it.
    temperature: float = 1.0
    # Keep only the k most likely tokens; None keeps all.
    top_k: int | None = None
    # Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p; 1.0 keeps all.
    top_p: float = 1.0
    # >1 makes tokens already in the text less likely (CTRL, Keskar et al. 2019); 1.0 is off.
    repetition_penalty: float = 1.0
    # Stop strings: generation ends before the first occurrence, which is not returned.
    stop: tuple[str, ...] = ()
    # Seed of the sampler's own generator, for repeatable samples; None draws a fresh one each time.
    seed: int | None = None
    # Speculative decoding by prompt lookup (greedy only): each step proposes up to this many tokens
    # that followed an earlier occurrence of the text's last few tokens and checks them all in one
    # forward pass. The tokens are greedy decoding's own; it is faster when the text repeats itself
    # (quoting the prompt, code edits, summaries, loops). 0 is off (the default: with nothing to copy,
    # verifying a wrong guess costs a little more than a plain step).
    prompt_lookup: int = 0

    def __post_init__(self) -> None:
        check_finite(self)
        check(self.max_new_tokens >= 0, f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        check(self.temperature >= 0, f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k is not None:
            check(self.top_k > 0, f"top_k must be a positive integer (or none to keep all), got {self.top_k}")
        check(all(self.stop), "stop: a stop string is empty; give each stop string at least one character")
        check(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}")
        check(self.repetition_penalty > 0,
              f"repetition_penalty must be > 0 (1.0 is off), got {self.repetition_penalty}")
        check(self.prompt_lookup >= 0, f"prompt_lookup must be >= 0 (0 is off), got {self.prompt_lookup}")
        if self.prompt_lookup:
            check(self.temperature == 0 and self.repetition_penalty == 1.0,
                  "prompt_lookup speculates greedy tokens: set temperature 0 and repetition_penalty 1.0, "
                  "or prompt_lookup 0")
