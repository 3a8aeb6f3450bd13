"""Server settings: where `scratchllm serve` listens, who may call it, and how much work it takes on.

The limits protect a small machine: a request beyond them gets a clear 4xx (or 503 when the server
is busy), never a crash. Defaults suit a laptop CPU serving a GPT-2-sized model to a few people.

Not here: the models (`serve.models`), the routes (`serve.app`), the batching (`serve.scheduler`).
"""

from __future__ import annotations

from dataclasses import dataclass

from scratchllm.config.base import Config, check, check_finite


@dataclass
class ServeConfig(Config):
    # Address to listen on; 127.0.0.1 (this machine only) unless you mean to expose the server.
    host: str = "127.0.0.1"
    # TCP port; 8000 is the usual port of local OpenAI-compatible servers.
    port: int = 8000
    # Clients must send `Authorization: Bearer KEY` on every route but /health; None: no key (the
    # command also reads SCRATCHLLM_API_KEY).
    api_key: str | None = None
    # Rows decoded together in one step per model (a request with n choices takes n rows); 16 keeps a
    # step's matrices small enough for the fast few-row linears on a CPU.
    max_batch: int = 16
    # Requests waiting for a row; beyond this the server answers 503 with Retry-After.
    max_queue: int = 64
    # Seconds a client is told to wait before retrying a 503.
    retry_after: int = 1
    # Longest prompt accepted, in tokens (None: the model's context length).
    max_prompt_tokens: int | None = None
    # Most tokens one answer may ask for (max_tokens), and a chat answer's length when it names none.
    max_output_tokens: int = 1024
    # OpenAI's default max_tokens for /v1/completions when the request names none.
    default_completion_tokens: int = 16
    # Most answers one request may ask for (n); None: max_batch (a request's answers are decoded together).
    max_n: int | None = None
    # Seconds a request may take, waiting included; then it is ended (504) and its rows freed.
    request_timeout: float = 300.0
    # Most texts one classification request may send.
    max_classify_inputs: int = 64
    # The web page's feedback: picked pairs are appended to this JSONL file (what `scratchllm finetune dpo
    # --data FILE` reads) and single ratings to FILE's .ratings.jsonl sibling; None keeps no feedback.
    feedback: str | None = None

    def __post_init__(self) -> None:
        check_finite(self)
        check(bool(self.host), "host is empty; give an address such as 127.0.0.1 (this machine) or 0.0.0.0 (all)")
        check(0 <= self.port <= 65535, f"port must be in 0..65535 (0: any free port), got {self.port}")
        check(self.api_key is None or bool(self.api_key.strip()),
              "api_key is empty; give a key or leave it unset for no key")
        check(self.max_batch >= 1, f"max_batch must be >= 1, got {self.max_batch}")
        check(self.max_queue >= 0, f"max_queue must be >= 0 (0: no waiting, busy means 503), got {self.max_queue}")
        check(self.retry_after >= 0, f"retry_after must be >= 0 seconds, got {self.retry_after}")
        check(self.max_prompt_tokens is None or self.max_prompt_tokens >= 1,
              f"max_prompt_tokens must be >= 1 (or none: the context length), got {self.max_prompt_tokens}")
        check(self.max_output_tokens >= 1, f"max_output_tokens must be >= 1, got {self.max_output_tokens}")
        check(1 <= self.default_completion_tokens <= self.max_output_tokens,
              f"default_completion_tokens must be in 1..max_output_tokens ({self.max_output_tokens}), "
              f"got {self.default_completion_tokens}")
        if self.max_n is not None:
            check(self.max_n >= 1, f"max_n must be >= 1, got {self.max_n}")
            check(self.max_n <= self.max_batch, f"max_n ({self.max_n}) must be <= max_batch ({self.max_batch}): "
                  f"a request's answers are decoded together")
        check(self.request_timeout > 0, f"request_timeout must be > 0 seconds, got {self.request_timeout}")
        check(self.feedback is None or bool(self.feedback.strip()),
              "feedback is empty; give a file such as feedback.jsonl, or leave it unset for no feedback")
        check(self.max_classify_inputs >= 1, f"max_classify_inputs must be >= 1, got {self.max_classify_inputs}")

    @property
    def answers_limit(self) -> int:
        """The most answers (n) a request may ask for."""
        return self.max_n if self.max_n is not None else self.max_batch
