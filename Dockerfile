# syntax=docker/dockerfile:1
# One image recipe, two targets, the exact dependency set CI tests (requirements.lock), CPU only.
#
#   docker build --target serving -t driftloop-serving .   # driftloop serve on :8000
#   docker build --target worker  -t driftloop-worker  .   # Prefect worker / flow-run Job image
#
# tests/integration/test_infra_manifests.py keeps this file consistent with pyproject.toml and
# requirements.lock: the Python minor version, every pkg==version pin, the lock file it installs.
# Build with `--build-arg GIT_COMMIT=$(git rev-parse HEAD)` to label the image with its commit.

FROM python:3.11.13-slim-bookworm AS base

ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="driftloop" \
      org.opencontainers.image.revision="${GIT_COMMIT}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    DVC_NO_ANALYTICS=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DRIFTLOOP__PROJECT__STATE_DIR=/var/lib/driftloop

WORKDIR /app

# Every file installed below is checked against a sha256 in a lock (docs/security.md). uv, the
# installer that installs the lock, cannot be in it: requirements-bootstrap.lock pins it exactly
# (the Makefile's UV_VERSION) with the hash of every wheel, installed by pip from a wheel only.
COPY requirements-bootstrap.lock requirements-build.lock ./
RUN pip install --require-hashes --only-binary :all: -r requirements-bootstrap.lock

# Dependencies first, in their own layer: it is rebuilt only when the lock changes.
# `sync` installs exactly the lock (the same file `make install` syncs), nothing more or less.
COPY requirements.lock ./
# torch is pinned to its CPU build (+cpu), which lives on PyTorch's CPU index: `--torch-backend
# cpu` consults that index for the PyTorch packages only, PyPI for everything else. The lock
# holds the hash of the linux x86_64 / CPython 3.11 wheel (docs/security.md: other platforms).
# What has no wheel (antlr4-python3-runtime) is built with setuptools from the hashed build lock.
RUN uv pip sync --system --require-hashes --torch-backend cpu \
      --build-constraints requirements-build.lock --require-build-hashes --preview-features build-dependency-hashes \
      requirements.lock

# Then the project itself, without re-resolving anything; its build backend (hatchling) from the
# hashed build lock.
COPY pyproject.toml README.md ./
COPY src ./src
# flows/ and tasks/ are links into the package (prefect.yaml's entrypoints name flows/*.py); the
# wheel installs them as driftloop.flows and driftloop.tasks only.
RUN ln -s src/driftloop/flows flows && ln -s src/driftloop/tasks tasks \
 && uv pip install --system --no-deps --build-constraints requirements-build.lock --require-build-hashes \
      --preview-features build-dependency-hashes . \
 && python -c "import driftloop.flows, driftloop.tasks"

# Settings are read from configs/ relative to the working directory (and DRIFTLOOP__* env vars).
COPY configs ./configs

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin driftloop \
 && mkdir -p /var/lib/driftloop \
 && chown driftloop:driftloop /var/lib/driftloop
ENV HOME=/home/driftloop \
    PREFECT_HOME=/home/driftloop/.prefect
USER 10001


FROM base AS serving
# Inside a container 0.0.0.0 is the container's own interface; publish it on loopback or behind
# a Service. Both settings are needed: driftloop refuses a public bind without the second.
ENV DRIFTLOOP__SERVING__HOST=0.0.0.0 \
    DRIFTLOOP__SERVING__PORT=8000 \
    DRIFTLOOP_ALLOW_PUBLIC_BIND=1
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["driftloop", "serve"]


FROM base AS worker
# Flow runs need the raw data set (the training flow reads it by configuration).
COPY --chown=10001:10001 data/raw ./data/raw
# `--with-healthcheck` serves /health on 8080 (PREFECT_WORKER_WEBSERVER_PORT).
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
CMD ["prefect", "worker", "start", "--pool", "driftloop", "--type", "process", "--with-healthcheck"]
