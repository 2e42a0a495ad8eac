"""The demo scenario (entry-point layer: it drives the flows, the server and the simulator).

1. v1 learns the training split without the "new" intents and becomes champion.
2. Quiet traffic (known intents) → the monitor must stay quiet.
3. Drift: new intents make up ``demo.new_share`` of traffic → the monitor must fire and start a
   retrain run; annotators post labels meanwhile.
4. The retrain run trains v2 on the champion's set + the labelled rows and gates it; with a
   rollout policy (``-c rollout``, what ``make demo`` uses) v2 then goes through shadow and canary
   stages on live traffic, which keeps flowing, before it is promoted.
5. The serving app swaps to v2 without a restart; accuracy before/after comes from the logs.
6. The monitor watches v2 against recent production texts v2 never trained on: the new normal
   must not look like drift (or the loop would retrain every cooldown).

The demo starts clean: each run removes the previous run's loop state (registry, logs, data
versions, history) but keeps the Prefect server's run history, so every demo run stays
inspectable in the Prefect UI.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pandas as pd
from rich.console import Console
from rich.table import Table

from driftloop.adapters import predlog, wiring
from driftloop.adapters.logstore import LogRoot
from driftloop.config.settings import Settings
from driftloop.core.overlays import split_for_flow
from driftloop.data import dataset
from driftloop.data.dataset import LABEL, TEXT
from driftloop.ops import procs, simulator

if TYPE_CHECKING:  # the flows import Prefect: run_demo imports them after the CLI set its environment
    from driftloop.flows.monitoring import MonitorOutcome
    from driftloop.flows.training import TrainingOutcome
    from driftloop.ops.prefect_server import PrefectServer

# Loop state a demo run owns; "prefect" (the UI's run history) and "prepared" are kept.
_DEMO_STATE = (
    "mlflow.db",
    "mlartifacts",
    "logs",
    "datasets",
    "dvc-remote",
    "reports",
    "retrain",
    "champion_history.jsonl",
    "retrain_triggers.jsonl",
)


@dataclass
class Timeline:
    console: Console
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = time.perf_counter()
        self.stages: dict[str, float] = {}

    def step(self, message: str) -> None:
        now = time.perf_counter() - self.started
        self.console.print(f"[dim]{now:6.1f}s[/dim]  {message}")

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Record how long the block took under ``name`` in :attr:`stages`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = time.perf_counter() - started


def reset_state(settings: Settings) -> None:
    for name in _DEMO_STATE:
        path = settings.state_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def quiet_prefect_console() -> None:
    """Prefect logs still reach the API (the UI); the terminal shows the demo's timeline."""
    import logging
    import warnings

    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if type(handler).__name__ == "PrefectConsoleHandler":
                handler.setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    warnings.filterwarnings("ignore", message=".*type hint")


