"""Benchmark of rollouts under load: failed requests during rollouts, the cost of shadow mode,
and how fast a bad challenger or a regressing champion is taken out of traffic.

    .venv/bin/python bench/rollout.py [--quick]

Starts a local Prefect server, trains TF-IDF models on BANKING77 (v1 on a part, v2 on more),
registers them in throw-away MLflow SQLite registries and serves them from a separate process
(one uvicorn worker, ``run_server``), with wrk as the load. Parts:

a. one full rollout (shadow → canary 10% → canary 50% → promote → bake) and one rollback (a
   challenger failing one call in four, sent straight to canary) under wrk at several
   concurrency levels, each level in a fresh state dir so the logs the flow re-reads are alike;
b. the added latency of shadow mode: the same load with the champion alone and with a shadow;
c. a bad challenger's canary stage → its rollback → the replica routing no caller to it
   (from part a's rollbacks);
d. a promoted challenger that slows down under full traffic → its rollback → the old champion
   serving again.

Rollout and serving use the project's default timing (``rollout.poll_s``,
``serving.reload_interval_s``) and default stage sizes; the header prints them. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from _support import ensure_signing_key, free_port

ROOT = Path(__file__).resolve().parents[1]
SLOW_MS = 10.0  # a prediction slower than this counts as the regression's first symptom


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# -- the serving process -------------------------------------------------------------------------


def serve_main(argv: list[str]) -> None:
    """The server process: ``run_server`` on the registry (SIGTERM shuts it down cleanly)."""
    tracking_uri, model_name, log_root, port, reload_s = argv
    from driftloop.adapters.registry import Registry
    from driftloop.config.settings import ServingSettings
    from driftloop.serving.app import run_server

    # The bad challengers' file formats (driftloop.models.persist): registered on import.
    from tests.support import rollout_models  # noqa: F401

    # The bench posts no feedback (the only endpoint behind the token).
    run_server(
        ServingSettings(port=int(port), reload_interval_s=float(reload_s), require_token=False),
        lambda: Registry(tracking_uri, model_name),
        Path(log_root),
    )


class Server:
    """One serving process on 127.0.0.1; ``stop`` sends SIGTERM so the logs are closed."""

    def __init__(self, settings: Any):
        import httpx

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        # The bad challengers are classes of tests/support/rollout_models.py, loaded there.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        # Its log (a traceback per failing canary call, by design) goes to a file, not the report.
        self.log_path = Path(settings.state_dir) / "server.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--serve",
                    settings.tracking_uri,
                    settings.registry.model_name,
                    str(settings.log_dir),
                    str(port),
                    str(settings.serving.reload_interval_s),
                ],
                cwd=settings.state_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.client = httpx.Client(base_url=self.url, timeout=5)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the serving process exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if self.client.get("/ready").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the serving process was not ready in 180 s; see {self.log_path}")

    def routing(self) -> dict[str, Any]:
        return self.client.get("/routing").json()

    def metrics(self) -> str:
        return self.client.get("/metrics").text

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Wrk:
    """wrk on ``/predict`` in the background (driftloop.ops.loadgen's script, which records every
    response), either for ``duration_s`` or until ``stop`` (SIGINT: wrk prints its summary).
    ``delay_ms`` adds a pause before each request of a connection: a paced, non-saturating load."""

    def __init__(
        self,
        url: str,
        texts: list[str],
        record_dir: Path,
        connections: int,
        *,
        duration_s: int = 600,
        delay_ms: float = 0.0,
        threads: int = 2,
    ):
        from driftloop.ops import loadgen

        self._loadgen = loadgen
        record_dir.mkdir(parents=True, exist_ok=True)
        for old in record_dir.glob(loadgen.RECORD_GLOB):
            old.unlink()
        script = loadgen.lua_script(texts, record_dir, caller_keys=True)
        if delay_ms:
            script += f"\nfunction delay()\n  return {delay_ms}\nend\n"
        path = record_dir / loadgen.SCRIPT_NAME
        path.write_text(script, encoding="ascii")
        self.record_dir = record_dir
        self.proc = subprocess.Popen(
            [
                "wrk",
                "-t",
                str(min(threads, connections)),
                "-c",
                str(connections),
                "-d",
                f"{duration_s}s",
                "--latency",
                "--timeout",
                "5s",
                "-s",
                str(path),
                f"{url}/predict",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> Any:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.wait()

    def wait(self) -> Any:
        out, err = self.proc.communicate(timeout=900)
        if self.proc.returncode != 0:
            raise RuntimeError(f"wrk failed ({self.proc.returncode}): {err or out}")
        statuses, ids = self._loadgen.read_records(self.record_dir)
        return self._loadgen.parse_wrk_output(out, statuses, ids)


class RoutingWatch:
    """Polls ``/routing`` every ``every_s`` in a thread: (epoch time, champion, slots) samples."""

    def __init__(self, url: str, every_s: float = 0.05):
        self.url, self.every_s = url, every_s
        self.samples: list[tuple[float, str, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self._stop.is_set():
                try:
                    body = client.get("/routing").json()
                    self.samples.append((time.time(), body["champion"], body["slots"]))
                except Exception:  # noqa: BLE001, S110  the server is restarting or busy: sample again
                    pass
                self._stop.wait(self.every_s)

    def stop(self) -> RoutingWatch:
        self._stop.set()
        self._thread.join(timeout=10)
        return self

    def first(self, after: float, test) -> float | None:
        return next((t for t, champ, slots in self.samples if t >= after and test(champ, slots)), None)


# -- state dirs with registered models -----------------------------------------------------------


@dataclass
class Env:
    settings: Any
    parts: Any
    refs: dict[str, Any]


def fresh_env(base: Path, name: str, champion_model: Any, challengers: dict[str, Any]) -> Env:
    """A state dir of its own (registry, logs, history): v1 is the champion, then the challengers
    are registered in order."""
    from driftloop.adapters import wiring
    from driftloop.config.settings import load_settings
    from driftloop.rollout import champion

    os.environ["DRIFTLOOP__PROJECT__STATE_DIR"] = str(base / name)
    settings = load_settings()
    parts = wiring.build(settings)
    example = ["where is my card"]
    v1 = parts.registry.register_model(champion_model, run_name="v1", input_example=example)
    champion.move_alias(parts.registry, parts.history, "champion", v1, action="promote", reason="bench", actor="bench")
    refs = {"v1": v1}
    for key, model in challengers.items():
        refs[key] = parts.registry.register_model(model, run_name=key, input_example=example)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    return Env(settings, parts, refs)


def write_overlay(path: Path, stages: list[dict] | None, bake: dict | None = None) -> list[str]:
    import yaml

    body: dict[str, Any] = {"enabled": True, "bake": {"retrain_on_regression": False, **(bake or {})}}
    if stages is not None:
        body["stages"] = stages
    path.write_text(yaml.safe_dump({"rollout": body}))
    return [str(path)]


# -- /metrics ------------------------------------------------------------------------------------


def latency_histogram(text: str, slot: str) -> tuple[dict[float, float], float, float]:
    """Cumulative buckets, sum and count of driftloop_predict_latency_seconds for ``slot``."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[float, float] = {}
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "driftloop_predict_latency_seconds":
            continue
        for s in family.samples:
            if s.labels.get("slot") != slot:
                continue
            if s.name.endswith("_bucket"):
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name.endswith("_sum"):
                total += s.value
            elif s.name.endswith("_count"):
                count += s.value
    return buckets, total, count


