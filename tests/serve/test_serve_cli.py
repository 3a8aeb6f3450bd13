"""`scratchllm serve` as a user runs it: a subprocess on a free port, the key from the environment,
one completion through the openai client, Ctrl-C ends it cleanly; a taken port is one error line."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
from serve_helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_serve_command_serves_until_ctrl_c(model_dirs):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SCRATCHLLM_API_KEY": "k3y"}
    cmd = [sys.executable, "-m", "scratchllm.cli", "serve", "-m", f"tiny={model_dirs['base']}", "-m",
           str(model_dirs["chat"]), "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k3y", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny", "chat"]
        r = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert r.usage.completion_tokens >= 1
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401  # the key is required
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"serving on http://127.0.0.1:{port}/v1 (API key required)" in err
    assert "[chat: " in err and "template chat" in err and "Traceback" not in err


def test_a_taken_port_is_one_error_line(model_dirs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "scratchllm.cli", "serve", "-m", str(model_dirs["base"]),
                              "--port", str(port)], env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: cannot listen on 127.0.0.1:{port} (Address already in use); "
                                               f"choose another --port or --host"]
