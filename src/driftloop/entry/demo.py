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

import httpx
import pandas as pd
from rich.console import Console
from rich.table import Table

from driftloop.adapters import predlog, wiring
from driftloop.config.settings import Settings
from driftloop.data import dataset
from driftloop.data.dataset import LABEL, TEXT
from driftloop.ops import procs, simulator

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


def live_accuracy(log_root: Path) -> pd.DataFrame:
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


def run_demo(settings: Settings, config: list[str], console: Console, server) -> dict:
    from driftloop import prefect_server  # noqa: F401  (environment already set by the CLI)

    tl = Timeline(console)
    console.rule("[bold]driftloop demo[/bold] — intent router on " + settings.data.name)
    reset_state(settings)
    tl.step(
        f"state dir [cyan]{settings.state_dir}[/cyan] reset (Prefect run history kept); "
        f"Prefect UI [cyan]{server.ui_url}[/cyan]"
    )

    from driftloop.flows.monitoring import monitoring
    from driftloop.flows.training import training

    quiet_prefect_console()
    parts = wiring.build(settings)
    demo = settings.demo

    # The data first: a bad file or a data set too small for the scenario is said before anything runs.
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

    tl.step(f"[bold]1. version 1[/bold]: training without the {len(settings.data.new_labels)} new intents …")
    with (
        tl.timed("training flow (v1)"),
        console.status("training flow: validate → train → evaluate → register → promote"),
    ):
        v1 = training(reason="initial model (new intents not launched yet)", trigger="demo", config=config)
    tl.step(
        f"   {v1.candidate}: eval accuracy {v1.report.accuracy:.3f} (the eval set already holds the new "
        f"intents), macro-F1 {v1.report.macro_f1:.3f} → {'champion' if v1.decision.promote else 'rejected'}"
    )

    serving = ServingProcess(settings, config)
    try:
        with tl.timed("serving start"):
            serving.wait_ready()
        tl.step(f"   serving {serving.url} answers with v{serving.version()}")

        tl.step(f"[bold]2. quiet traffic[/bold]: {plan.quiet} requests of known intents …")
        quiet = simulator.mix(splits["live_known"], splits["live_new"], plan.quiet, 0.0, demo.seed)
        with tl.timed("quiet traffic"):
            answers = simulator.send(serving.url, quiet, demo.concurrency)
        failed = sum(a.status != 200 for a in answers)
        with tl.timed("monitoring flow (quiet)"), console.status("monitoring flow on the quiet window"):
            out = monitoring(config=config)
        tl.step(f"   monitor → [{'red' if out.decision.retrain else 'green'}]{out.decision.reason}[/]")

        tl.step(f"[bold]3. drift[/bold]: {plan.drift} requests, {demo.new_share:.0%} of them new intents …")
        # Drawn from the texts the phase after the retrain leaves alone (the plan keeps them apart).
        drifted = simulator.mix(splits["live_known"], splits["live_new"], plan.drift, demo.new_share, demo.seed + 1)
        with tl.timed("drift traffic"):
            drift_answers = simulator.send(serving.url, drifted, demo.concurrency)
        failed += sum(a.status != 200 for a in drift_answers)

        def annotators() -> None:
            time.sleep(demo.label_delay_s)
            posted = simulator.annotate(serving.url, drift_answers, demo.label_share, demo.seed, token=serving.token)
            tl.step(f"   [bold]4. labels arrive[/bold]: annotators posted {posted} labels to /feedback")

        labelling = threading.Thread(target=annotators, daemon=True)
        labelling.start()
        staged = settings.rollout.enabled
        # A rollout judges the challenger on live traffic: production flows while it runs. It
        # starts with the rollout, after the retrain built its training set and reference (this
        # traffic repeats the pools' texts, and labelled repeats would leave too few unseen texts
        # to refresh the monitoring reference).
        live = simulator.LiveTraffic(
            serving.url,
            splits["live_known"],
            splits["live_new"],
            demo.new_share,
            demo.label_share,
            demo.concurrency,
            demo.seed + 100,
            start_when=lambda: parts.registry.rollout_state().active,
            token=serving.token,
        )
        with (
            tl.timed("monitoring flow (drift) + retraining flow" + (" + rollout flow" if staged else "")),
            console.status(
                "monitoring flow on the drifted window (a retrain run starts if it fires"
                + (", then a rollout run)" if staged else ")")
            ),
            live if staged else contextlib.nullcontext(),
        ):
            out = monitoring(config=config)
        retrained_at = time.time()
        labelling.join()
        failed += live.failed
        if out.drift:
            for s in out.drift.signals:
                tl.step(
                    f"   {s.name:16s} {s.value:.4f} vs threshold {s.threshold:.4f} "
                    f"{'[red]drift[/red]' if s.drifted else 'ok'}"
                )
        tl.step(f"   monitor → [{'red' if out.decision.retrain else 'green'}]{out.decision.reason}[/]")
        if out.retrain is None:
            console.print("[red]the loop did not close: no retrain run completed[/red]")
            raise SystemExit(1)
        confirmed = parts.ledger.records()[-1].time.timestamp()
        v2 = out.retrain
        tl.step(
            f"   retrain run: {v2.candidate} accuracy {v2.report.accuracy:.3f} vs champion "
            f"{v2.champion_report.accuracy:.3f} → {v2.decision.reason}"
        )
        if staged and v2.rollout is not None:
            tl.step(
                f"   [bold]rollout[/bold] of {v2.candidate} on live traffic ({len(live.answers)} requests, "
                f"{live.labelled} labelled, {live.failed} failed):"
            )
            for entry in parts.history.entries():
                if entry.action.startswith("stage:") or (
                    entry.to_version == v2.candidate.version and entry.alias == "champion"
                ):
                    tl.step(f"     {entry.time[11:23]}  {entry.action:16s} {entry.reason[:90]}")
            tl.step(f"   rollout → [bold]{v2.rollout.result}[/bold] at {v2.rollout.stage}")
        if not v2.decision.promote or v2.champion != v2.candidate:
            console.print(f"[yellow]{v2.candidate} was not promoted; the champion keeps serving[/yellow]")
            raise SystemExit(1)

        switched = serving.wait_version(v2.candidate.version)
        if staged:
            # The rollout flow returns after its bake; v2 has answered everyone since the promotion.
            promoted = next(
                e
                for e in reversed(parts.history.entries())
                if e.alias == "champion" and e.to_version == v2.candidate.version
            )
            switched = min(switched, datetime.fromisoformat(promoted.time).timestamp())
        swap_s = switched - confirmed
        tl.stages["drift confirmed -> v2 serving"] = swap_s
        tl.step(
            f"[bold]5. rollout[/bold]: v{v2.candidate.version} answers all traffic "
            f"{swap_s:.1f}s after drift was confirmed (no restart"
            + (f"; replicas follow the promotion within {settings.serving.reload_interval_s:.0f}s)" if staged else ")")
        )
        # Fresh texts only (v2 trained on the labelled drifted ones), in the same mix as before.
        used = set(drifted[TEXT])
        after = simulator.mix(
            splits["live_known"][~splits["live_known"][TEXT].isin(used)],
            splits["live_new"][~splits["live_new"][TEXT].isin(used)],
            plan.after,
            demo.new_share,
            demo.seed + 2,
        )
        after_answers = simulator.send(serving.url, after, demo.concurrency)
        failed += sum(a.status != 200 for a in after_answers)
        simulator.annotate(serving.url, after_answers, demo.label_share, demo.seed + 3, token=serving.token)
        with (
            tl.timed("monitoring flow (steady state)"),
            console.status("monitoring flow on the new champion's traffic"),
        ):
            steady = monitoring(config=config)
        if steady.drift:
            tl.step("   " + ", ".join(f"{s.name} {s.value:.3f}/{s.threshold:.3f}" for s in steady.drift.signals))
        tl.step(
            f"[bold]6. steady state[/bold]: v{v2.candidate.version} is monitored against recent production "
            f"texts it never trained on → [{'red' if steady.decision.retrain else 'green'}]"
            f"{steady.decision.reason}[/]"
        )
    finally:
        serving.stop()

    acc = live_accuracy(parts.log_root)
    table = Table(title="accuracy on drifted traffic (from /feedback labels)")
    for col in ("model version", "labelled requests", "accuracy"):
        table.add_column(col)
    for row in acc.itertuples():
        table.add_row(str(row.model_version), str(row.labelled), f"{row.accuracy:.3f}")
    console.print(table)
    console.print(f"failed requests: {failed}")
    console.rule("where everything is")
    console.print(
        f"Prefect UI      {server.ui_url}   (after the demo: [bold]make ui-prefect[/bold])\n"
        f"MLflow UI       [bold]make ui-mlflow[/bold] → http://127.0.0.1:5000  ({settings.tracking_uri})\n"
        f"drift reports   {parts.reports_dir}/drift-*.html (also MLflow artifacts of the 'monitor' runs)\n"
        f"prediction log  {parts.log_root}/predictions/   feedback {parts.log_root}/feedback/\n"
        f"history         driftloop history   ({settings.history_path})\n"
        f"training sets   {parts.datasets.root} (DVC); driftloop data restore --version N"
    )
    tl.step("done")
    return {
        "v1": v1,
        "v2": v2,
        "accuracy": acc,
        "swap_s": swap_s,
        "failed": failed,
        "stages": tl.stages,
        "confirmed_at": confirmed,
        "retrained_at": retrained_at,
        "serving_at": switched,
        "steady": steady,
        "drift": out.drift,
    }
