"""CPU time of one ``POST /predict`` inside the serving app, without the network or a real model.

The whole app runs in this process: FastAPI routing, the body parser, the token check, the
routing snapshot, the prediction service, the prediction-log write and the JSON answer, around
a stand-in model that costs nothing (tests/support/fakes.py). What it prints is the app's own
cost per request, which HTTP benchmarks (bench/serving.py) can only show under the noise of the
network stack and of other load on the machine: CPU time (``time.process_time``), minimum of
several rounds.

    .venv/bin/python bench/serving_overhead.py [--requests 5000] [--rounds 10] [--against DIR]

``--against DIR`` measures another checkout of the project in the same run (its ``src/`` and
``tests/`` on the path, in a subprocess per round, rounds interleaved with this checkout's), so a
change to the serving code is compared with what it replaced: for example a ``git worktree`` of
the commit before. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BODY = b'{"text": "my card has not arrived yet"}'


async def _measure(requests: int) -> float:
    """Microseconds of CPU per request through the ASGI app, after a warm-up."""
    try:
        from driftloop.config.settings import ServingSettings
        from driftloop.serving.app import create_app
    except ImportError:  # a checkout from before the package layout (--against)
        from driftloop.serving import create_app
        from driftloop.settings import ServingSettings
    from tests.support.fakes import FakeSource, ref

    source = FakeSource()
    source.ref = ref("1")
    app = create_app(ServingSettings(require_token=False), source, Path(tempfile.mkdtemp()), api_token="t")  # noqa: S106  a throw-away token for an in-process app
    scope = {
        "type": "http",
        "path": "/predict",
        "method": "POST",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
    }

    async def receive() -> dict:
        return {"type": "http.request", "body": BODY, "more_body": False}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async with app.router.lifespan_context(app):
        for _ in range(500):
            await app(scope, receive, send)
        started = time.process_time()
        for _ in range(requests):
            await app(scope, receive, send)
        spent = time.process_time() - started
    status = sent[-2]["status"]
    if status != 200:
        raise SystemExit(f"POST /predict answered {status}: {sent[-1]}")
    return spent / requests * 1e6


def _round(tree: Path, requests: int) -> float:
    """One round in a fresh interpreter with ``tree``'s code first on the path."""
    env = os.environ | {"PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}"}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", "--requests", str(requests)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=tree,
    )
    if out.returncode != 0:
        raise SystemExit(f"{tree}: {out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["us_per_request"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--against", type=Path, help="another checkout to measure in the same run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    if args.child:
        print(json.dumps({"us_per_request": asyncio.run(_measure(args.requests))}))
        return
    trees = {"this checkout": ROOT} | ({f"--against {args.against}": args.against.resolve()} if args.against else {})
    results: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            results[name].append(_round(tree, args.requests))
    print(f"\nCPU per POST /predict in process ({args.requests} requests a round, {args.rounds} rounds, interleaved)")
    for name, values in results.items():
        ordered = sorted(values)
        print(
            f"  {name:50s} min {ordered[0]:6.1f} us   median {ordered[len(ordered) // 2]:6.1f} us   "
            f"max {ordered[-1]:6.1f} us"
        )


if __name__ == "__main__":
    main()
