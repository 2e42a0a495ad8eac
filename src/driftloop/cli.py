"""The ``driftloop`` command. Flows are imported lazily, after Prefect's environment is set."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from driftloop.settings import Settings, load_settings

app = typer.Typer(help="driftloop: the closed retraining loop (train → evaluate → register → deploy → monitor).",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
data_app = typer.Typer(help="Data sets: prepare splits, restore a model's exact training set.", no_args_is_help=True)
ui_app = typer.Typer(help="Open the Prefect or MLflow UI on 127.0.0.1.", no_args_is_help=True)
app.add_typer(data_app, name="data")
pipeline_app = typer.Typer(help="The DVC pipeline's stages (plain library calls, no orchestration).",
                           no_args_is_help=True)
app.add_typer(ui_app, name="ui")
app.add_typer(pipeline_app, name="pipeline")
rollout_app = typer.Typer(help="Safe rollout of the challenger: start, status, promote, abort.", no_args_is_help=True)
app.add_typer(rollout_app, name="rollout")
stack_app = typer.Typer(help="The real stack on 127.0.0.1 without Docker: PostgreSQL, SeaweedFS (S3), MLflow "
                             "server, Prefect server + worker, Prometheus.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
console = Console()

ConfigOpt = typer.Option(None, "--config", "-c", help="Config overlay(s) from configs/ (name or path); repeatable.")


def _settings(config: Optional[list[str]]) -> Settings:
    try:
        settings = load_settings(config)
    except Exception as exc:  # a wrong key or value: say which, no traceback
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    from driftloop import stack

    stack.export_client_env(settings)  # the local stack's S3 keys, unless the environment has them
    return settings


def _orchestrator(settings: Settings):
    """Point Prefect at the configured server, or start/reuse the embedded local one."""
    from driftloop import prefect_server

    home = settings.state_dir / "prefect"
    if settings.prefect.api_url:
        server = prefect_server.PrefectServer(settings.prefect.api_url, None)
    elif os.environ.get("PREFECT_API_URL"):
        server = prefect_server.PrefectServer(os.environ["PREFECT_API_URL"], None)
    else:
        with console.status("starting the local Prefect server on 127.0.0.1 …"):
            server = prefect_server.ensure_server(home, settings.prefect.port)
    prefect_server.use_server(server, home)
    return server


@app.command()
def demo(config: Optional[list[str]] = ConfigOpt,
         keep_servers: bool = typer.Option(False, help="Leave the Prefect server running afterwards.")) -> None:
    """Run the whole loop once on BANKING77: v1, quiet traffic, drift, labels, v2, rollout."""
    from driftloop.demo import run_demo

    settings = _settings(config)
    if settings.retrain.dispatch != "inline":
        # The demo shows the loop's timeline in one process: its monitor retrains as a subflow
        # (the stack's scheduled monitor goes through the drift event and the worker instead).
        os.environ["DRIFTLOOP__RETRAIN__DISPATCH"] = "inline"
        settings = _settings(config)
    server = _orchestrator(settings)
    try:
        run_demo(settings, config or [], console, server)
    finally:
        if not keep_servers:
            from driftloop import prefect_server

            prefect_server.stop_server(server)


@app.command()
def train(config: Optional[list[str]] = ConfigOpt,
          training_set: Optional[Path] = typer.Option(None, help="CSV/JSON with text,label (default: prepared v1 set)."),
          reason: str = typer.Option("manual training", help="Why; recorded on the model version and history.")) -> None:
    """Run the training flow: validate → train → evaluate → register → promote."""
    settings = _settings(config)
    _orchestrator(settings)
    from flows.training import training

    out = training(training_set=str(training_set) if training_set else None, reason=reason,
                   trigger="cli", config=config)
    console.print(f"registered {out.candidate}: accuracy {out.report.accuracy:.4f}, "
                  f"macro-F1 {out.report.macro_f1:.4f} → "
                  f"{'[green]promoted[/green]' if out.decision.promote else '[yellow]not promoted[/yellow]'}"
                  f" ({out.decision.reason})")


@app.command()
def monitor(config: Optional[list[str]] = ConfigOpt,
            no_trigger: bool = typer.Option(False, help="Report only; never start a retrain.")) -> None:
    """Run the monitoring flow once on the newest window of the prediction log."""
    settings = _settings(config)
    _orchestrator(settings)
    from flows.monitoring import monitoring

    out = monitoring(trigger_retrain=not no_trigger, config=config)
    if out.drift:
        console.print(out.drift.summary())
        for s in out.drift.signals:
            console.print(f"  {s.name:16s} {s.value:.4f} (threshold {s.threshold:.4f}) {'DRIFT' if s.drifted else ''}")
    console.print(f"decision: {'retrain' if out.decision.retrain else 'no retrain'} — {out.decision.reason}")
    if out.retrain:
        console.print(f"retrained: {out.retrain.candidate} "
                      f"{'promoted' if out.retrain.decision.promote else 'not promoted'}")


@app.command()
def retrain(reason: str = typer.Option(..., "--reason", help="Why you retrain; shown in the UI and history."),
            config: Optional[list[str]] = ConfigOpt,
            min_new_labels: int = typer.Option(0, help="Wait for this many new labelled rows first."),
            who: str = typer.Option(os.environ.get("USER", "data-scientist"), help="Who asks (recorded)."),
            param: Optional[list[str]] = typer.Option(
                None, "--param", "-p", help="A retraining flow parameter, key=value (JSON if it parses); repeatable."),
            deployment: Optional[str] = typer.Option(
                None, help="Run this deployment (e.g. retraining/retrain) on the Prefect server instead of in "
                           "process (default: retrain.via_deployment).")) -> None:
    """Start a retrain run by hand, at any time: in process, or as a run of the deployment."""
    settings = _settings(config)
    server = _orchestrator(settings)
    import inspect

    from prefect import tags as prefect_tags

    from driftloop.triggers import parse_params
    from flows.retraining import retraining

    requested_by = f"manual:{who}"
    allowed = [n for n in inspect.signature(retraining.fn).parameters if n not in ("reason", "requested_by")]
    try:
        extra = parse_params(param or [], allowed)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    parameters = {"reason": reason, "requested_by": requested_by, "min_new_labels": min_new_labels,
                  **({"config": list(config)} if config else {}), **extra}
    run_tags = [f"requested_by:{requested_by}", "trigger:manual"]
    target = deployment or settings.retrain.via_deployment
    if target:
        from prefect.deployments import run_deployment
        from prefect.exceptions import ObjectNotFound

        try:
            run = run_deployment(target, parameters=parameters, tags=run_tags, timeout=0, as_subflow=False)
        except ObjectNotFound:
            console.print(f"[red]no deployment {target!r} on {server.api_url}[/red]: run `prefect deploy --all` "
                          "in the project directory first")
            raise typer.Exit(1) from None
        console.print(f"created flow run {run.name} of {target} (a worker of its pool runs it):\n"
                      f"{server.ui_url}/runs/flow-run/{run.id}")
        return
    with prefect_tags(*run_tags):
        out = retraining(**parameters)
    console.print(f"{out.candidate}: accuracy {out.report.accuracy:.4f} → "
                  f"{'promoted' if out.decision.promote else 'not promoted'} ({out.decision.reason})")


@app.command()
def serve(config: Optional[list[str]] = ConfigOpt) -> None:
    """Serve the champion over HTTP (reloads when the alias moves)."""
    from driftloop import serving, wiring

    settings = _settings(config)
    parts = wiring.build(settings)
    console.print(f"serving {settings.registry.model_name}@champion on http://{settings.serving.host}:{settings.serving.port}")
    try:
        serving.run_server(settings.serving, parts.registry, parts.log_root,
                           low_confidence=settings.monitor.low_confidence, monitor_status=settings.monitor_status_path,
                           trace_cfg=settings.tracing)
    except serving.MissingApiToken as exc:  # refuse to start, saying what to set; no traceback
        console.print(f"[red]not starting:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def status(config: Optional[list[str]] = ConfigOpt) -> None:
    """Champion, challenger, every model version and the last runs."""
    from driftloop import wiring

    settings = _settings(config)
    parts = wiring.build(settings)
    versions = parts.registry.versions()
    table = Table(title=f"{settings.registry.model_name} ({settings.tracking_uri})")
    for col in ("version", "aliases", "accuracy", "macro-F1", "data md5", "trigger", "decision"):
        table.add_column(col, overflow="fold")
    for v in versions:
        tags = v["tags"]
        table.add_row(v["version"], ", ".join(v["aliases"]), tags.get("metric.accuracy", "")[:6],
                      tags.get("metric.macro_f1", "")[:6], tags.get("data.md5", "")[:10],
                      tags.get("trigger", ""), tags.get("decision", ""))
    console.print(table if versions else "no model registered yet")
    runs = parts.registry.recent_runs()
    if runs:
        recent = Table(title="last runs (MLflow; the Prefect flow run id links them to the Prefect UI)")
        for col in ("started", "run", "kind", "status", "prefect flow run"):
            recent.add_column(col, overflow="fold")
        for r in runs:
            started = datetime.fromtimestamp(r["start"] / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            recent.add_row(started, r["name"], r["kind"], r["status"], r["flow_run"])
        console.print(recent)
    triggers = parts.ledger.records()
    if triggers:
        console.print(f"last retrain trigger: window {triggers[-1].window_id[:12]} at {triggers[-1].time.isoformat()}")


@app.command()
def history(config: Optional[list[str]] = ConfigOpt,
            as_json: bool = typer.Option(False, "--json", help="One JSON object per line.")) -> None:
    """The champion history: every alias move, when, why, by whom."""
    from dataclasses import asdict

    from driftloop.history import ChampionHistory

    settings = _settings(config)
    entries = ChampionHistory(settings.history_path).entries()
    if as_json:
        for e in entries:
            typer.echo(json.dumps(asdict(e)))
        return
    table = Table(title="champion history")
    for col in ("time", "alias", "from", "to", "action", "actor", "reason"):
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(e.time, e.alias, e.from_version or "-", e.to_version or "-", e.action, e.actor, e.reason)
    console.print(table if entries else "no alias has moved yet")


WhoOpt = typer.Option(os.environ.get("USER", "operator"), "--by", help="Who acts (recorded in the history).")


@rollout_app.command("start")
def rollout_start(config: Optional[list[str]] = ConfigOpt,
                  version: Optional[str] = typer.Option(None, help="Version to roll out (default: the challenger alias)."),
                  strategy: Optional[str] = typer.Option(None, help="progressive, bluegreen or ab (default: rollout.strategy)."),
                  reason: str = typer.Option("", help="Why; recorded in the history."),
                  who: str = WhoOpt) -> None:
    """Run the rollout flow: the challenger through the strategy's stages on live traffic, then
    promote or roll back, then watch the new champion (needs the serving app and traffic)."""
    settings = _settings(config)
    if strategy is not None and strategy not in ("progressive", "bluegreen", "ab"):
        console.print(f"[red]--strategy {strategy!r}:[/red] expected progressive, bluegreen or ab")
        raise typer.Exit(2)
    _orchestrator(settings)
    from flows.rollout import rollout

    out = rollout(challenger=version, strategy=strategy, requested_by=f"manual:{who}", reason=reason, config=config)
    console.print(f"rollout {out.rollout_id} of {out.challenger}: [bold]{out.result}[/bold] at {out.stage} — "
                  f"{out.reason}\nchampion now: {out.champion}")


@rollout_app.command("status")
def rollout_status(config: Optional[list[str]] = ConfigOpt) -> None:
    """The desired traffic split, and the live numbers of the current stage so far."""
    from driftloop import analysis, rollout, wiring

    settings = _settings(config)
    parts = wiring.build(settings)
    routing = parts.registry.routing()
    state = routing.state
    console.print(f"champion: {routing.champion or '-'}   challenger alias: {parts.registry.challenger() or '-'}")
    if not state.active:
        console.print("no rollout in progress: the champion answers 100% of traffic")
        return
    console.print(f"rollout {state.rollout_id}: stage [bold]{state.stage}[/bold] ({state.mode}, "
                  f"{state.weight:.0%} of callers to v{state.challenger}) since {state.since}, by {state.actor}")
    step = rollout.step_of(settings.rollout, state)
    if step is None or routing.champion is None or step.kind == rollout.KIND_STANDBY:
        return
    since = rollout.parse_since(state)
    champ, chal = rollout.arms(rollout.live_frame(parts.log_root, since), routing.champion.version,
                               state.challenger, step, settings.monitor.low_confidence, since)
    table = Table(title="live numbers of this stage")
    for col in ("slot", "version", "n", "errors", "p95 ms", "low-conf", "labelled", "accuracy", "agreement"):
        table.add_column(col)
    fmt = (lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
    for row in rollout.status_rows(champ, chal):
        table.add_row(*(fmt(v) for v in row.values()))
    console.print(table)
    elapsed = (datetime.now(timezone.utc) - since).total_seconds()
    if step.kind == rollout.KIND_AB:
        preview = analysis.decide_ab(champ, chal, settings.rollout.ab, settings.rollout.ab.baseline_accuracy or 0.8,
                                     elapsed, settings.rollout.guard)
    else:
        plan = rollout.plan(settings.rollout)
        preview = analysis.decide_stage(champ, chal, rollout.stage_spec(step), settings.rollout.guard, elapsed,
                                        step == plan[-1])
    console.print(f"analysis now: [bold]{preview.action}[/bold] — {preview.reason}")


@rollout_app.command("promote")
def rollout_promote(reason: str = typer.Option(..., "--reason", help="Why; recorded in the history."),
                    config: Optional[list[str]] = ConfigOpt, who: str = WhoOpt) -> None:
    """Promote the challenger to 100% now, skipping the remaining stages."""
    from driftloop import rollout, wiring

    parts = wiring.build(_settings(config))
    target = parts.registry.challenger()
    if target is None:
        console.print("[red]no challenger to promote[/red]")
        raise typer.Exit(1)
    rollout.promote(parts.registry, parts.history, target, reason=reason, actor=f"manual:{who}")
    console.print(f"{target} is the champion (by {who}: {reason})")


@rollout_app.command("abort")
def rollout_abort(reason: str = typer.Option(..., "--reason", help="Why; recorded in the history."),
                  config: Optional[list[str]] = ConfigOpt, who: str = WhoOpt) -> None:
    """Withdraw the challenger: the champion answers 100% again at once."""
    from driftloop import rollout, wiring

    parts = wiring.build(_settings(config))
    entry = rollout.withdraw(parts.registry, parts.history, reason=reason, actor=f"manual:{who}", action="abort")
    console.print(f"withdrew v{entry.from_version} (by {who}: {reason})" if entry else "no rollout to abort")


@app.command()
def rollback(reason: str = typer.Option(..., "--reason", help="Why; recorded in the history."),
             config: Optional[list[str]] = ConfigOpt, who: str = WhoOpt) -> None:
    """Return the champion to the last good version in the history (any rollout is withdrawn)."""
    from driftloop import rollout, wiring

    parts = wiring.build(_settings(config))
    entry = rollout.rollback_champion(parts.registry, parts.history, reason=reason, actor=f"manual:{who}")
    if entry is None:
        console.print("[red]the history names no earlier good champion to return to[/red]")
        raise typer.Exit(1)
    console.print(f"champion: v{entry.from_version} → v{entry.to_version} (by {who}: {reason})")


@data_app.command("prepare")
def data_prepare(config: Optional[list[str]] = ConfigOpt,
                 out: Path = typer.Option(Path("data/prepared"), help="Where to write the splits.")) -> None:
    """Write the scenario's splits (train, eval, reference, traffic pools)."""
    from driftloop import dataset

    settings = _settings(config)
    for name, path in dataset.prepare(settings.data, out).items():
        console.print(f"{name:12s} {path}")