class ServingProcess:
    """``driftloop serve`` in a subprocess, as a user would run it."""

    def __init__(self, settings: Settings, config: list[str]):
        self.settings = settings
        self.url = f"http://{settings.serving.host}:{settings.serving.port}"
        exe = Path(sys.executable).parent / "driftloop"
        cmd = [str(exe), "serve", *(arg for c in config for arg in ("-c", c))]
        log = settings.state_dir / "serving.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "ab")  # noqa: SIM115  the server's log, open as long as the server runs
        # /feedback needs a bearer token: the user's, or one made up for this demo run only (the
        # server refuses to start without one, and the annotators must send it).
        token_env = settings.serving.api_token_env
        self.token = os.environ.get(token_env, "").strip() or secrets.token_urlsafe(32)
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, token_env: self.token},
        )

    def wait_ready(self, timeout_s: float = 60) -> None:
        simulator.wait_ready(self.url, timeout_s, self.proc, hint=f"; see {self._log.name}")

    def version(self) -> str | None:
        return httpx.get(f"{self.url}/health", timeout=2).json().get("model_version")

    def wait_version(self, version: str, timeout_s: float = 60) -> float:
        # A poll for the replica to switch (timed for the demo's report), not a retry of a call.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.version() == version:
                return time.time()
            time.sleep(0.05)
        raise TimeoutError(f"serving did not switch to v{version} within {timeout_s:.0f}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            procs.stop_group(self.proc, timeout_s=15)
        self._log.close()


def live_accuracy(log_root: LogRoot) -> pd.DataFrame:
    """Accuracy per model version over labelled requests, from the prediction and feedback logs."""
    joined = predlog.join_feedback(predlog.read_predictions(log_root), predlog.read_feedback(log_root))
    labelled = joined[joined[LABEL].notna()]
    if labelled.empty:
        return pd.DataFrame(columns=["model_version", "labelled", "accuracy"])
    labelled = labelled.assign(correct=labelled["intent"] == labelled[LABEL])
    return (
        labelled.groupby("model_version").agg(labelled=("correct", "size"), accuracy=("correct", "mean")).reset_index()
    )


def estimate_minutes(settings: Settings, train_rows: int, plan: simulator.TrafficPlan) -> tuple[float, float]:
    """Typical and worst-case minutes for the whole demo on 2 CPU cores, from the settings, said
    before it starts.

    Measured on this project's reference machine (2 cores): TF-IDF fits ~10k rows in ~15 s, the
    frozen transformer embeds ~60 texts/s, and a fine-tune runs to its ``max_minutes``. Two
    trainings (v1, v2), the traffic, four monitoring runs, and with a rollout its stages
    (at least their samples' worth of traffic, at most every stage's ``max_duration_s``)."""
    from driftloop.models.transformer import TransformerParams

    rows = max(train_rows, 1)
    family = settings.model.family
    if family in ("transformer", "ensemble"):
        params = TransformerParams.from_params(settings.model.params)
        if params.mode == "finetune":
            fit = params.max_minutes * 60 if params.max_minutes else rows / 3.0 * params.epochs
        else:
            fit = rows / 60.0
        if family == "ensemble":
            fit += rows / 700.0
    else:
        fit = rows / 700.0
    requests = plan.quiet + plan.drift + plan.after
    base = 2 * fit + requests / 150.0 + 4 * 20.0 + 30.0
    low, high = base, base * 1.5
    if settings.rollout.enabled:
        stages = settings.rollout.stages
        low += sum(s.min_samples for s in stages) / 100.0 + settings.rollout.bake.min_samples / 100.0
        high += sum(s.max_duration_s for s in stages) + settings.rollout.bake.max_duration_s
    return low / 60.0, high / 60.0


@dataclass
class DemoRun:
    """What the steps of one demo run share: settings, adapters, the timeline and the data pools."""

    settings: Settings
    config: list[str]
    console: Console
    tl: Timeline
    parts: wiring.Components
    splits: dict[str, pd.DataFrame]
    plan: simulator.TrafficPlan
    failed: int = 0

    def send(self, url: str, texts: pd.DataFrame) -> list[simulator.Answer]:
        """Send ``texts`` to the serving app and count the failed answers."""
        answers = simulator.send(url, texts, self.settings.demo.concurrency)
        self.failed += sum(a.status != 200 for a in answers)
        return answers


@dataclass
class DriftPhase:
    """The drifted window's monitoring outcome, and when drift was confirmed and the retrain ended."""

    out: MonitorOutcome
    drifted: pd.DataFrame
    confirmed_at: float
    retrained_at: float


def run_demo(settings: Settings, config: list[str], console: Console, server: PrefectServer) -> dict[str, Any]:
    """The whole scenario (the module docstring's six steps); returns its figures for bench/loop.py."""
    from driftloop.ops import prefect_server  # noqa: F401  (environment already set by the CLI)

    tl = Timeline(console)
    console.rule("[bold]driftloop demo[/bold] — intent router on " + settings.data.name)
    reset_state(settings)
    tl.step(
        f"state dir [cyan]{settings.state_dir}[/cyan] reset (Prefect run history kept); "
        f"Prefect UI [cyan]{server.ui_url}[/cyan]"
    )
    quiet_prefect_console()
    run = _prepare(settings, config, console, tl)
    v1 = _train_v1(run)
    serving = ServingProcess(settings, run.config)
    try:
        with tl.timed("serving start"):
            serving.wait_ready()
        tl.step(f"   serving {serving.url} answers with v{serving.version()}")
        _quiet_phase(run, serving)
        drift = _drift_phase(run, serving)
        v2 = _check_retrain(run, drift)
        switched = _wait_for_v2(run, serving, v2)
        swap_s = switched - drift.confirmed_at
        tl.stages["drift confirmed -> v2 serving"] = swap_s
        tl.step(
            f"[bold]5. rollout[/bold]: v{v2.candidate.version} answers all traffic "
            f"{swap_s:.1f}s after drift was confirmed (no restart"
            + (
                f"; replicas follow the promotion within {settings.serving.reload_interval_s:.0f}s)"
                if settings.rollout.enabled
                else ")"
            )
        )
        steady = _steady_phase(run, serving, v2, drift.drifted)
    finally:
        serving.stop()
    acc = _summary(run, server)
    return {
        "v1": v1,
        "v2": v2,
        "accuracy": acc,
        "swap_s": swap_s,
        "failed": run.failed,
        "stages": tl.stages,
        "confirmed_at": drift.confirmed_at,
        "retrained_at": drift.retrained_at,
        "serving_at": switched,
        "steady": steady,
        "drift": drift.out.drift,
    }


def _prepare(settings: Settings, config: list[str], console: Console, tl: Timeline) -> DemoRun:
    """The data first: a bad file or a data set too small for the scenario is said before anything runs."""
    parts = wiring.build(settings)
    demo = settings.demo
    prepared = dataset.ensure_prepared(settings.data, parts.prepared_dir)
    splits = {n: prepared.read(n) for n in ("live_known", "live_new")}
    plan = simulator.plan_traffic(
        demo.quiet_requests,
        demo.drift_requests,
        demo.after_requests,
        demo.new_share,
        len(splits["live_known"]),
        len(splits["live_new"]),
        settings.monitor.min_window,
    )
    tl.step(
        f"data set {prepared.name}: {prepared.rows.get('train', '?')} training rows, "
        f"{len(settings.data.new_labels)} labels withheld as new, prepared in {prepared.dir} (key {prepared.key})"
    )
    if plan.scaled:
        tl.step(
            f"   [yellow]traffic scaled to the data set's pools[/yellow] ({len(splits['live_known'])} known-label, "
            f"{len(splits['live_new'])} new-label texts): {plan.summary()}"
        )
    typical, worst = estimate_minutes(settings, prepared.rows.get("train", 0), plan)
    stages = "; rollout stages end by their max_duration_s" if settings.rollout.enabled else ""
    tl.step(
        f"expected duration on 2 CPU cores: about {typical:.0f} min, at most {worst:.0f} min "
        f"({settings.model.family} trained twice{stages})"
    )
    # Flow runs take overlay names only: a path given to the demo reaches them (and the serving
    # process it starts) through DRIFTLOOP_CONFIG (driftloop.core.overlays.split_for_flow).
    return DemoRun(settings, split_for_flow(config) or [], console, tl, parts, splits, plan)


def _train_v1(run: DemoRun) -> TrainingOutcome:
    """Step 1: v1 learns the training split without the new intents and becomes champion."""
    from driftloop.flows.training import training

    run.tl.step(f"[bold]1. version 1[/bold]: training without the {len(run.settings.data.new_labels)} new intents …")
    with (
        run.tl.timed("training flow (v1)"),
        run.console.status("training flow: validate → train → evaluate → register → promote"),
    ):
        v1 = training(reason="initial model (new intents not launched yet)", trigger="demo", config=run.config)
    run.tl.step(
        f"   {v1.candidate}: eval accuracy {v1.report.accuracy:.3f} (the eval set already holds the new "
        f"intents), macro-F1 {v1.report.macro_f1:.3f} → {'champion' if v1.decision.promote else 'rejected'}"
    )
    return v1


def _quiet_phase(run: DemoRun, serving: ServingProcess) -> None:
    """Step 2: known intents only; the monitor must stay quiet."""
    from driftloop.flows.monitoring import monitoring

    demo = run.settings.demo
    run.tl.step(f"[bold]2. quiet traffic[/bold]: {run.plan.quiet} requests of known intents …")
    quiet = simulator.mix(run.splits["live_known"], run.splits["live_new"], run.plan.quiet, 0.0, demo.seed)
    with run.tl.timed("quiet traffic"):
        run.send(serving.url, quiet)
    with run.tl.timed("monitoring flow (quiet)"), run.console.status("monitoring flow on the quiet window"):
        out = monitoring(config=run.config)
    run.tl.step(f"   monitor → [{'red' if out.decision.retrain else 'green'}]{out.decision.reason}[/]")


def _drift_phase(run: DemoRun, serving: ServingProcess) -> DriftPhase:
    """Steps 3–4: drifted traffic, annotators posting labels, the monitor firing a retrain (and rollout)."""
    from driftloop.flows.monitoring import monitoring

    demo, tl = run.settings.demo, run.tl
    tl.step(f"[bold]3. drift[/bold]: {run.plan.drift} requests, {demo.new_share:.0%} of them new intents …")
    # Drawn from the texts the phase after the retrain leaves alone (the plan keeps them apart).
    drifted = simulator.mix(
        run.splits["live_known"], run.splits["live_new"], run.plan.drift, demo.new_share, demo.seed + 1
    )
    with tl.timed("drift traffic"):
        drift_answers = run.send(serving.url, drifted)

    def annotators() -> None:
        time.sleep(demo.label_delay_s)
        posted = simulator.annotate(serving.url, drift_answers, demo.label_share, demo.seed, token=serving.token)
        tl.step(f"   [bold]4. labels arrive[/bold]: annotators posted {posted} labels to /feedback")

    labelling = threading.Thread(target=annotators, daemon=True)
    labelling.start()
    staged = run.settings.rollout.enabled
    # A rollout judges the challenger on live traffic: production flows while it runs. It
    # starts with the rollout, after the retrain built its training set and reference (this
    # traffic repeats the pools' texts, and labelled repeats would leave too few unseen texts
    # to refresh the monitoring reference).
    live = simulator.LiveTraffic(
        serving.url,
        run.splits["live_known"],
        run.splits["live_new"],
        demo.new_share,
        demo.label_share,
        demo.concurrency,
        demo.seed + 100,
        start_when=lambda: run.parts.registry.rollout_state().active,
        token=serving.token,
    )
    with (
        tl.timed("monitoring flow (drift) + retraining flow" + (" + rollout flow" if staged else "")),
        run.console.status(
            "monitoring flow on the drifted window (a retrain run starts if it fires"
            + (", then a rollout run)" if staged else ")")
        ),
        live if staged else contextlib.nullcontext(),
    ):
        out = monitoring(config=run.config)
    retrained_at = time.time()
    labelling.join()
    run.failed += live.failed
    if out.drift:
        for s in out.drift.signals:
            tl.step(
                f"   {s.name:16s} {s.value:.4f} vs threshold {s.threshold:.4f} "
                f"{'[red]drift[/red]' if s.drifted else 'ok'}"
            )
    tl.step(f"   monitor → [{'red' if out.decision.retrain else 'green'}]{out.decision.reason}[/]")
    if out.retrain is None:
        run.console.print("[red]the loop did not close: no retrain run completed[/red]")
        raise SystemExit(1)
    confirmed = run.parts.ledger.records()[-1].time.timestamp()
    v2 = out.retrain
    tl.step(
        f"   retrain run: {v2.candidate} accuracy {v2.report.accuracy:.3f} vs champion "
        f"{v2.champion_report.accuracy if v2.champion_report else float('nan'):.3f} → {v2.decision.reason}"
    )
    if staged and v2.rollout is not None:
        tl.step(
            f"   [bold]rollout[/bold] of {v2.candidate} on live traffic ({len(live.answers)} requests, "
            f"{live.labelled} labelled, {live.failed} failed):"
        )
    return DriftPhase(out, drifted, confirmed, retrained_at)


def _check_retrain(run: DemoRun, drift: DriftPhase) -> TrainingOutcome:
    """The rollout's stages, if one ran; the demo fails unless v2 became champion."""
    v2 = drift.out.retrain
    assert v2 is not None  # noqa: S101  _drift_phase exits when no retrain completed
    if run.settings.rollout.enabled and v2.rollout is not None:
        for entry in run.parts.history.entries():
            if entry.action.startswith("stage:") or (
                entry.to_version == v2.candidate.version and entry.alias == "champion"
            ):
                run.tl.step(f"     {entry.time[11:23]}  {entry.action:16s} {entry.reason[:90]}")
        run.tl.step(f"   rollout → [bold]{v2.rollout.result}[/bold] at {v2.rollout.stage}")
    if not v2.decision.promote or v2.champion != v2.candidate:
        run.console.print(f"[yellow]{v2.candidate} was not promoted; the champion keeps serving[/yellow]")
        raise SystemExit(1)
    return v2


def _wait_for_v2(run: DemoRun, serving: ServingProcess, v2: TrainingOutcome) -> float:
    """When v2 answered all traffic: the serving app's swap, or the rollout's promotion if earlier."""
    switched = serving.wait_version(v2.candidate.version)
    if run.settings.rollout.enabled:
        # The rollout flow returns after its bake; v2 has answered everyone since the promotion.
        promoted = next(
            e
            for e in reversed(run.parts.history.entries())
            if e.alias == "champion" and e.to_version == v2.candidate.version
        )
        switched = min(switched, datetime.fromisoformat(promoted.time).timestamp())
    return switched


def _steady_phase(run: DemoRun, serving: ServingProcess, v2: TrainingOutcome, drifted: pd.DataFrame) -> MonitorOutcome:
    """Step 6: fresh texts in the same mix; the new normal must not look like drift."""
    from driftloop.flows.monitoring import monitoring

    demo = run.settings.demo
    # Fresh texts only (v2 trained on the labelled drifted ones), in the same mix as before.
    used = set(drifted[TEXT])
    after = simulator.mix(
        run.splits["live_known"][~run.splits["live_known"][TEXT].isin(used)],
        run.splits["live_new"][~run.splits["live_new"][TEXT].isin(used)],
        run.plan.after,
        demo.new_share,
        demo.seed + 2,
    )
    after_answers = run.send(serving.url, after)
    simulator.annotate(serving.url, after_answers, demo.label_share, demo.seed + 3, token=serving.token)
    with (
        run.tl.timed("monitoring flow (steady state)"),
        run.console.status("monitoring flow on the new champion's traffic"),
    ):
        steady = monitoring(config=run.config)
    if steady.drift:
        run.tl.step("   " + ", ".join(f"{s.name} {s.value:.3f}/{s.threshold:.3f}" for s in steady.drift.signals))
    run.tl.step(
        f"[bold]6. steady state[/bold]: v{v2.candidate.version} is monitored against recent production "
        f"texts it never trained on → [{'red' if steady.decision.retrain else 'green'}]"
        f"{steady.decision.reason}[/]"
    )
    return steady


def _summary(run: DemoRun, server: PrefectServer) -> pd.DataFrame:
    """Accuracy per model version from the labels, failed requests, and where everything is."""
    console, parts, settings = run.console, run.parts, run.settings
    acc = live_accuracy(parts.log_root)
    table = Table(title="accuracy on drifted traffic (from /feedback labels)")
    for col in ("model version", "labelled requests", "accuracy"):
        table.add_column(col)
    for row in acc.itertuples():
        table.add_row(str(row.model_version), str(row.labelled), f"{row.accuracy:.3f}")
    console.print(table)
    console.print(f"failed requests: {run.failed}")
    console.rule("where everything is")
    # history.dsn holds no password (the settings refuse one)
    history_where = settings.history.dsn if settings.history.backend == "postgres" else settings.history_path
    console.print(
        f"Prefect UI      {server.ui_url}   (after the demo: [bold]make ui-prefect[/bold])\n"
        f"MLflow UI       [bold]make ui-mlflow[/bold] → http://127.0.0.1:5000  ({settings.tracking_uri})\n"
        f"drift reports   {parts.reports_dir}/drift-*.html (also MLflow artifacts of the 'monitor' runs)\n"
        f"prediction log  {parts.log_root}/predictions/   feedback {parts.log_root}/feedback/\n"
        f"history         driftloop history   ({history_where})\n"
        f"training sets   {parts.datasets.root} (DVC); driftloop data restore --version N"
    )
    run.tl.step("done")
    return acc
