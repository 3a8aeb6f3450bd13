# The README's two commands: `make demo` (set up, run the main job) and `make test` (set up, run the tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and pinned: on our machines 2.13.0 is the CPU build that lies on disk.
TORCH ?= torch==2.13.0

# llama-cpp-python (llama.cpp's Python binding, the peer of the GGUF tests and benchmarks/llamacpp.py) is on
# PyPI as source only; compiling llama.cpp takes minutes. It is built once per machine into a wheel cache
# (in scratchllm's cache folder, as files.cache_dir finds it: $SCRATCHLLM_CACHE_DIR, else
# $XDG_CACHE_HOME/scratchllm, else ~/.cache/scratchllm) and installed from there.
# The build targets this machine's CPU (llama.cpp's GGML_NATIVE): keep the cache per machine.
LLAMA_CPP ?= llama-cpp-python==0.3.36
WHEELS ?= $(or $(SCRATCHLLM_CACHE_DIR),$(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME)/scratchllm),$(HOME)/.cache/scratchllm)/wheels

.PHONY: demo test test-slow install dev lint docs clean llama-cpp chromium

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed $(VENV)/.llama-cpp
	$(BIN)/python -m pip install -q -e ".[dev]"
	# the book's own code, a peer for parity tests; --no-deps because it pulls TensorFlow and JupyterLab
	$(BIN)/python -m pip install -q --no-deps "llms-from-scratch==1.0.19"
	touch $@

# the cached wheel if there is one for this Python, else build it into the cache first (under a lock on
# the cache where flock exists, so that two checkouts building at once build it once); then install it
# (--only-binary: never a second build from source here) with its dependencies
WHEELS_LOCK := $(if $(shell command -v flock 2>/dev/null),flock "$(WHEELS)/.lock")
$(VENV)/.llama-cpp: | $(BIN)/python
	mkdir -p "$(WHEELS)"
	$(WHEELS_LOCK) sh -c '$(BIN)/python -m pip install -q --no-index --no-deps --find-links "$(WHEELS)" \
	  "$(LLAMA_CPP)" 2>/dev/null || { echo "building $(LLAMA_CPP) into $(WHEELS) (llama.cpp compiles: minutes)"; \
	  $(BIN)/python -m pip wheel -q --no-deps "$(LLAMA_CPP)" -w "$(WHEELS)"; }'
	$(BIN)/python -m pip install -q --only-binary llama-cpp-python --find-links "$(WHEELS)" "$(LLAMA_CPP)"
	touch $@

install: $(VENV)/.installed
llama-cpp: $(VENV)/.llama-cpp
dev: $(VENV)/.dev

demo: $(VENV)/.installed
	$(BIN)/scratchllm train --config configs/shakespeare-bpe.toml

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests benchmarks docs

# the documentation site into site/ (mkdocs.yml; strict: a broken link or a missing page fails the build)
MKDOCS = NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# the web page's browser test drives Debian's chromium with its driver: installed with apt-get when missing
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { s="$$(command -v sudo || true)"; $$s apt-get update -q && $$s apt-get install -y -q chromium chromium-driver; }

# the default run leaves out the tests marked slow (end-to-end: multi-process jobs, the walkthroughs),
# so it stays well under 15 minutes on 2 cores; `make test-slow` runs those, and CI runs both
test: $(VENV)/.dev chromium
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/python -m pytest -q -m "not slow"
	$(MKDOCS) --quiet -d site

test-slow: $(VENV)/.dev chromium
	$(BIN)/python -m pytest -q -m slow

docs: $(VENV)/.dev
	$(MKDOCS) -d site

clean:
	rm -rf $(VENV) runs .pytest_cache site
