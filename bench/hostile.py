"""A well-behaved client's latency, alone and while a hostile client hammers the same server.

Trains the TF-IDF champion on the full BANKING77 training split, registers it in a throw-away
SQLite registry and serves it with ``driftloop serve`` (``run_server``, as the CLI builds it),
once with the default bounds (no rate limit) and once with a per-caller rate limit. Against each
server it measures a well-behaved client (it holds the API token; ``--clients`` keep-alive
connections, one text a request, paced at ``--rps`` requests a second in all) for ``--duration``
seconds alone, then again while a hostile client, in a process of its own, sends batches of
``serving.max_batch`` long texts on ``--hostile-senders`` connections, drips bodies a byte at a
time on ``--drippers`` connections and holds ``--idle`` connections open doing nothing. Prints
one table: the well-behaved client's p50/p99/max and statuses, and what the hostile client got
(200, 408, 429, 503).

    .venv/bin/python bench/hostile.py [--duration 10] [--rps 200] [--rate-limit 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _support import ensure_signing_key, free_port
from serving import _stop, process_tree, wait_until_ready

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "intent-router"
TOKEN = "bench-hostile-token"  # noqa: S105  a throw-away token for a loopback server


def serve_main(argv: list[str]) -> None:
    """The server process: the champion of the SQLite registry, as ``driftloop serve`` runs it."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-root", required=True)
    parser.add_argument("--rate-limit", type=float, default=0.0)
    args = parser.parse_args(argv)

    from driftloop.adapters.wiring import serving_source
    from driftloop.config.settings import load_settings
    from driftloop.serving.app import run_server

    settings = load_settings(
        config_dir=ROOT / "configs",
        registry={"tracking_uri": args.tracking_uri, "model_name": MODEL_NAME},
        serving={"port": args.port, "rate_limit_per_s": args.rate_limit},
    )
    run_server(settings.serving, lambda: serving_source(settings), Path(args.log_root))


# -- HTTP on raw asyncio streams (an httpx client costs more CPU than the server's answer) --------


