"""`scratchllm serve`: an OpenAI-compatible HTTP server for one or more models, with continuous batching.

    scratchllm serve -m runs/instruct-alpaca-book                 # http://127.0.0.1:8000/v1
    scratchllm serve -m small=runs/shakespeare -m chat=runs/instruct --port 8080 --api-key KEY
    scratchllm serve -m runs/classify-sms-spam                    # POST /v1/classifications

Any OpenAI client talks to it (base URL http://HOST:PORT/v1, the model by its name): GET /v1/models,
POST /v1/completions and /v1/chat/completions (streaming, stop, seed, n, logprobs), and for classifier
runs POST /v1/classifications; GET /health needs no key. A model's name is its folder's name, or NAME
with `-m NAME=PATH`; any folder `scratchllm generate -m` reads can be served (a run, a checkpoint, a
Hugging Face folder, a quantized checkpoint, LoRA adapters). Requests that arrive while others
generate share the same decoding steps (continuous batching, --max-batch rows); beyond that up to
--max-queue wait, and the rest get 503 with Retry-After. The server listens on 127.0.0.1 (this
machine) unless --host says otherwise; with --api-key (or SCRATCHLLM_API_KEY) every route but
/health needs `Authorization: Bearer KEY`. A web page at / chats with the models; with --feedback FILE
its picks between two answers are appended to FILE as preference pairs for `scratchllm finetune dpo`,
and its up/down ratings to FILE's .ratings.jsonl sibling (`serve.feedback`). Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import os

# ServeConfig's fields, each a flag.
SERVE_FLAGS = ("host", "port", "api_key", "max_batch", "max_queue", "retry_after", "max_prompt_tokens",
               "max_output_tokens", "default_completion_tokens", "max_n", "request_timeout", "max_classify_inputs",
               "feedback")
# The environment variable that holds the API key when --api-key is not given.
API_KEY_ENV = "SCRATCHLLM_API_KEY"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="an OpenAI-compatible HTTP server for models, with continuous batching",
        description=(__doc__ or "").split("\n", 1)[-1].strip("\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "-m", action="append", default=None, metavar="[NAME=]PATH",
                   help="a model folder to serve, named after its folder or NAME (repeatable; default: the latest "
                        "run in --runs-dir)")
    p.add_argument("--runs-dir", default="runs", help="where to look for the latest run (default: runs)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    from scratchllm.cli.settings import add_setting_flags
    from scratchllm.config.serve import ServeConfig

    add_setting_flags(p, ServeConfig(), SERVE_FLAGS, "server (ServeConfig)",
                      metavars={"api_key": "KEY", "feedback": "FILE"})
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default info: one line per request)")
    p.set_defaults(func=run)


def serve_config(args):
    """ServeConfig from the flags given (the key from SCRATCHLLM_API_KEY when --api-key is not)."""
    from scratchllm.cli.settings import given_settings
    from scratchllm.config.serve import ServeConfig

    given = given_settings(args, SERVE_FLAGS)
    if "api_key" not in given and os.environ.get(API_KEY_ENV):
        given["api_key"] = os.environ[API_KEY_ENV]
    return ServeConfig.from_dict(given)


def check_port(host: str, port: int) -> None:
    """A UserError now, rather than uvicorn's exit after loading the models, when the address is taken."""
    import socket

    from scratchllm.errors import UserError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or --host") from None


def run(args) -> int:
    import sys

    from scratchllm.errors import UserError

    config = serve_config(args)  # validate the settings before loading anything
    try:
        import uvicorn

        from scratchllm.serve.app import create_app
    except ImportError as e:
        raise UserError(f"the server needs FastAPI and uvicorn ({e.name} is missing): pip install "
                        f"'scratchllm[serve]'") from None
    from scratchllm.checkpoint import latest_run
    from scratchllm.runtime import pick_device
    from scratchllm.serve.models import load_models

    check_port(config.host, config.port)
    specs = args.model if args.model else [str(latest_run(args.runs_dir))]
    models = load_models(specs, pick_device(args.device))
    for m in models.values():
        what = f"classifier ({', '.join(m.task['labels'])})" if m.is_classifier else \
            f"template {m.template or 'none (plain continuation)'}"
        print(f"[{m.name}: {m.source}, {what}]", file=sys.stderr)
    key = " (API key required)" if config.api_key else ""
    print(f"serving on http://{config.host}:{config.port}/v1{key}; the chat page is at "
          f"http://{config.host}:{config.port}/; Ctrl-C stops", file=sys.stderr)
    uvicorn.run(create_app(config, models), host=config.host, port=config.port, log_level=args.log_level)
    return 0
