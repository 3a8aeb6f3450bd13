"""Shared fixtures. `shared_data` is the read-only folder of real data (../shared/data, or
SCRATCHLLM_DATA_DIR); a test that needs it fails loudly when it is missing."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    env = os.environ.get("SCRATCHLLM_DATA_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if not (d / "tinyshakespeare.txt").is_file():
        pytest.fail(f"test data folder {d} is missing; set SCRATCHLLM_DATA_DIR to the shared data folder")
    return d


# Tests here run tiny models: one thread is faster than two there (and far faster when the two
# cores are shared), so the tests in these folders run single-threaded, and the setting is put back.
ONE_THREAD = {"checkpoint", "generate", "train", "finetune"}


@pytest.fixture(autouse=True)
def _one_thread(request):
    if Path(str(request.node.fspath)).parent.name not in ONE_THREAD:
        yield
        return
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
