# The two commands a user needs: `make demo` and `make test`. Both create .venv and install
# the locked dependencies first (uv, CPU only, no CUDA).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo lint test test-fast bench repro ui-prefect ui-mlflow clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Supply chain (docs/security.md): every file installed is checked against a sha256 in a lock.
#   requirements.lock            the project's dependencies (make lock)
#   requirements-build.lock      the build backends of what is built from source (hatchling, setuptools)
#   requirements-bootstrap.lock  uv, the installer that installs the other two (pip, --require-hashes)
#   requirements-audit.lock      pip-audit, for `make audit` only (its own venv)
# uv is exactly the version in requirements-bootstrap.lock; pip installs it from a wheel only.
UV_VERSION := 0.13.9

$(BIN)/uv: requirements-bootstrap.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --only-binary :all: \
	  -r requirements-bootstrap.lock
	test "$$($(BIN)/uv --version | cut -d' ' -f2)" = "$(UV_VERSION)"
	touch $(BIN)/uv

# torch is the CPU build (torch==2.13.0+cpu): from the wheels folder in PIP_FIND_LINKS when the
# machine has one (no network to PyTorch's index there), else from PyTorch's CPU index, which
# `--torch-backend cpu` consults for the PyTorch packages only (everything else: PyPI only). No
# index is ever mixed by best match: the hash in the lock decides which file is acceptable.
TORCH_SOURCE = $(if $(PIP_FIND_LINKS),--find-links "$(PIP_FIND_LINKS)",--torch-backend cpu)
# Whatever is built from source takes its build backend from the hashed build lock, never an
# unpinned one: driftloop itself (hatchling, plus `editables` for the editable install) and the
# one locked dependency with no wheel, antlr4-python3-runtime (setuptools). uv calls hash-checked
# build dependencies a preview feature; the uv version is pinned, so its behaviour is too.
BUILD_PINS = --build-constraints requirements-build.lock --require-build-hashes --preview-features build-dependency-hashes

$(STAMP): requirements.lock requirements-build.lock pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip sync --python $(BIN)/python --require-hashes $(BUILD_PINS) $(TORCH_SOURCE) requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps $(BUILD_PINS) -e .
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

# The locks, with a sha256 for every file of every pinned version (`--generate-hashes`). Pins that
# are already in a lock stay as they are (uv prefers them); `make lock UPGRADE=--upgrade` moves them.
# Run it where PyTorch's CPU index is reachable (no PIP_FIND_LINKS) to record the hashes of every
# torch +cpu wheel; with PIP_FIND_LINKS only the local wheel's hash is recorded (docs/security.md).
LOCK_FLAGS = --generate-hashes --python-version 3.11 $(UPGRADE)
lock: | $(BIN)/uv
	$(BIN)/uv pip compile pyproject.toml --extra stack --extra transformer --extra test $(LOCK_FLAGS) \
	  $(TORCH_SOURCE) -o requirements.lock
	{ $(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'; \
	  echo "editables"; echo "setuptools"; } | $(BIN)/uv pip compile - $(LOCK_FLAGS) -o requirements-build.lock
	echo "uv==$(UV_VERSION)" | $(BIN)/uv pip compile - $(LOCK_FLAGS) -o requirements-bootstrap.lock
	echo "pip-audit==$(PIP_AUDIT_VERSION)" | $(BIN)/uv pip compile - $(LOCK_FLAGS) -o requirements-audit.lock

# pip-audit over requirements.lock (docs/security.md). Needs a vulnerability database (OSV by
# default): where none is reachable every package is "could not be audited" and this fails; it is
# not part of `make test` for that reason. A known vulnerability fails unless audit-exceptions.toml
# records it with a reason.
PIP_AUDIT_VERSION := 2.10.1
AUDIT_VENV := $(VENV)/tools/pip-audit
$(AUDIT_VENV)/.installed: requirements-audit.lock | $(BIN)/uv
	$(BIN)/python -m venv --without-pip $(AUDIT_VENV)
	$(BIN)/uv pip sync --python $(AUDIT_VENV)/bin/python --require-hashes requirements-audit.lock
	touch $@

.PHONY: audit pin-images check-images
audit: $(AUDIT_VENV)/.installed | $(BIN)/python
	$(BIN)/python tools/audit_lock.py --pip-audit $(AUDIT_VENV)/bin/pip-audit $(AUDIT_ARGS)

# Container images by digest: `make check-images` lists every image reference in infra/ and the
# Dockerfile without @sha256 (no network); `make pin-images` resolves each tag to its digest with
# crane, skopeo or `docker buildx imagetools` and rewrites the files: run it where a registry is
# reachable (docs/security.md).
check-images: | $(BIN)/python
	$(BIN)/python tools/pin_images.py --check

pin-images: | $(BIN)/python
	$(BIN)/python tools/pin_images.py --pin

clean:
	rm -rf .driftloop
