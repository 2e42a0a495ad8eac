# The two commands a user needs: `make demo` and `make test`. Both create .venv and install
# the locked dependencies first (uv, CPU only, no CUDA).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench repro ui-prefect ui-mlflow clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/python -m pip install --quiet "uv>=0.4"

$(STAMP): requirements.lock pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip sync --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/driftloop demo

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

bench: install
	$(BIN)/python bench/loop.py

repro: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc metrics show

ui-prefect: install
	$(BIN)/driftloop ui prefect

ui-mlflow: install
	$(BIN)/driftloop ui mlflow

lock: | $(BIN)/uv
	$(BIN)/uv pip compile pyproject.toml --extra test --python-version 3.11 -o requirements.lock

clean:
	rm -rf .driftloop
