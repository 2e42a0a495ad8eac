"""Serving throughput and latency: driftloop's app against ``mlflow models serve``.

Trains a model (TF-IDF by default) on the full BANKING77 training split, registers it on a
throw-away ``mlflow server`` (SQLite, artifacts proxied: how a deployment serves), then serves it
with ``driftloop serve`` (``--workers N`` processes, reading the registry over REST) and with
``mlflow models serve`` (one worker), and sends POST requests with one text each at every
``--concurrency`` for ``--rounds`` rounds, the two servers taking turns. Every round's requests/s,
p50/p99 and driftloop/mlflow ratio are printed in one table, with the peak RSS of every server
process (driftloop's supervisor and each worker, mlflow's CLI and its scoring server), next to the
in-process cost of ``predict`` and of one prediction-log write.

The load generator is a minimal keep-alive HTTP/1.1 client on asyncio (uvloop when installed),
running in this process while the server runs in another: an httpx client costs more CPU per
request than the server does, and on two cores it would measure itself. Its own CPU use is
printed, so a saturated generator shows.

    .venv/bin/python bench/serving.py [--duration 10] [--rounds 3] [--workers 2] [--skip-mlflow]
        [--concurrency 16 64] [--families tfidf,transformer]

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

from _support import ensure_signing_key, free_port

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
    server_cpu: float | None  # share of one core the server processes used


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


def _process_cpu_s(pids: list[int]) -> float | None:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            out += process_tree(int(child))
    return out


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set (VmHWM), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


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
    server_pids: list[int],
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
    server0 = _process_cpu_s(server_pids) if server_pids else None
    await asyncio.sleep(duration_s)
    measuring[0] = False
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    server1 = _process_cpu_s(server_pids) if server_pids else None
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
    server_pids: list[int],
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
    return runner(_load(host, port, requests, concurrency, duration_s, warmup_s, server_pids))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _print(server: str, result: LoadResult, round_no: int) -> None:
    server_cpu = f"{result.server_cpu:4.0%}" if result.server_cpu is not None else "  ? "
    print(
        f"  round {round_no} {server:<10} c={result.concurrency:<3} {result.rps:8.0f} req/s"
        f"   p50 {result.p50_ms:6.2f} ms"
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
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)

    from driftloop.adapters.wiring import serving_source
    from driftloop.config.settings import load_settings
    from driftloop.serving.app import run_server

    # As `driftloop serve` builds it: the REST source for a tracking server, N workers. The bench
    # posts no feedback (the only endpoint behind the token); /predict costs the same.
    settings = load_settings(
        config_dir=ROOT / "configs",
        registry={"tracking_uri": args.tracking_uri, "model_name": MODEL_NAME},
        serving={"port": args.port, "require_token": False, "workers": args.workers},
    )
    run_server(settings.serving, lambda: serving_source(settings), Path(args.log_root))


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
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every concurrency, the servers taking turns")
    parser.add_argument("--workers", type=int, default=1, help="driftloop serve --workers N")
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
    ensure_signing_key()

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
    groups: list[int] = []
    # mlflow exports its current URIs into os.environ (for its own subprocesses); start the
    # servers from a clean slate and name the store explicitly.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # MLflow's job runner (a second process) is off, as on the stack (ops.stack).
    env.update(
        PYTHONUNBUFFERED="1",
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    tracking_port = free_port()
    tracking_uri = f"http://127.0.0.1:{tracking_port}"
    tracking = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{work}/mlflow.db", "--artifacts-destination",
         str(work / "art"), "--host", "127.0.0.1", "--port", str(tracking_port), "--workers", "1"],
        env=env, cwd=work, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    procs.append(tracking)
    groups.append(tracking.pid)
    env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_REGISTRY_URI=tracking_uri)
    rows: list[tuple[str, int, int, str, LoadResult]] = []  # family, round, c, server, result
    rss: dict[tuple[str, str], float | None] = {}
    try:
        wait_until_ready(f"{tracking_uri}/health", tracking, timeout_s=300)
        registry = Registry(tracking_uri, MODEL_NAME)
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
            print(f"registered {ref} on {tracking_uri} in {time.perf_counter() - started:.1f}s", flush=True)
            servers: dict[str, tuple[int, str, list[bytes], subprocess.Popen]] = {}

            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, __file__, "serve", "--tracking-uri", tracking_uri, "--port", str(port),
                 "--log-root", str(work / f"logs-{name}"), "--workers", str(args.workers)],
                env=env, cwd=work,
            )  # fmt: skip
            procs.append(proc)
            wait_until_ready(f"http://127.0.0.1:{port}/ready", proc, timeout_s=300)
            while len(process_tree(proc.pid)) < 1 + (args.workers if args.workers > 1 else 0):
                time.sleep(0.1)
            servers["driftloop"] = (port, "/predict", bodies, proc)

            if not args.skip_mlflow:
                port = free_port()
                mlflow_log = work / f"mlflow-serve-{name}.log"
                with open(mlflow_log, "wb") as out:  # its access log (one line a request, part of its cost)
                    proc = subprocess.Popen(
                        [str(mlflow_bin), "models", "serve", "-m", f"models:/{ref.name}/{ref.version}",
                         "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port), "--workers", "1"],
                        env=env, cwd=work, start_new_session=True, stdout=out, stderr=subprocess.STDOUT,
                    )  # fmt: skip
                procs.append(proc)
                groups.append(proc.pid)
                try:
                    wait_until_ready(f"http://127.0.0.1:{port}/ping", proc, timeout_s=300)
                except (RuntimeError, TimeoutError):
                    print(mlflow_log.read_text()[-3000:], file=sys.stderr)
                    raise
                probe = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations",
                    method="POST",
                    data=json.dumps({"dataframe_records": [{"text": texts[0]}]}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(probe, timeout=30) as resp:
                    print(f"mlflow answers: {resp.read().decode()[:200]}", flush=True)
                servers["mlflow"] = (port, "/invocations", mlflow_bodies, proc)

            label = f"driftloop ({args.workers} worker{'s' if args.workers > 1 else ''})"
            print(f"{label} vs mlflow models serve (1 worker), {args.rounds} rounds:", flush=True)
            for round_no in range(1, args.rounds + 1):
                for c in args.concurrency:
                    for server, (port, path, server_bodies, proc) in servers.items():
                        pids = process_tree(proc.pid)
                        result = run_load("127.0.0.1", port, path, server_bodies, c, args.duration, args.warmup, pids)
                        rows.append((name, round_no, c, server, result))
                        _print(server, result, round_no)
            for server, (_, _, _, proc) in servers.items():
                for k, pid in enumerate(process_tree(proc.pid)):
                    role = ("supervisor" if args.workers > 1 else "server") if server == "driftloop" else "cli"
                    if k:
                        role = f"worker {k}" if server == "driftloop" else "scoring server"
                    rss[(f"{name} {server}", role)] = peak_rss_mb(pid)
                if server == "mlflow":
                    os.killpg(proc.pid, signal.SIGINT)
                _stop(proc)

        _summary(rows, rss, args.workers)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)  # the scoring server under the CLI, the tracking server
        shutil.rmtree(work, ignore_errors=True)


def _summary(
    rows: list[tuple[str, int, int, str, LoadResult]], rss: dict[tuple[str, str], float | None], workers: int
) -> None:
    """Every round in one table: each server's figures, and driftloop's throughput over mlflow's."""
    by = {(name, rnd, c, server): r for name, rnd, c, server, r in rows}
    print(f"\nsummary (one text per request; driftloop with {workers} worker{'s' if workers > 1 else ''}):")
    print(
        f"  {'family':<8} {'round':>5} {'c':>3} | {'driftloop req/s':>15} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'srv cpu':>7} {'gen cpu':>7} | {'mlflow req/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'gen cpu':>7} "
        f"| {'ratio':>5}"
    )
    for (name, rnd, c, server), r in by.items():
        if server != "driftloop":
            continue
        m = by.get((name, rnd, c, "mlflow"))
        srv = f"{r.server_cpu:.0%}" if r.server_cpu is not None else "?"
        line = (
            f"  {name:<8} {rnd:>5} {c:>3} | {r.rps:15.0f} {r.p50_ms:7.2f} {r.p99_ms:7.2f} {r.max_ms:7.1f} "
            f"{srv:>7} {r.client_cpu:7.0%} |"
        )
        if m is not None:
            line += f" {m.rps:12.0f} {m.p50_ms:7.2f} {m.p99_ms:7.2f} {m.client_cpu:7.0%} | {r.rps / m.rps:4.1f}x"
        print(line)
    print("  srv cpu: the server processes' CPU in cores; gen cpu: the load generator's (one core at most)")
    print("\npeak RSS (VmHWM) of every server process:")
    for (server, role), mb in rss.items():
        print(f"  {server:<22} {role:<16} {mb:7.1f} MB" if mb is not None else f"  {server:<22} {role:<16}       ?")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve_main(sys.argv[2:])
    else:
        main()
