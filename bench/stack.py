"""Benchmark of the real stack: start-up time (cold and warm), and the loop's wall time (drift
confirmed -> new champion serving) on the stack vs the embedded default.

    .venv/bin/python bench/stack.py [--no-embedded] [--keep]

Starts its own stack in a temporary folder on ports beside the defaults (a running `make up`
stack is left alone), runs the demo scenario on it, stops it, restarts it (warm start), then runs
the same scenario on the embedded default (local Prefect server on SQLite, MLflow on SQLite, DVC
remote in a folder). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _support import free_port

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PORTS = {"postgres_port": 25433, "s3_port": 8733, "mlflow_port": 25000, "prefect_port": 24300, "prometheus_port": 29090}


def run_scenario(overlay: Path | None, state: Path, server) -> dict:
    from rich.console import Console

    from driftloop.config.settings import load_settings
    from driftloop.entry.demo import run_demo
    from driftloop.ops import prefect_server

    os.environ["DRIFTLOOP__PROJECT__STATE_DIR"] = str(state)
    os.environ["DRIFTLOOP__SERVING__PORT"] = str(free_port())
    if overlay:
        os.environ["DRIFTLOOP_CONFIG"] = str(overlay)
    else:
        os.environ.pop("DRIFTLOOP_CONFIG", None)
    settings = load_settings()
    prefect_server.use_server(server, state / "prefect")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Prefect reads its settings once per process: the second scenario needs them switched.
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        t = time.perf_counter()
        out = run_demo(settings, [], Console(quiet=True), server)
        out["total"] = time.perf_counter() - t
    print(
        f"{'stack' if overlay else 'embedded'}: drift confirmed -> new champion serving "
        f"{out['serving_at'] - out['confirmed_at']:.1f} s, whole scenario {out['total']:.1f} s",
        flush=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded run")
    parser.add_argument("--keep", action="store_true", help="leave the stack's folder (its logs) behind")
    args = parser.parse_args()
    os.chdir(ROOT)
    os.environ.setdefault("DRIFTLOOP_API_TOKEN", "bench-token")
    os.environ["DRIFTLOOP__RETRAIN__DISPATCH"] = "inline"  # the demo scenario retrains in process
    from driftloop.config.settings import StackSettings
    from driftloop.ops import prefect_server, stack as stack_mod

    root = Path(tempfile.mkdtemp(prefix="driftloop-bench-stack-"))
    root.chmod(0o755)
    st = stack_mod.Stack(
        StackSettings(dir=root, work_pool="driftloop-bench", deploy=False, **PORTS), ROOT, serving_port=free_port()
    )
    results: dict[str, object] = {}
    try:
        t = time.perf_counter()
        cold = stack_mod.up(st)
        results["cold"] = (time.perf_counter() - t, cold)
        print(f"cold start {results['cold'][0]:.1f} s", flush=True)
        stack_mod.down(st)
        t = time.perf_counter()
        warm = stack_mod.up(st)
        results["warm"] = (time.perf_counter() - t, warm)
        print(f"warm start {results['warm'][0]:.1f} s", flush=True)

        for key, value in st.client_env().items():
            os.environ[key] = value
        overlay = root / "bench-stack.yaml"
        overlay.write_text(
            f"registry:\n  tracking_uri: {st.mlflow_url}\nprefect:\n  api_url: {st.prefect_api_url}\n"
            f"storage:\n  dvc_remote: s3://{st.cfg.bucket}/dvc\n  s3_endpoint_url: {st.s3_url}\n"
        )
        server = prefect_server.PrefectServer(st.prefect_api_url, None)
        results["stack"] = run_scenario(overlay, root / "state", server)
    finally:
        stack_mod.down(st)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    if not args.no_embedded:
        state = Path(tempfile.mkdtemp(prefix="driftloop-bench-embedded-"))
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
            os.environ.pop(key, None)
        server = prefect_server.ensure_server(state / "prefect", free_port())
        try:
            results["embedded"] = run_scenario(None, state, server)
        finally:
            prefect_server.stop_server(server)

    print(f"\n== driftloop stack benchmark ({os.cpu_count()} CPUs) ==")
    for kind in ("cold", "warm"):
        total, statuses = results[kind]
        parts = ", ".join(f"{s.name} {s.started_s:.1f}" for s in statuses if s.started_s is not None)
        print(f"stack start-up, {kind:4s} {total:7.1f} s   ({parts})")
    print("\n-- drift confirmed -> new champion answering requests --")
    print(f"{'':24s}{'stack':>10s}{'embedded':>10s}")
    rows = [
        ("total", lambda o: o["serving_at"] - o["confirmed_at"]),
        ("  retraining flow", lambda o: o["retrained_at"] - o["confirmed_at"]),
        ("  serving picks it up", lambda o: o["serving_at"] - o["retrained_at"]),
        ("whole demo scenario", lambda o: o["total"]),
    ]
    for name, fn in rows:
        cells = [f"{fn(results[k]):9.1f}s" if k in results else f"{'-':>10s}" for k in ("stack", "embedded")]
        print(f"{name:24s}{''.join(cells)}")
    for kind in ("stack", "embedded"):
        if kind in results:
            print(
                f"{kind}: failed requests {results[kind]['failed']}, stages: "
                + ", ".join(f"{n} {s:.1f}s" for n, s in results[kind]["stages"].items())
            )


if __name__ == "__main__":
    main()
