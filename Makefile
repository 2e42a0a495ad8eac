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
	$(BIN)/driftloop demo -c rollout

test: install system-deps
	$(BIN)/python -m pytest

test-fast: install system-deps
	$(BIN)/python -m pytest -m "not slow"

# prometheus/promtool and wrk (Debian packages) for the integration tests, installed only when
# missing. A policy-rc.d that denies starts is in place during the install (unless one already
# is): the package would otherwise start prometheus as a service listening on 0.0.0.0:9090.
# --no-install-recommends leaves prometheus-node-exporter out.
.PHONY: system-deps
SYSTEM_TOOLS := prometheus promtool wrk
system-deps:
	@missing=; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	[ -n "$$missing" ] || exit 0; \
	echo "system-deps: installing prometheus wrk (missing:$$missing)"; \
	sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	policy=/usr/sbin/policy-rc.d; own_policy=; \
	if [ ! -e $$policy ]; then \
	  printf '#!/bin/sh\nexit 101\n' | $$sudo tee $$policy >/dev/null && $$sudo chmod 755 $$policy && own_policy=1; \
	fi; \
	$$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus wrk; \
	rc=$$?; \
	[ -z "$$own_policy" ] || $$sudo rm -f $$policy; \
	if [ $$rc = 0 ] && [ -d /run/systemd/system ]; then $$sudo systemctl disable --now prometheus.service >/dev/null 2>&1 || true; fi; \
	exit $$rc

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
	$(BIN)/uv pip compile pyproject.toml --extra stack --extra test --python-version 3.11 -o requirements.lock

clean:
	rm -rf .driftloop
