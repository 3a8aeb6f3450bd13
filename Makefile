# The README's two commands: `make demo` (set up, run the main job) and `make test` (set up, run the tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and pinned: on our machines 2.13.0 is the CPU build that lies on disk.
TORCH ?= torch==2.13.0

.PHONY: demo test install dev lint docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[dev]"
	# the book's own code, a peer for parity tests; --no-deps because it pulls TensorFlow and JupyterLab
	$(BIN)/python -m pip install -q --no-deps "llms-from-scratch==1.0.19"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev

demo: $(VENV)/.installed
	$(BIN)/scratchllm train --config configs/shakespeare-bpe.toml

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests benchmarks docs

# the documentation site into site/ (mkdocs.yml; strict: a broken link or a missing page fails the build)
MKDOCS = NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: $(VENV)/.dev
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/python -m pytest -q
	$(MKDOCS) --quiet -d site

docs: $(VENV)/.dev
	$(MKDOCS) -d site

clean:
	rm -rf $(VENV) runs .pytest_cache site