@data_app.command("restore")
def data_restore(version: str = typer.Option(..., help="Model version whose training set to restore."),
                 out: Optional[Path] = typer.Option(None, help="Destination file."),
                 config: Optional[list[str]] = ConfigOpt) -> None:
    """Restore the exact training set of a registered model version (via its DVC hash)."""
    from driftloop import wiring
    from driftloop.types import ModelRef

    settings = _settings(config)
    parts = wiring.build(settings)
    md5 = parts.registry.version_tags(ModelRef(settings.registry.model_name, version)).get("data.md5")
    if not md5:
        console.print(f"[red]version {version} has no data.md5 tag[/red]")
        raise typer.Exit(1)
    dest = out or Path(f"restored-v{version}-{md5[:8]}.csv")
    parts.datasets.restore(md5, dest)
    console.print(f"restored the training set of v{version} (md5 {md5}) to {dest}")


@pipeline_app.command("train")
def pipeline_train(train_set: Path = typer.Option(Path("data/prepared/train.csv")),
                   out: Path = typer.Option(Path("models/model.joblib")),
                   config: Optional[list[str]] = ConfigOpt) -> None:
    """DVC stage: validate and train on a prepared training set, save the model."""
    import joblib

    from driftloop import dataset, modelling, validation

    settings = _settings(config)
    frame = dataset.read_labelled(train_set)
    validation.require_valid(validation.validate_training_set(frame, source=str(train_set)))
    # A crashed `dvc repro` of a long fine-tune resumes from its checkpoint on the next run.
    model = modelling.get_family(settings.model.family).fit(frame, dict(settings.model.params),
                                                             seed=settings.data.seed, progress=console.print,
                                                             checkpoint_root=settings.checkpoints_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out)
    console.print(f"saved {out}")