def counter(text: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' histogram_quantile: linear within the bucket holding the q-th observation."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for le in bounds:
        if buckets[le] >= rank:
            if le == float("inf"):
                return lower
            share = (rank - below) / (buckets[le] - below) if buckets[le] > below else 1.0
            return lower + (le - lower) * share
        lower, below = le, buckets[le]
    return lower


def server_view(before: str, after: str, slot: str) -> tuple[float, float, float, int]:
    """(mean ms, p50 ms, p99 ms, count) of the in-app latency for ``slot`` between two scrapes."""
    b0, s0, c0 = latency_histogram(before, slot)
    b1, s1, c1 = latency_histogram(after, slot)
    delta = {le: b1[le] - b0.get(le, 0.0) for le in b1}
    n = c1 - c0
    mean = (s1 - s0) / n * 1000 if n else float("nan")
    return mean, histogram_quantile(0.5, delta) * 1000, histogram_quantile(0.99, delta) * 1000, int(n)


# -- parts ---------------------------------------------------------------------------------------


def part_a(base: Path, models: dict[str, Any], texts: list[str], levels: list[int]) -> list[dict[str, Any]]:
    from driftloop.adapters import predlog
    from driftloop.flows.rollout import PROMOTED, ROLLED_BACK, rollout
    from tests.support.rollout_models import FailingClassifier

    good_cfg = write_overlay(base / "good.yaml", None)
    bad_cfg = write_overlay(
        base / "bad.yaml",
        [
            {"name": "canary-10", "kind": "canary", "weight": 0.1},
            {"name": "canary-50", "kind": "canary", "weight": 0.5},
        ],
    )
    rows = []
    for conns in levels:
        env = fresh_env(
            base, f"level-{conns}", models["v1"], {"v2": models["v2"], "v3": FailingClassifier(models["v2"], every=4)}
        )
        v2, v3 = env.refs["v2"], env.refs["v3"]
        server = Server(env.settings)
        try:
            watch = RoutingWatch(server.url)
            wrk = Wrk(server.url, texts, base / f"wrk-{conns}", conns)
            try:
                time.sleep(2.0)
                t0 = time.monotonic()
                good = rollout(challenger=v2.version, requested_by="bench", config=good_cfg)
                t1 = time.monotonic()
                bad = rollout(challenger=v3.version, requested_by="bench", config=bad_cfg)
                t2 = time.monotonic()
                time.sleep(2.0)
            finally:
                load = wrk.stop()
                watch.stop()
        finally:
            server.stop()
        log_root = env.settings.log_dir
        t = time.perf_counter()
        answered = predlog.read_predictions(log_root)
        read_s = time.perf_counter() - t  # what the flow pays per poll for a log this size
        every = predlog.read_predictions(log_root, include_shadow=True, include_errors=True)
        entries = env.parts.history.entries()
        stage = next(e for e in entries if e.action.startswith("stage:canary") and e.to_version == v3.version)
        back = next((e for e in entries if e.action == "rollback" and e.from_version == v3.version), None)
        canary3 = every[(every["model_version"] == v3.version) & (every["slot"] == "canary")]
        t_stage = epoch(stage.time)
        t_back = epoch(back.time) if back else float("nan")
        # the lambdas are called at once, in this iteration
        first_seen = watch.first(t_stage, lambda c, s: s.get("canary") == v3.version)  # noqa: B023
        cleared = watch.first(t_back, lambda c, s: s.get("canary") != v3.version) if back else None  # noqa: B023
        rows.append(
            {
                "conns": conns,
                "good": good.result == PROMOTED,
                "good_result": good.result,
                "bad": bad.result == ROLLED_BACK,
                "bad_result": f"{bad.result} at {bad.stage}",
                "good_s": t1 - t0,
                "bad_s": t2 - t1,
                "load": load,
                "missing": len(load.request_ids - set(answered["request_id"])),
                "extra": len(answered) - load.requests,
                "absorbed": int((canary3["error"] != "").sum()),
                "skipped": every.attrs[predlog.SKIPPED_LINES],
                "to_rollback": t_back - t_stage,
                "first_canary_log": (canary3["time"].min().timestamp() - t_stage) if len(canary3) else float("nan"),
                "last_canary_log": (canary3["time"].max().timestamp() - t_back) if len(canary3) else float("nan"),
                "routing_on": (first_seen - t_stage) if first_seen else float("nan"),
                "routing_off": (cleared - t_back) if cleared else float("nan"),
                "canary_answers": len(canary3),
                "read_s": read_s,
                "lines": len(every),
            }
        )
    return rows


def part_b(
    base: Path, models: dict[str, Any], texts: list[str], loads: list[tuple[str, int, float]], seconds: int
) -> list[dict[str, Any]]:
    from driftloop.core.types import RolloutState

    env = fresh_env(base, "shadow", models["v1"], {"v2": models["v2"]})
    registry, v2 = env.parts.registry, env.refs["v2"]
    server = Server(env.settings)
    rows = []

    def route(state: RolloutState, shadow: bool) -> None:
        registry.set_rollout_state(state)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            slots = server.routing()["slots"]
            if ("shadow" in slots) == shadow:
                return
            time.sleep(0.05)
        raise TimeoutError("the replica did not apply the routing in 30 s")

    try:
        Wrk(server.url, texts, base / "wrk-warm", 4, duration_s=3).wait()  # warm-up
        for label, conns, delay in loads:
            for mode in ("champion only", "shadow"):
                if mode == "shadow":
                    route(RolloutState(rollout_id="bench", mode="shadow", challenger=v2.version, stage="shadow"), True)
                else:
                    route(RolloutState(), False)
                time.sleep(0.5)
                before = server.metrics()
                load = Wrk(server.url, texts, base / "wrk-shadow", conns, duration_s=seconds, delay_ms=delay).wait()
                time.sleep(0.5)  # the shadow thread finishes the queue
                after = server.metrics()
                mean, p50, p99, n = server_view(before, after, "champion")
                rows.append(
                    {
                        "load": label,
                        "mode": mode,
                        "wrk": load,
                        "srv_mean": mean,
                        "srv_p50": p50,
                        "srv_p99": p99,
                        "srv_n": n,
                        "shadow_n": server_view(before, after, "shadow")[3],
                        "dropped": int(
                            counter(after, "driftloop_shadow_dropped_total")
                            - counter(before, "driftloop_shadow_dropped_total")
                        ),
                    }
                )
    finally:
        server.stop()
    return rows


def part_d(base: Path, models: dict[str, Any], texts: list[str], healthy_calls: int) -> dict[str, Any]:
    from driftloop.adapters import predlog
    from driftloop.flows.rollout import rollout
    from tests.support.rollout_models import DegradingClassifier

    env = fresh_env(
        base,
        "regression",
        models["v1"],
        {"v2": DegradingClassifier(models["v2"], healthy_calls=healthy_calls, delay_s=0.02)},
    )
    v1, v2 = env.refs["v1"], env.refs["v2"]
    cfg = write_overlay(
        base / "regress.yaml",
        [{"name": "canary-50", "kind": "canary", "weight": 0.5}],
        bake={"min_samples": 20000, "max_duration_s": 120},
    )
    server = Server(env.settings)
    try:
        watch = RoutingWatch(server.url)
        wrk = Wrk(server.url, texts, base / "wrk-regress", 2, delay_ms=10)
        try:
            time.sleep(2.0)
            out = rollout(challenger=v2.version, requested_by="bench", config=cfg)
            time.sleep(2.0)
        finally:
            load = wrk.stop()
            watch.stop()
    finally:
        server.stop()
    answered = predlog.read_predictions(env.settings.log_dir)
    entries = env.parts.history.entries()
    promote = next((e for e in entries if e.action == "promote" and e.to_version == v2.version), None)
    back = next(
        (e for e in entries if e.alias == "champion" and e.action == "rollback" and e.from_version == v2.version), None
    )
    slow = answered[
        (answered["model_version"] == v2.version)
        & (answered["slot"] == "champion")
        & (answered["latency_ms"] > SLOW_MS)
    ]
    first_slow = slow["time"].min().timestamp() if len(slow) else None
    t_back = epoch(back.time) if back else None
    restored = watch.first(t_back, lambda c, s: c == v1.version) if t_back else None
    after_promote = answered[(answered["model_version"] == v2.version) & (answered["slot"] == "champion")]
    return {
        "result": out.result,
        "reason": out.reason,
        "load": load,
        "missing": len(load.request_ids - set(answered["request_id"])),
        "promote_to_slow": (first_slow - epoch(promote.time)) if promote and first_slow else None,
        "slow_to_rollback": (t_back - first_slow) if t_back and first_slow else None,
        "rollback_to_routing": (restored - t_back) if restored and t_back else None,
        "slow_answers": len(slow),
        "v2_champion_answers": len(after_promote),
    }


# -- report --------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = "6.2f") -> str:
    if value is None or value != value:
        return "   –  "
    return format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer load levels, shorter runs")
    parser.add_argument("--parts", default="abd", help="which parts to run (a includes c), e.g. --parts b")
    parser.add_argument("--serve", nargs=5, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    ensure_signing_key()
    if args.serve:
        serve_main(args.serve)
        return
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))  # flows/ and tests/support/rollout_models.py
    base = Path(tempfile.mkdtemp(prefix="driftloop-rollout-bench-"))
    os.environ["DRIFTLOOP__PROJECT__STATE_DIR"] = str(base / "boot")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.ERROR)  # its per-registration notices
    levels = [8, 32] if args.quick else [4, 8, 16, 32]
    seconds = 5 if args.quick else 10
    loads = [("paced: 2 conns, 5 ms pause per request", 2, 5.0), ("4 conns", 4, 0.0), ("8 conns", 8, 0.0)]
    if args.quick:
        loads = loads[1:2]

    from driftloop.config.settings import load_settings
    from driftloop.ops import prefect_server

    boot = load_settings()
    load_before = os.getloadavg()
    started = time.perf_counter()
    server = prefect_server.ensure_server(base / "prefect", free_port())
    prefect_server.use_server(server, base / "prefect")
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    try:
        from driftloop.data.dataset import read_labelled
        from driftloop.models.families import get_family

        train = read_labelled(ROOT / "data/raw/banking77/train.csv", "text", "category")
        family, params = get_family(boot.model.family), dict(boot.model.params)
        t = time.perf_counter()
        models = {
            "v1": family.fit(train.groupby("label").head(15), params, seed=0),
            "v2": family.fit(train.groupby("label").head(80), params, seed=0),
        }
        train_s = time.perf_counter() - t
        texts = train.groupby("label").tail(8)["text"].tolist()

        part_a_rows = part_a(base, models, texts, levels) if "a" in args.parts else []
        part_b_rows = part_b(base, models, texts, loads, seconds) if "b" in args.parts else []
        part_d_out = part_d(base, models, texts, healthy_calls=800) if "d" in args.parts else None
    finally:
        prefect_server.stop_server(server)
    total = time.perf_counter() - started

    r = boot.rollout
    print(f"\n== driftloop rollout benchmark: {os.cpu_count()} CPUs, {cpu_model()} ==")
    print(
        f"load average before the run (1/5 min): {load_before[0]:.2f} / {load_before[1]:.2f} "
        "(other work on the machine skews the figures)"
    )
    print(
        f"serving: 1 uvicorn worker in its own process, reload_interval_s={boot.serving.reload_interval_s}; "
        f"rollout.poll_s={r.poll_s}; stages "
        + ", ".join(f"{s.name} (n>={s.min_samples})" for s in r.stages)
        + f"; bake n>={r.bake.min_samples}, baseline {r.bake.baseline_samples}"
    )
    print(
        f"models: TF-IDF+LinearSVC, v1 on {15 * 77} rows, v2 on {80 * 77} rows of BANKING77 "
        f"(trained in {train_s:.1f} s); wrk with 2 threads, one text per request"
    )

    print(
        "\n-- a. a full rollout (shadow, canary 10%, canary 50%, promote, bake) then a rollback "
        "(fails 1 call in 4, canary) under wrk --"
    )
    print(
        " conns  rollout  rollback   requests     rps   p50 ms   p99 ms  non-2xx  sock-err  "
        "missing-ids  canary-fails-absorbed  outcomes"
    )
    for row in part_a_rows:
        w = row["load"]
        ok = "ok" if row["good"] and row["bad"] else f"{row['good_result']} / {row['bad_result']}"
        print(
            f" {row['conns']:5d}  {row['good_s']:6.1f}s  {row['bad_s']:7.1f}s  {w.requests:9d}  {w.rps:6.0f}"
            f"  {w.p50_ms:7.2f}  {w.p99_ms:7.2f}  {w.non_2xx:7d}  {w.total_socket_errors:8d}  "
            f"{row['missing']:11d}  {row['absorbed']:21d}  {ok}"
        )
    good = [
        row
        for row in part_a_rows
        if row["good"]
        and row["bad"]
        and row["load"].non_2xx == 0
        and row["load"].total_socket_errors == 0
        and row["missing"] == 0
        and row["load"].p99_ms < 50
    ]
    best = max(good, key=lambda row: row["conns"]) if good else None
    print(
        "highest load with p99 < 50 ms and 0 failures: "
        + (
            f"{best['conns']} connections, {best['load'].rps:.0f} req/s (p99 {best['load'].p99_ms:.1f} ms)"
            if best
            else "none of the levels"
        )
    )
    extra = ", ".join(f"{row['conns']}: {row['extra']:+d}" for row in part_a_rows)
    print(
        f"(logged answers minus wrk's count, in flight when wrk stopped: {extra}; "
        f"unreadable log lines: {sum(row['skipped'] for row in part_a_rows)})"
    )
    reads = ", ".join(f"{row['lines']} lines {row['read_s']:.2f} s" for row in part_a_rows)
    print(f"(one read of the whole prediction log, as the flow does every poll: {reads})")

    print(
        f"\n-- b. added latency of shadow mode ({seconds} s per run; wrk has no rate limit, the paced load "
        f"pauses before each request) --"
    )
    print(
        " load                                      mode             req/s   p50 ms   p99 ms  | in app "
        "(champion slot): mean    p50    p99  | shadow answered  dropped"
    )
    for row in part_b_rows:
        w = row["wrk"]
        print(
            f" {row['load']:<41} {row['mode']:<14} {w.rps:7.0f}  {w.p50_ms:7.2f}  {w.p99_ms:7.2f}  |"
            f"                      {fmt(row['srv_mean'], '5.2f')} {fmt(row['srv_p50'], '6.2f')} "
            f"{fmt(row['srv_p99'], '6.2f')}  | {row['shadow_n']:15d}  {row['dropped']:7d}"
        )
    for i in range(0, len(part_b_rows), 2):
        alone, shadow = part_b_rows[i], part_b_rows[i + 1]
        print(
            f" {alone['load']:<41} shadow adds p50 {shadow['wrk'].p50_ms - alone['wrk'].p50_ms:+.2f} ms, "
            f"p99 {shadow['wrk'].p99_ms - alone['wrk'].p99_ms:+.2f} ms (target < 2 ms at p99); in app mean "
            f"{shadow['srv_mean'] - alone['srv_mean']:+.3f} ms"
        )
    print(" (in-app p50/p99 interpolated in the histogram's buckets: 0.5, 1, 2, 5, 10 ms ...)")

    print("\n-- c. a bad challenger (fails 1 call in 4) from its canary stage to no caller routed to it --")
    print(
        " conns  replica routes to it  first canary answer  stage->rollback line  "
        "rollback->/routing clear  rollback->last canary answer  canary answers"
    )
    for row in part_a_rows:
        print(
            f" {row['conns']:5d}  {fmt(row['routing_on'], '19.2f')}s  {fmt(row['first_canary_log'], '18.2f')}s"
            f"  {fmt(row['to_rollback'], '19.2f')}s  {fmt(row['routing_off'], '23.2f')}s"
            f"  {fmt(row['last_canary_log'], '27.2f')}s  {row['canary_answers']:14d}"
        )
    print(" (times from the history's stage line, and from its rollback line; /routing polled every 50 ms)")

    d = part_d_out
    if d is None:
        print(f"\nwhole benchmark {total:.0f} s (state under {base})")
        return
    w = d["load"]
    print("\n-- d. a promoted version that turns 20 ms slower per call after 800 calls (canary 50%, then bake) --")
    print(
        f" load: 2 conns, 10 ms think: {w.requests} requests, non-2xx {w.non_2xx}, socket errors "
        f"{w.total_socket_errors}, ids missing from the log {d['missing']}"
    )
    print(f" result: {d['result']}")
    print(f" promotion -> first prediction over {SLOW_MS:.0f} ms     {fmt(d['promote_to_slow'], '6.2f')} s")
    print(
        f" first slow prediction -> rollback line    {fmt(d['slow_to_rollback'], '6.2f')} s   "
        f"({d['slow_answers']} slow answers of {d['v2_champion_answers']} by the new champion)"
    )
    print(f" rollback line -> /routing shows v1 again   {fmt(d['rollback_to_routing'], '6.2f')} s")
    print(f" reason: {d['reason'][:300]}")
    print(f"\nwhole benchmark {total:.0f} s (state under {base})")


if __name__ == "__main__":
    main()
