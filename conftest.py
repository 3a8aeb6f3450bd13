"""Fixtures for every test pytest collects: the suite in tests/ and the docstring examples in src/
(`--doctest-modules`). Nothing a test or an example does touches the user's own cache folder."""

import pytest


@pytest.fixture(autouse=True)
def _hermetic_cache(tmp_path_factory, monkeypatch):
    """Downloads and caches go to a temporary folder, never the user's ~/.cache."""
    monkeypatch.setenv("SCRATCHLLM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


# --doctest-modules would also import each tests/ conftest.py as a plain module, and they share a
# basename; pytest still loads them as conftests (this only keeps them out of the doctest search).
collect_ignore_glob = ["tests/conftest.py", "tests/*/conftest.py"]