@pipeline_app.command("evaluate")
def pipeline_evaluate(model_path: Path = typer.Option(Path("models/model.joblib"), "--model"),
                      eval_set: Path = typer.Option(Path("data/prepared/eval.csv"), "--eval"),
                      out: Path = typer.Option(Path("metrics"))) -> None:
    """DVC stage: score the model on the held-out set; metrics for ``dvc metrics show``."""
    import joblib

    from driftloop import dataset, evaluation

    model = joblib.load(model_path)
    frame = dataset.read_labelled(eval_set)
    report, rows = evaluation.evaluate(model, frame)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(
        {"accuracy": round(report.accuracy, 4), "macro_f1": round(report.macro_f1, 4),
         "ece": round(report.ece, 4), "n": report.n}, indent=2))
    evaluation.write_eval_artifacts(report, rows, out / "plots")
    console.print(f"accuracy {report.accuracy:.4f}  macro-F1 {report.macro_f1:.4f}  ECE {report.ece:.4f}")


@app.command("stop-server")
def stop_server(config: Optional[list[str]] = ConfigOpt) -> None:
    """Stop the local Prefect server that train/monitor/retrain started (it keeps running for the UI)."""
    from driftloop import prefect_server

    settings = _settings(config)
    stopped = prefect_server.stop_recorded(settings.state_dir / "prefect")
    console.print("stopped the local Prefect server" if stopped else "no local Prefect server was running")


