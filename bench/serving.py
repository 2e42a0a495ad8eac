"""Serving throughput and latency: driftloop's app against ``mlflow models serve``.

Trains a model (TF-IDF by default) on the full BANKING77 training split, registers it in a throw-away
MLflow SQLite registry, then for each server (one uvicorn worker, in its own process) sends
POST requests with one text each at concurrency 1 and 16 and reports requests/s and p50/p99
latency, next to the in-process cost of ``predict`` and of one prediction-log write.

The load generator is a minimal keep-alive HTTP/1.1 client on asyncio (uvloop when installed),
running in this process while the server runs in another: an httpx client costs more CPU per
request than the server does, and on two cores it would measure itself. Its own CPU use is
printed, so a saturated generator shows.

    .venv/bin/python bench/serving.py [--duration 10] [--skip-mlflow] [--families tfidf,transformer]

``--families`` serves each family in turn from the same registry (a new champion each), so the
transformer model's throughput and p99 stand next to TF-IDF's under the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from _support import free_port

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "intent-router"


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    requests: int
    failed: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    client_cpu: float  # share of one core the load generator used
    server_cpu: float | None  # share of one core the server process used


def wait_until_ready(url: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")


def _process_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


async def _one_client(
    host: str,
    port: int,
    requests: list[bytes],
    offset: int,
    stop: list[bool],
    measuring: list[bool],
    latencies: list[float],
    failures: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = offset
    try:
        while not stop[0]:
            request = requests[i % len(requests)]
            i += 1
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lower = head.lower()
            at = lower.find(b"content-length:")
            if at < 0:
                raise RuntimeError("the benchmark client only reads responses with Content-Length")
            length = int(lower[at + 15 : lower.find(b"\r\n", at)])
            await reader.readexactly(length)
            elapsed = time.perf_counter() - started
            if measuring[0]:
                latencies.append(elapsed)
                if head[9:12] != b"200":
                    failures[0] += 1
    finally:
        writer.close()


async def _load(
    host: str,
    port: int,
    requests: list[bytes],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    server_pid: int | None,
) -> LoadResult:
    stop, measuring = [False], [False]
    latencies: list[float] = []
    failures = [0]
    clients = [
        asyncio.create_task(_one_client(host, port, requests, k * 997, stop, measuring, latencies, failures))
        for k in range(concurrency)
    ]
    await asyncio.sleep(warmup_s)
    measuring[0] = True
    cpu0, wall0 = time.process_time(), time.perf_counter()
    server0 = _process_cpu_s(server_pid) if server_pid else None
    await asyncio.sleep(duration_s)
    measuring[0] = False
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    server1 = _process_cpu_s(server_pid) if server_pid else None
    stop[0] = True
    await asyncio.gather(*clients)
    ordered = sorted(latencies)
    n = len(ordered)
    return LoadResult(
        concurrency=concurrency,
        requests=n,
        failed=failures[0],
        rps=n / wall,
        p50_ms=ordered[n // 2] * 1000 if n else float("nan"),
        p99_ms=ordered[min(n - 1, int(n * 0.99))] * 1000 if n else float("nan"),
        max_ms=ordered[-1] * 1000 if n else float("nan"),
        client_cpu=cpu / wall,
        server_cpu=(server1 - server0) / wall if server0 is not None and server1 is not None else None,
    )


def run_load(
    host: str,
    port: int,
    path: str,
    bodies: list[bytes],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    server_pid: int | None,
) -> LoadResult:
    requests = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - plain asyncio is slower but fine
        runner = asyncio.run
    return runner(_load(host, port, requests, concurrency, duration_s, warmup_s, server_pid))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _print(server: str, result: LoadResult) -> None:
    server_cpu = f"{result.server_cpu:4.0%}" if result.server_cpu is not None else "  ? "
    print(
        f"  {server:<14} c={result.concurrency:<3} {result.rps:8.0f} req/s   p50 {result.p50_ms:6.2f} ms"
        f"   p99 {result.p99_ms:6.2f} ms   max {result.max_ms:6.1f} ms   failed {result.failed}/{result.requests}"
        f"   cpu: server {server_cpu} client {result.client_cpu:4.0%}",
        flush=True,
    )


def serve_main(argv: list[str]) -> None:
    """The server process: driftloop's app on the registry, via :func:`run_server`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-root", required=True)
    args = parser.parse_args(argv)

    from driftloop.adapters.registry import Registry
    from driftloop.config.settings import ServingSettings
    from driftloop.serving.app import run_server

    # The bench posts no feedback (the only endpoint behind the token); /predict costs the same.
    run_server(
        ServingSettings(port=args.port, require_token=False),
        Registry(args.tracking_uri, MODEL_NAME),
        Path(args.log_root),
    )