def _request(port: int, body: bytes, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _read(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, the server closes the connection) of one response."""
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    at = head.find(b"content-length:")
    await reader.readexactly(int(head[at + 15 : head.find(b"\r\n", at)]))
    return int(head[9:12]), b"connection: close" in head


async def well_behaved(
    port: int, texts: list[str], clients: int, rps: float, duration_s: float
) -> tuple[list[float], dict[int, int]]:
    """Latencies (s) and statuses of ``clients`` paced keep-alive connections, one text a request."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    interval = clients / rps
    end = time.perf_counter() + duration_s

    async def one(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        next_at = time.perf_counter() + interval * k / clients
        try:
            while True:
                now = time.perf_counter()
                if now >= end:
                    return
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                next_at += interval
                started = time.perf_counter()
                writer.write(_request(port, json.dumps({"text": texts[i % len(texts)]}).encode(), TOKEN))
                i += clients
                status, closed = await _read(reader)
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
                if closed:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    await asyncio.gather(*(one(k) for k in range(clients)))
    return latencies, statuses


def attack_main(argv: list[str]) -> None:
    """The hostile client's process: prints its statuses as JSON once ``--duration`` is over."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--drippers", type=int, default=50)
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--max-chars", type=int, default=2000)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_attack(args))), flush=True)


async def _attack(args: argparse.Namespace) -> dict[str, int]:
    port = args.port
    statuses: dict[str, int] = {}
    errors = [0]
    end = time.perf_counter() + args.duration
    words = "my card has not arrived yet and the exchange rate you gave me is wrong "
    big = json.dumps({"texts": [(words * 30)[: min(400, args.max_chars)]] * args.max_batch}).encode()

    def count(status: int) -> None:
        statuses[str(status)] = statuses.get(str(status), 0) + 1

    async def sender() -> None:
        while time.perf_counter() < end:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    while time.perf_counter() < end:
                        writer.write(_request(port, big, None))
                        status, closed = await _read(reader)
                        count(status)
                        if closed:
                            break
                finally:
                    writer.close()
            except (OSError, asyncio.IncompleteReadError):
                errors[0] += 1

    async def dripper() -> None:
        body = json.dumps({"text": words}).encode()
        while time.perf_counter() < end:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    writer.write(_request(port, body, None)[: -len(body)])
                    for byte in body[:-1]:  # the last byte never comes
                        if time.perf_counter() >= end:
                            return
                        writer.write(bytes([byte]))
                        await asyncio.sleep(0.1)
                        if reader.at_eof() or len(reader._buffer):  # type: ignore[attr-defined]  answered already
                            break
                    status, _ = await _read(reader)
                    count(status)
                finally:
                    writer.close()
            except (OSError, asyncio.IncompleteReadError):
                errors[0] += 1

    idle = []
    for _ in range(args.idle):
        try:
            idle.append(await asyncio.open_connection("127.0.0.1", port))
        except OSError:
            errors[0] += 1
    await asyncio.gather(*(sender() for _ in range(args.senders)), *(dripper() for _ in range(args.drippers)))
    for _, writer in idle:
        writer.close()
    statuses["connection errors"] = errors[0]
    return statuses


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000 if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--clients", type=int, default=4, help="the well-behaved client's connections")
    parser.add_argument("--rps", type=float, default=200.0, help="the well-behaved client's requests a second")
    parser.add_argument("--rate-limit", type=float, default=300.0, help="texts/s per caller on the second server")
    parser.add_argument("--hostile-senders", type=int, default=8)
    parser.add_argument("--drippers", type=int, default=50)
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--train-rows", type=int, default=0, help="train on a random subset (0: all)")
    args = parser.parse_args()
    ensure_signing_key()
    os.environ["DRIFTLOOP_API_TOKEN"] = TOKEN

    from driftloop.adapters.registry import CHAMPION, Registry
    from driftloop.config.settings import load_settings
    from driftloop.data.dataset import read_labelled
    from driftloop.models.families import get_family

    settings = load_settings(config_dir=ROOT / "configs")
    serving = settings.serving
    train = read_labelled(ROOT / "data/raw/banking77/train.csv", "text", "category")
    if args.train_rows:
        train = train.sample(n=min(args.train_rows, len(train)), random_state=0)
    test = read_labelled(ROOT / "data/raw/banking77/test.csv", "text", "category")
    texts = list(test["text"].sample(frac=1.0, random_state=0))

    work = Path(tempfile.mkdtemp(prefix="driftloop-bench-hostile-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONUNBUFFERED"] = "1"
    tracking_uri = f"sqlite:///{work}/mlflow.db"
    rows: list[tuple[str, str, list[float], dict[int, int], dict[str, int] | None]] = []
    try:
        started = time.perf_counter()
        model = get_family("tfidf").fit(train, dict(settings.model.params), seed=0)
        registry = Registry(tracking_uri, MODEL_NAME, artifact_root=work / "artifacts")
        registry.set_alias(CHAMPION, registry.register_model(model, input_example=texts[:3]))
        print(f"trained on {len(train)} rows and registered in {time.perf_counter() - started:.1f}s", flush=True)

        for label, rate in (("defaults", 0.0), (f"rate limit {args.rate_limit:g}/s", args.rate_limit)):
            port = free_port()
            server = subprocess.Popen(
                [sys.executable, __file__, "serve", "--tracking-uri", tracking_uri, "--port", str(port),
                 "--log-root", str(work / f"logs-{port}"), "--rate-limit", str(rate)],
                env=env, cwd=work,
            )  # fmt: skip
            try:
                wait_until_ready(f"http://127.0.0.1:{port}/ready", server, timeout_s=300)
                asyncio.run(well_behaved(port, texts, args.clients, args.rps, 1.0))  # warm-up
                lat, st = asyncio.run(well_behaved(port, texts, args.clients, args.rps, args.duration))
                rows.append((label, "alone", lat, st, None))
                _print_row(rows[-1])
                attacker = subprocess.Popen(
                    [sys.executable, __file__, "attack", "--port", str(port), "--duration", str(args.duration + 3),
                     "--senders", str(args.hostile_senders), "--drippers", str(args.drippers), "--idle",
                     str(args.idle), "--max-batch", str(serving.max_batch), "--max-chars", str(serving.max_text_chars)],
                    env=env, cwd=work, stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                time.sleep(2.0)  # the attack is in full swing before the measurement starts
                lat, st = asyncio.run(well_behaved(port, texts, args.clients, args.rps, args.duration))
                out, _ = attacker.communicate(timeout=args.duration + 120)
                rows.append((label, "under attack", lat, st, json.loads(out.strip().splitlines()[-1])))
                _print_row(rows[-1])
                print(f"  server processes: {process_tree(server.pid)}", flush=True)
            finally:
                _stop(server)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nwell-behaved client: {args.clients} connections, {args.rps:g} req/s, one text a request, with the token; "
        f"hostile: {args.hostile_senders} connections of {serving.max_batch}-text batches, {args.drippers} dripping "
        f"bodies, {args.idle} idle connections; {args.duration:g} s a run"
    )
    print("| server | well-behaved client | requests | p50 ms | p99 ms | max ms | its statuses | hostile got |")
    print("|---|---|---|---|---|---|---|---|")
    for label, phase, lat, st, hostile in rows:
        ordered = sorted(lat)
        got = "—" if hostile is None else ", ".join(f"{k}: {v}" for k, v in sorted(hostile.items()))
        print(
            f"| {label} | {phase} | {len(ordered)} | {_quantile(ordered, 0.5):.1f} | {_quantile(ordered, 0.99):.1f} "
            f"| {ordered[-1] * 1000:.0f} | {', '.join(f'{k}: {v}' for k, v in sorted(st.items()))} | {got} |"
        )


def _print_row(row: tuple[str, str, list[float], dict[int, int], dict[str, int] | None]) -> None:
    label, phase, lat, st, hostile = row
    ordered = sorted(lat)
    print(
        f"  {label:<20} {phase:<13} n={len(ordered):<6} p50 {_quantile(ordered, 0.5):6.1f} ms  "
        f"p99 {_quantile(ordered, 0.99):6.1f} ms  statuses {st}  hostile {hostile}",
        flush=True,
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "attack":
        attack_main(sys.argv[2:])
    else:
        main()