@ui_app.command("prefect")
def ui_prefect(config: Optional[list[str]] = ConfigOpt) -> None:
    """Start the Prefect server and UI on 127.0.0.1 with this project's run history (Ctrl-C stops)."""
    from driftloop import prefect_server

    settings = _settings(config)
    home = settings.state_dir / "prefect"
    env = os.environ | prefect_server.prefect_env(home)
    env.pop("PREFECT_API_URL", None)
    console.print(f"Prefect UI: http://127.0.0.1:{settings.prefect.port}")
    os.execvpe(str(Path(os.sys.executable).parent / "prefect"),
               ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(settings.prefect.port)], env)


@ui_app.command("mlflow")
def ui_mlflow(config: Optional[list[str]] = ConfigOpt, port: int = typer.Option(5000)) -> None:
    """Start the MLflow UI on 127.0.0.1 over this project's tracking store (Ctrl-C stops)."""
    settings = _settings(config)
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    console.print(f"MLflow UI: http://127.0.0.1:{port}")
    os.execvpe(str(Path(os.sys.executable).parent / "mlflow"),
               ["mlflow", "server", "--backend-store-uri", settings.tracking_uri,
                "--default-artifact-root", settings.artifact_root.as_uri(),
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], env)


def _stack(config: Optional[list[str]]):
    from driftloop import stack as stack_mod

    # configs/stack.yaml describes the stack; further overlays (-c) may move its ports or folder.
    return stack_mod, stack_mod.from_settings(_settings(["stack", *(config or [])]))