def _family_settings(name: str, base_params: dict) -> tuple[str, dict]:
    """(family, params) of a bench row: ``tfidf`` (base.yaml's), ``transformer`` (the MiniLM
    encoder with a linear head; a fine-tuned one has the same graph, so it serves at the same
    cost) and ``ensemble`` (both)."""
    transformer = {"mode": "frozen", "max_length": 64}
    if name == "tfidf":
        return "tfidf", dict(base_params)
    if name == "transformer":
        return "transformer", transformer
    if name == "ensemble":
        return "ensemble", {**base_params, **transformer, "ensemble_members": ["tfidf", "transformer"]}
    raise SystemExit(f"unknown family {name!r}: tfidf, transformer or ensemble")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--families", default="tfidf", help="comma-separated: tfidf, transformer, ensemble (each served in turn)"
    )
    parser.add_argument(
        "--train-rows",
        type=int,
        default=0,
        help="train on a random subset (0: all); serving cost does not depend on it",
    )
    parser.add_argument("--skip-mlflow", action="store_true")
    args = parser.parse_args()

    from driftloop.adapters.predlog import PredictionLog
    from driftloop.adapters.registry import CHAMPION, Registry
    from driftloop.config.settings import load_settings
    from driftloop.data.dataset import read_labelled
    from driftloop.models.families import get_family

    settings = load_settings(config_dir=ROOT / "configs")
    train = read_labelled(ROOT / "data/raw/banking77/train.csv", "text", "category")
    if args.train_rows:
        train = train.sample(n=min(args.train_rows, len(train)), random_state=0)
    test = read_labelled(ROOT / "data/raw/banking77/test.csv", "text", "category")
    texts = list(test["text"].sample(frac=1.0, random_state=0))
    bodies = [json.dumps({"text": t}).encode() for t in texts]
    mlflow_bodies = [json.dumps({"dataframe_records": [{"text": t}]}).encode() for t in texts]

    work = Path(tempfile.mkdtemp(prefix="driftloop-bench-"))
    procs: list[subprocess.Popen] = []
    mlflow_group: int | None = None
    tracking_uri = f"sqlite:///{work}/mlflow.db"
    registry = Registry(tracking_uri, MODEL_NAME, artifact_root=work / "art")
    # mlflow exports its current URIs into os.environ (for its own subprocesses); start the
    # servers from a clean slate and name the store explicitly.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        PYTHONUNBUFFERED="1",
        MLFLOW_TRACKING_URI=tracking_uri,
        MLFLOW_REGISTRY_URI=tracking_uri,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    results: dict[tuple[str, str], dict[int, LoadResult]] = {}
    try:
        for name in [f.strip() for f in args.families.split(",") if f.strip()]:
            family, params = _family_settings(name, dict(settings.model.params))
            print(f"== {name}", flush=True)
            started = time.perf_counter()
            model = get_family(family).fit(train, params, seed=0)
            print(f"trained on {len(train)} rows in {time.perf_counter() - started:.1f}s", flush=True)

            model.predict(texts[:10])
            sample = texts[: 2000 if family == "tfidf" else 300]
            started = time.perf_counter()
            for text in sample:
                model.predict([text])
            predict_us = (time.perf_counter() - started) / len(sample) * 1e6
            started = time.perf_counter()
            model.predict(texts[:512])
            batch_us = (time.perf_counter() - started) / 512 * 1e6

            log = PredictionLog(work / f"log-bench-{name}", 1.0)
            one = model.predict([texts[0]])[0]
            started = time.perf_counter()
            for i in range(50_000):
                log.write("0123456789abcdef0123456789abcdef", texts[i % len(texts)], one, "1", 0.42, 12)
            write_us = (time.perf_counter() - started) / 50_000 * 1e6
            log.close()
            print(
                f"in process: predict {predict_us:.0f} us per text one per call, {batch_us:.0f} us per text "
                f"in a batch of 512; prediction-log write {write_us:.1f} us per line",
                flush=True,
            )

            started = time.perf_counter()
            ref = registry.register_model(model, input_example=texts[:3])
            registry.set_alias(CHAMPION, ref)
            print(f"registered {ref} in {time.perf_counter() - started:.1f}s", flush=True)

            port = free_port()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "serve",
                    "--tracking-uri",
                    tracking_uri,
                    "--port",
                    str(port),
                    "--log-root",
                    str(work / f"logs-{name}"),
                ],
                env=env,
                cwd=work,
            )
            procs.append(proc)
            wait_until_ready(f"http://127.0.0.1:{port}/ready", proc, timeout_s=300)
            print("driftloop (uvicorn, 1 worker, prediction log + metrics on):", flush=True)
            results[(name, "driftloop")] = {}
            for c in args.concurrency:
                results[(name, "driftloop")][c] = run_load(
                    "127.0.0.1", port, "/predict", bodies, c, args.duration, args.warmup, proc.pid
                )
                _print("driftloop", results[(name, "driftloop")][c])
            _stop(proc)

            if args.skip_mlflow:
                continue
            port = free_port()
            mlflow_bin = Path(sys.executable).parent / "mlflow"
            mlflow_log = open(work / f"mlflow-serve-{name}.log", "wb")  # noqa: SIM115  closed once the server stops
            proc = subprocess.Popen(
                [
                    str(mlflow_bin),
                    "models",
                    "serve",
                    "-m",
                    f"models:/{ref.name}/{ref.version}",
                    "--env-manager",
                    "local",
                    "--host",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "--workers",
                    "1",
                ],
                env=env,
                cwd=work,
                start_new_session=True,
                # its access log (one line a request, part of its cost) goes to a file
                stdout=mlflow_log,
                stderr=subprocess.STDOUT,
            )
            procs.append(proc)
            mlflow_group = proc.pid
            try:
                wait_until_ready(f"http://127.0.0.1:{port}/ping", proc, timeout_s=300)
            except (RuntimeError, TimeoutError):
                print((work / f"mlflow-serve-{name}.log").read_text()[-3000:], file=sys.stderr)
                raise
            probe = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations",
                method="POST",
                data=json.dumps({"dataframe_records": [{"text": texts[0]}]}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(probe, timeout=30) as resp:
                print(f"mlflow answers: {resp.read().decode()[:200]}", flush=True)
            # The scoring server runs in a child of the `mlflow` CLI; measure that process.
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            kids = children.read_text().split() if children.exists() else []
            server_pid = int(kids[0]) if kids else None
            print("mlflow models serve (uvicorn, 1 worker):", flush=True)
            results[(name, "mlflow")] = {}
            for c in args.concurrency:
                results[(name, "mlflow")][c] = run_load(
                    "127.0.0.1", port, "/invocations", mlflow_bodies, c, args.duration, args.warmup, server_pid
                )
                _print("mlflow", results[(name, "mlflow")][c])
            os.killpg(proc.pid, signal.SIGINT)
            _stop(proc)
            mlflow_group = None
            mlflow_log.close()

        print("\nsummary (one text per request):")
        print(f"  {'family':<12} {'server':<10} {'c':>3} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
        for (name, server), by_c in results.items():
            for c, r in by_c.items():
                print(f"  {name:<12} {server:<10} {c:>3} {r.rps:8.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        if mlflow_group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(mlflow_group, signal.SIGKILL)  # the scoring server under the CLI
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve_main(sys.argv[2:])
    else:
        main()
