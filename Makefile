# The two commands a user needs: `make demo` and `make test`. Both create .venv and install
# the locked dependencies first (uv, CPU only, no CUDA).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo lint test test-fast bench repro ui-prefect ui-mlflow clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/python -m pip install --quiet "uv>=0.4"

# torch is the CPU build (torch==2.13.0+cpu): from the wheels folder in PIP_FIND_LINKS when the
# machine has one (no network to PyTorch's index there), else from PyTorch's CPU index.
TORCH_SOURCE = $(if $(PIP_FIND_LINKS),--find-links "$(PIP_FIND_LINKS)",--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)

$(STAMP): requirements.lock pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip sync --python $(BIN)/python $(TORCH_SOURCE) requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/driftloop demo -c rollout

# The checks that keep the code in shape: the linter, the formatter (check only; `ruff format`
# fixes), the import contracts (layers, one adapter per external system, no cycles) and the type
# check (mypy over src/driftloop, strict for the pure modules: [tool.mypy] in pyproject.toml). The
# first three take seconds; mypy a few minutes from cold, seconds once .mypy_cache is warm.
# The same four run as pre-commit hooks (.pre-commit-config.yaml).
lint: install
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/lint-imports --no-logo
	$(BIN)/mypy

test: install lint system-deps
	PYTHON=$(BIN)/python bash tests/run_suite.sh

test-fast: install lint system-deps
	PYTHON=$(BIN)/python bash tests/run_suite.sh -m "not slow"

# Debian packages for the stack and the integration tests, installed only when missing:
# prometheus/promtool, wrk, postgresql, chromium (infra/install-system-deps.sh keeps their
# services from starting: the stack starts its own on 127.0.0.1).
.PHONY: system-deps
system-deps:
	@bash infra/install-system-deps.sh

# The real stack on 127.0.0.1 (PostgreSQL, SeaweedFS, MLflow server, Prefect server + worker,
# Prometheus), no Docker. `make down` stops it; data stays under .driftloop/stack.
.PHONY: up down
up: install system-deps
	$(BIN)/driftloop stack up

down: install
	$(BIN)/driftloop stack down

bench: install
	$(BIN)/python bench/loop.py

# The docs site (MkDocs Material + mkdocstrings: docs/, and an API reference page per subpackage
# generated from the docstrings), built with --strict: a broken link or an unreadable docstring
# fails it. `make docs-serve` rebuilds on every change, on 127.0.0.1 only.
.PHONY: docs docs-serve
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict -a 127.0.0.1:8001

repro: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc metrics show

ui-prefect: install
	$(BIN)/driftloop ui prefect

ui-mlflow: install
	$(BIN)/driftloop ui mlflow

lock: | $(BIN)/uv
	$(BIN)/uv pip compile pyproject.toml --extra stack --extra transformer --extra test --python-version 3.11 \
	  $(TORCH_SOURCE) -o requirements.lock

clean:
	rm -rf .driftloop