@stack_app.command("up")
def stack_up(config: Optional[list[str]] = ConfigOpt,
             service: Optional[list[str]] = typer.Option(None, "--service", "-s",
                                                         help="Only these services (repeatable).")) -> None:
    """Start the stack (what is already healthy is left alone); print the URLs."""
    mod, stack = _stack(config)
    t0 = datetime.now(timezone.utc)
    try:
        out = mod.up(stack, service or None, progress=lambda m: console.print(f"  {m}"))
    except mod.StackError as exc:
        console.print(f"[red]stack up failed:[/red] {exc}")
        raise typer.Exit(1) from None
    took = (datetime.now(timezone.utc) - t0).total_seconds()
    table = Table("service", "url", "state")
    for s in out:
        table.add_row(s.name, s.url, "started" if s.started_s is not None else "already running")
    console.print(table)
    console.print(f"stack ready in {took:.1f} s (data under {stack.root}). Use it with "
                  f"[bold]-c stack[/bold] (or DRIFTLOOP_CONFIG=stack); stop it with `driftloop stack down`.")


@stack_app.command("down")
def stack_down(config: Optional[list[str]] = ConfigOpt) -> None:
    """Stop every server of the stack (data is kept)."""
    mod, stack = _stack(config)
    stopped = mod.down(stack, progress=lambda m: console.print(f"  {m}"))
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@stack_app.command("status")
def stack_status(config: Optional[list[str]] = ConfigOpt) -> None:
    """Health of every server of the stack."""
    mod, stack = _stack(config)
    table = Table("service", "url", "healthy")
    rows = mod.status(stack)
    for s in rows:
        table.add_row(s.name, s.url, "[green]yes[/green]" if s.healthy else "[red]no[/red]")
    console.print(table)
    if not all(s.healthy for s in rows):
        raise typer.Exit(1)


@stack_app.command("env")
def stack_env(config: Optional[list[str]] = ConfigOpt) -> None:
    """Print `export` lines for a shell that uses the stack: eval "$(driftloop stack env)"."""
    import shlex

    mod, stack = _stack(config)
    mod.load_secrets(stack, create=False)
    for key, value in (stack.client_env() | {"PREFECT_API_URL": stack.prefect_api_url,
                                              "DRIFTLOOP_CONFIG": "stack"}).items():
        print(f"export {key}={shlex.quote(value)}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
