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
