"""The ``driftloop`` command. Flows are imported lazily, after Prefect's environment is set."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import pydantic
import typer
from rich.console import Console
from rich.rule import Rule
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from driftloop.config.settings import Settings, config_files, load_settings
from driftloop.core import errors
from driftloop.core.errors import DriftloopError, InputError, RunFailed
from driftloop.core.overlays import overlay_names, split_for_flow

if TYPE_CHECKING:  # Prefect is imported inside the commands, after the environment is set
    from prefect.client.schemas.objects import FlowRun

    from driftloop.flows.compaction import CompactionOutcome
    from driftloop.ops.prefect_server import PrefectServer
    from driftloop.ops.stack import Stack

# The help's epilog: single newlines are kept (the exit statuses' table); the last paragraph is
# one line, wrapped to the terminal by the help formatter.
EPILOG = (
    "Exit status:\n"
    "  0  done\n"
    "  1  a run failed or was refused, or a bug (shown with its traceback)\n"
    "  2  bad usage, configuration or input: an option, a setting, a file, a row\n"
    "  3  a server did not answer: MLflow, Prefect or S3 (its URL is named)\n\n"
    "An error is reported in one or two lines: what is wrong, and the Prefect flow run it failed in, "
    "whose log (in the Prefect UI) keeps the traceback. --debug, or DRIFTLOOP_DEBUG=1, prints the full "
    "tracebacks here too."
)


class _LogConsole(Console):
    """The console when stdout is not a terminal (a CI log, ``| tee``, a file): plain text, and
    lines as long as their content: a wide page, so that tables keep their natural width and never
    fold an id, and no soft wrapping. Only rules, which fill the page, keep a terminal's width."""

    RULE_WIDTH = 100

    def __init__(self, **kwargs: Any):
        super().__init__(
            width=100_000,
            soft_wrap=True,
            color_system=None,
            force_terminal=False,
            force_interactive=False,
            highlight=False,
            **kwargs,
        )

    def rule(self, title: Any = "", *, characters: str = "─", style: Any = "rule.line", align: Any = "center") -> None:
        self.print(Rule(title=title, characters=characters, style=style, align=align), width=self.RULE_WIDTH)


def make_console(stderr: bool = False) -> Console:
    """A terminal's console, or, when the stream is not a terminal, one that never wraps or colours."""
    stream = sys.stderr if stderr else sys.stdout
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return Console(stderr=stderr)
    return _LogConsole(stderr=stderr)


class _CommandErrors(TyperGroup):
    """Every command's errors end here: a project error (``driftloop.core.errors``) is one or two lines
    and its category's exit status; anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: Any) -> Any:  # click's Context (typer's own copy of click types it)
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # click's own: --help, usage errors
            raise
        except Exception as exc:  # noqa: BLE001 - reported, then the exit status says which kind
            raise typer.Exit(_report(exc)) from None


app = typer.Typer(
    help="driftloop: the closed retraining loop (train → evaluate → register → deploy → monitor).",
    epilog=EPILOG,
    cls=_CommandErrors,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Data sets: prepare splits, restore a model's exact training set.", no_args_is_help=True)
ui_app = typer.Typer(help="Open the Prefect or MLflow UI on 127.0.0.1.", no_args_is_help=True)
app.add_typer(data_app, name="data")
pipeline_app = typer.Typer(
    help="The DVC pipeline's stages (plain library calls, no orchestration).", no_args_is_help=True
)
app.add_typer(ui_app, name="ui")
app.add_typer(pipeline_app, name="pipeline")
rollout_app = typer.Typer(help="Safe rollout of the challenger: start, status, promote, abort.", no_args_is_help=True)
app.add_typer(rollout_app, name="rollout")
stack_app = typer.Typer(
    help="The real stack on 127.0.0.1 without Docker: PostgreSQL, SeaweedFS (S3), MLflow "
    "server, Prefect server + worker, Prometheus.",
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")
console = make_console()


@dataclass
class _Session:
    """What the error report needs to know about this invocation."""

    debug: bool = False
    settings: Settings | None = None
    server: Any = None  # the PrefectServer flows run against, once _orchestrator chose it
    run_log: Any = None  # the _RunLogFilter on Prefect's console handler


_session = _Session()


@app.callback()
def _global(
    debug: bool = typer.Option(
        False, "--debug", envvar="DRIFTLOOP_DEBUG", help="Print full tracebacks (Prefect's run log and the error's)."
    ),
) -> None:
    global _session  # noqa: PLW0603  the one session of this invocation, set by the callback
    _session = _Session(debug=debug)  # a fresh one per invocation (tests invoke the app repeatedly)


ConfigOpt = typer.Option(None, "--config", "-c", help="Config overlay(s) from configs/ (name or path); repeatable.")


def _settings(config: list[str] | None, options: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """The settings of this command; a wrong key or value is an :class:`InputError` naming the key,
    its value and where it was set. ``overrides`` are command-line options (``serving={"port": 80}``),
    validated like any setting; ``options`` names the option that set a key (``{"serving.port": "--port"}``)."""
    try:
        settings = load_settings(config, **overrides)
    except pydantic.ValidationError as exc:
        raise InputError(_settings_problems(exc, config, options or {})) from exc
    except (OSError, ValueError) as exc:  # an overlay that does not exist, a file that is not YAML
        raise InputError(f"configuration: {exc}") from exc
    from driftloop.ops import stack

    stack.export_client_env(settings)  # the local stack's S3 keys, unless the environment has them
    _session.settings = settings
    return settings


# Settings whose wrong value may hold a secret (a URL with a password): named, never echoed.
_NOT_ECHOED = frozenset({"history.dsn"})


def _settings_problems(exc: pydantic.ValidationError, config: list[str] | None, options: dict[str, str]) -> str:
    """One line per wrong setting: ``monitor.window_size = 'abc' (in o.yaml): Input should be …``."""
    lines = []
    for problem in exc.errors(include_url=False):
        key = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ").removeprefix(f"{key}: ")
        if problem["type"] == "extra_forbidden":
            message = "unknown setting"
        origin = options.get(key) or _setting_origin(problem["loc"], config)
        value = problem.get("input")
        shown = f" = {value!r}" if value is not None and not isinstance(value, dict) else ""
        if key in _NOT_ECHOED:
            shown = ""
        where = f" ({origin})" if origin else ""
        lines.append(f"{key}{shown}{where}: {message}" if key else message)
    head = "configuration: " if len(lines) == 1 else "configuration:\n  "
    return head + "\n  ".join(lines)


def _setting_origin(loc: tuple, config: list[str] | None) -> str | None:
    """Where a setting came from: its environment variable, else the last YAML file that sets it."""
    env = "DRIFTLOOP__" + "__".join(str(part).upper() for part in loc)
    if any(name.upper() == env for name in os.environ):
        return f"from ${env}"
    import yaml

    for path in reversed(config_files(config)):
        try:
            node: Any = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        for part in loc:
            if not isinstance(node, dict):
                break  # a list or a value set in this file replaced everything below it
            node = node.get(part, _MISSING)
            if node is _MISSING:
                break
        if node is not _MISSING:
            return f"in {path}"
    return None


_MISSING = object()


def _orchestrator(settings: Settings) -> PrefectServer:
    """Point Prefect at the configured server, or start/reuse the embedded local one."""
    from driftloop.ops import prefect_server

    home = settings.state_dir / "prefect"
    if settings.prefect.api_url:
        server = prefect_server.PrefectServer(settings.prefect.api_url, None)
    elif os.environ.get("PREFECT_API_URL"):
        server = prefect_server.PrefectServer(os.environ["PREFECT_API_URL"], None)
    else:
        with console.status("starting the local Prefect server on 127.0.0.1 …"):
            server = prefect_server.ensure_server(home, settings.prefect.port)
    home.mkdir(parents=True, exist_ok=True)  # Prefect's home; a reused server did not make it
    prefect_server.use_server(server, home)
    _session.server = server
    _session.run_log = _RunLogFilter.install(debug=_session.debug)
    return server


def _flow_run_url(server: PrefectServer, flow_run_id: Any) -> str:
    return f"{server.ui_url}/runs/flow-run/{flow_run_id}"


class _RunLogFilter(logging.Filter):
    """On Prefect's console handler: remembers the flow run each exception failed, and keeps the
    terminal to one report per error. Only the console is filtered: the records themselves, and
    what the API handler sends to the server (the run's log in the UI), keep their tracebacks.

    Prefect logs a failing task and each flow around it at ERROR with the exception's traceback
    (``logger.exception`` in its flow and task engines), and the exception then leaves the flow
    call. Without --debug, the console drops those records when the exception is a project error
    (the CLI reports it once, with the run's URL) and shows any other one without its traceback
    (the CLI prints that once, at the end); the runs' "Finished in state Failed(...)" lines stay.
    """

    _RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")

    def __init__(self, debug: bool):
        super().__init__()
        self.debug = debug
        self._failed: list[tuple[BaseException, str]] = []  # (exception, the first flow run it failed)

    @classmethod
    def install(cls, debug: bool) -> _RunLogFilter:
        import prefect.main  # noqa: F401 - Prefect's entry module sets up its logging (the console handler)
        from prefect.logging.handlers import PrefectConsoleHandler

        run_log = cls(debug)
        for name in ("", "prefect", *cls._RUN_LOGGERS):
            for handler in logging.getLogger(name).handlers:
                if isinstance(handler, PrefectConsoleHandler):
                    # Installed once per handler: a process that runs several commands replaces it.
                    for old in [f for f in handler.filters if isinstance(f, cls)]:
                        handler.removeFilter(old)
                    handler.addFilter(run_log)
                    inner = handler.formatter
                    if isinstance(inner, _WithoutTraceback):
                        inner = inner.inner
                    handler.setFormatter(inner if debug else _WithoutTraceback(inner))
        return run_log

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not record.name.startswith(self._RUN_LOGGERS):
            return True
        flow_run_id = getattr(record, "flow_run_id", None)
        # The innermost run logs first: a subflow's failure names the subflow's run.
        if flow_run_id and not any(seen is exc for seen, _ in self._failed):
            self._failed.append((exc, str(flow_run_id)))
        # Reported by the CLI itself (once, with the run's URL): a project error, an unreachable server.
        reported = isinstance(exc, DriftloopError) or errors.as_unreachable(exc) is not None
        return self.debug or not reported

    def flow_run_of(self, exc: BaseException) -> str | None:
        return next((run for seen, run in self._failed if seen is exc), None)


class _WithoutTraceback(logging.Formatter):
    """Formats a copy of the record without its traceback; the record itself is left whole for
    the other handlers (the API handler sends the traceback to the server)."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            record = logging.makeLogRecord(record.__dict__)
            record.exc_info = record.exc_text = record.stack_info = None
        return self.inner.format(record)


def _known_servers() -> dict[str, str | None]:
    """The servers this command may talk to, by the setting that names them (for error messages)."""
    settings = _session.settings
    servers: dict[str, str | None] = {}
    if settings is not None:
        servers["the MLflow tracking server (registry.tracking_uri)"] = settings.tracking_uri
        servers["the S3 server (storage.s3_endpoint_url)"] = settings.storage.s3_endpoint_url
    if _session.server is not None:
        servers["the Prefect API (prefect.api_url / PREFECT_API_URL)"] = _session.server.api_url
    return servers


def _report(exc: Exception) -> int:
    """Tell the person what went wrong, on stderr; the exit status for ``exc``."""
    err = make_console(stderr=True)
    run_log = _session.run_log
    run = run_log.flow_run_of(exc) if run_log is not None else None
    where = f"flow run: {_flow_run_url(_session.server, run)}" if run and _session.server is not None else None
    known = errors.as_unreachable(exc, _known_servers()) if not isinstance(exc, DriftloopError) else exc
    if known is None:
        # A bug: its traceback is what a report of it needs (Python's, once, without locals).
        traceback.print_exception(exc, file=sys.stderr)
        err.print(
            Text.assemble(
                ("unexpected error", "bold red"),
                f" ({type(exc).__name__}: {exc}); this is a bug, please report it with the traceback above",
            )
        )
        if where:
            err.print(Text(where))
        return errors.EXIT_RUN_FAILED
    if _session.debug:
        traceback.print_exception(exc, file=sys.stderr)
    err.print(Text.assemble(("error: ", "bold red"), str(known)))
    if where:
        err.print(Text(where + " (its log has the traceback)"))
    return known.exit_code


@app.command()
def demo(
    config: list[str] | None = ConfigOpt,
    keep_servers: bool = typer.Option(False, help="Leave the Prefect server running afterwards."),
) -> None:
    """Run the whole loop once on the configured data set (data.*): v1, quiet traffic, drift, labels, v2,
    rollout."""
    from driftloop.entry.demo import run_demo

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
            from driftloop.ops import prefect_server

            prefect_server.stop_server(server)


@app.command()
def train(
    config: list[str] | None = ConfigOpt,
    training_set: Path | None = typer.Option(None, help="CSV/JSON with text,label (default: prepared v1 set)."),
    reason: str = typer.Option("manual training", help="Why; recorded on the model version and history."),
) -> None:
    """Run the training flow: validate → train → evaluate → register → promote."""
    settings = _settings(config)
    _orchestrator(settings)
    from driftloop.flows.training import training

    out = training(
        training_set=str(training_set) if training_set else None,
        reason=reason,
        trigger="cli",
        config=split_for_flow(config),
    )
    console.print(
        f"registered {out.candidate}: accuracy {out.report.accuracy:.4f}, "
        f"macro-F1 {out.report.macro_f1:.4f} → "
        f"{'[green]promoted[/green]' if out.decision.promote else '[yellow]not promoted[/yellow]'}"
        f" ({out.decision.reason})"
    )


@app.command()
def monitor(
    config: list[str] | None = ConfigOpt,
    no_trigger: bool = typer.Option(False, help="Report only; never start a retrain."),
) -> None:
    """Run the monitoring flow once on the newest window of the prediction log."""
    settings = _settings(config)
    _orchestrator(settings)
    from driftloop.flows.monitoring import monitoring

    out = monitoring(trigger_retrain=not no_trigger, config=split_for_flow(config))
    if out.drift:
        console.print(out.drift.summary())
        for s in out.drift.signals:
            console.print(f"  {s.name:16s} {s.value:.4f} (threshold {s.threshold:.4f}) {'DRIFT' if s.drifted else ''}")
    console.print(f"decision: {'retrain' if out.decision.retrain else 'no retrain'} — {out.decision.reason}")
    if out.retrain:
        console.print(
            f"retrained: {out.retrain.candidate} {'promoted' if out.retrain.decision.promote else 'not promoted'}"
        )


@app.command()
def retrain(
    reason: str = typer.Option(..., "--reason", help="Why you retrain; shown in the UI and history."),
    config: list[str] | None = ConfigOpt,
    min_new_labels: int = typer.Option(0, help="Wait for this many new labelled rows first."),
    who: str = typer.Option(os.environ.get("USER", "data-scientist"), help="Who asks (recorded)."),
    param: list[str] | None = typer.Option(
        None, "--param", "-p", help="A retraining flow parameter, key=value (JSON if it parses); repeatable."
    ),
    deployment: str | None = typer.Option(
        None,
        help="Run this deployment (e.g. retraining/retrain) on the Prefect server instead of in "
        "process (default: retrain.via_deployment).",
    ),
) -> None:
    """Start a retrain run by hand, at any time: in process, or as a run of the deployment."""
    settings = _settings(config)
    server = _orchestrator(settings)
    import inspect

    from prefect import tags as prefect_tags

    from driftloop.core.triggers import parse_params
    from driftloop.flows.retraining import retraining

    requested_by = f"manual:{who}"
    allowed = [n for n in inspect.signature(retraining.fn).parameters if n not in ("reason", "requested_by")]
    try:
        extra = parse_params(param or [], allowed)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    target = deployment or settings.retrain.via_deployment
    # A deployment's run takes overlay names only; a path stays in this process (DRIFTLOOP_CONFIG).
    flow_config = overlay_names(config) if target else split_for_flow(config)
    parameters = {
        "reason": reason,
        "requested_by": requested_by,
        "min_new_labels": min_new_labels,
        **({"config": flow_config} if flow_config else {}),
        **extra,
    }
    run_tags = [f"requested_by:{requested_by}", "trigger:manual"]
    if target:
        from prefect.deployments import run_deployment
        from prefect.exceptions import ObjectNotFound

        try:
            # Called from synchronous code, Prefect runs the coroutine and returns the flow run.
            run = cast(
                "FlowRun", run_deployment(target, parameters=parameters, tags=run_tags, timeout=0, as_subflow=False)
            )
        except ObjectNotFound:
            raise RunFailed(
                f"no deployment {target!r} on {server.api_url}: run `prefect deploy --all` "
                "in the project directory first"
            ) from None
        console.print(
            f"created flow run {run.name} of {target} (a worker of its pool runs it):\n{_flow_run_url(server, run.id)}"
        )
        return
    with prefect_tags(*run_tags):
        out = retraining(**parameters)
    console.print(
        f"{out.candidate}: accuracy {out.report.accuracy:.4f} → "
        f"{'promoted' if out.decision.promote else 'not promoted'} ({out.decision.reason})"
    )


@app.command()
def serve(
    config: list[str] | None = ConfigOpt,
    host: str | None = typer.Option(
        None, help="Bind this address (default: serving.host, 127.0.0.1; 0.0.0.0 needs DRIFTLOOP_ALLOW_PUBLIC_BIND=1)."
    ),
    port: int | None = typer.Option(None, help="Bind this port (default: serving.port)."),
    workers: int | None = typer.Option(
        None, help="Serving processes on the port (default: serving.workers, 1); up to one per core."
    ),
) -> None:
    """Serve the champion over HTTP (reloads when the alias moves)."""
    from driftloop.adapters import wiring
    from driftloop.serving import app as serving
    from driftloop.serving.auth import MissingApiToken

    # On the local stack, serving reads with serving's own credentials (read-only in MLflow, its
    # logs prefix in S3), not training's, unless the environment picks another identity.
    os.environ.setdefault("DRIFTLOOP_STACK_IDENTITY", "serving")
    # The options are settings like any other: validated (the loopback guard included) and named
    # in an error as the option that set them.
    chosen = {k: v for k, v in (("host", host), ("port", port), ("workers", workers)) if v is not None}
    settings = _settings(
        config, options={f"serving.{k}": f"from --{k}" for k in chosen}, **({"serving": chosen} if chosen else {})
    )
    cfg = settings.serving
    processes = f" ({cfg.workers} worker processes)" if cfg.workers > 1 else ""
    console.print(f"serving {settings.registry.model_name}@champion on http://{cfg.host}:{cfg.port}{processes}")
    try:
        # Only the model source: a tracking server is read over REST, so MLflow stays out of the
        # serving processes (wiring.serving_source); each worker builds its own.
        serving.run_server(
            cfg,
            lambda: wiring.serving_source(settings),
            wiring.log_root(settings),  # the local folder, or the bucket with this host's spool
            low_confidence=settings.monitor.low_confidence,
            trace_cfg=settings.tracing,
            redact=wiring.redactor(settings.privacy),  # before a log line is written (privacy.redact)
        )
    except MissingApiToken as exc:  # refuse to start, saying what to set
        raise InputError(f"not starting: {exc}") from exc


@app.command()
def status(config: list[str] | None = ConfigOpt) -> None:
    """Champion, challenger, every model version and the last runs."""
    from driftloop.adapters import wiring

    settings = _settings(config)
    parts = wiring.build(settings)
    versions = parts.registry.versions()
    table = Table(title=f"{settings.registry.model_name} ({settings.tracking_uri})")
    for col in ("version", "aliases", "accuracy", "macro-F1", "data set", "data md5", "trigger", "decision"):
        table.add_column(col, overflow="fold")
    for v in versions:
        tags = v["tags"]
        table.add_row(
            v["version"],
            ", ".join(v["aliases"]),
            _metric(tags.get("metric.accuracy")),
            _metric(tags.get("metric.macro_f1")),
            tags.get("data.name", ""),
            tags.get("data.md5", "")[:10],
            tags.get("trigger", ""),
            tags.get("decision", ""),
        )
    console.print(table if versions else "no model registered yet")
    runs = parts.registry.recent_runs()
    if runs:
        recent = Table(title="last runs (MLflow; the Prefect flow run id links them to the Prefect UI)")
        # An id is never folded, in a narrow terminal either: the other columns give way first.
        id_width = max(len(str(r["flow_run"])) for r in runs)
        for col in ("started", "run", "kind", "status", "prefect flow run"):
            recent.add_column(col, overflow="fold", min_width=id_width if col == "prefect flow run" else None)
        for r in runs:
            started = datetime.fromtimestamp(r["start"] / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
            recent.add_row(started, r["name"], r["kind"], r["status"], r["flow_run"])
        console.print(recent)
    triggers = parts.ledger.records()
    if triggers:
        console.print(f"last retrain trigger: window {triggers[-1].window_id[:12]} at {triggers[-1].time.isoformat()}")


def _metric(value: str | None) -> str:
    """A metric tag as the flows print it (rounded to 4 places, not cut)."""
    try:
        return f"{float(value):.4f}" if value else ""
    except ValueError:
        return value or ""


@app.command()
def history(
    config: list[str] | None = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """The champion history: every alias move, when, why, by whom."""
    from dataclasses import asdict

    from driftloop.adapters.wiring import history_stores

    settings = _settings(config)
    entries = history_stores(settings)[0].entries()
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


WhoOpt = typer.Option(
    "",
    "--by",
    help="A note: on whose behalf you act (recorded next to the actor). The actor itself is the "
    "identity MLflow authenticates (MLFLOW_TRACKING_USERNAME), or local:<OS user>, unauthenticated, "
    "on a local store.",
)


def _manual_actor(registry: Any, note: str, action: str) -> Any:
    """The actor of a manual alias move: the authenticated MLflow identity (or ``local:<OS user>``,
    marked unauthenticated), recorded on the registered model first. An identity without EDIT on
    the model is refused there (MoveRefused), before anything moves."""
    from driftloop.adapters.history import now_iso
    from driftloop.core.actors import resolve_actor

    actor = resolve_actor(registry.acting_user(), note)
    registry.claim_manual_move(
        {
            "actor": actor.name,
            "authenticated": actor.authenticated,
            "on_behalf_of": actor.on_behalf_of,
            "action": action,
            "time": now_iso(),
        }
    )
    return actor


@rollout_app.command("start")
def rollout_start(
    config: list[str] | None = ConfigOpt,
    version: str | None = typer.Option(None, help="Version to roll out (default: the challenger alias)."),
    strategy: str | None = typer.Option(None, help="progressive, bluegreen or ab (default: rollout.strategy)."),
    reason: str = typer.Option("", help="Why; recorded in the history."),
    who: str = WhoOpt,
) -> None:
    """Run the rollout flow: the challenger through the strategy's stages on live traffic, then
    promote or roll back, then watch the new champion (needs the serving app and traffic)."""
    settings = _settings(config)
    if strategy is not None and strategy not in ("progressive", "bluegreen", "ab"):
        raise InputError(f"--strategy {strategy!r}: expected progressive, bluegreen or ab")
    _orchestrator(settings)
    from driftloop.adapters import wiring
    from driftloop.flows.retraining import retrain_after_regression
    from driftloop.flows.rollout import rollout

    actor = _manual_actor(wiring.build(settings).registry, who, "rollout start")
    out = rollout(
        challenger=version,
        strategy=strategy,
        requested_by=actor.recorded(),
        reason=reason,
        config=split_for_flow(config),
        on_regression=retrain_after_regression,
    )
    console.print(
        f"rollout {out.rollout_id} of {out.challenger}: [bold]{out.result}[/bold] at {out.stage} — "
        f"{out.reason}\nchampion now: {out.champion}"
    )


@rollout_app.command("status")
def rollout_status(config: list[str] | None = ConfigOpt) -> None:
    """The desired traffic split, and the live numbers of the current stage so far."""
    from driftloop.adapters import wiring
    from driftloop.core import analysis
    from driftloop.rollout import stages as rollout

    settings = _settings(config)
    parts = wiring.build(settings)
    routing = parts.registry.routing()
    state = routing.state
    console.print(f"champion: {routing.champion or '-'}   challenger alias: {parts.registry.challenger() or '-'}")
    if not state.active:
        console.print("no rollout in progress: the champion answers 100% of traffic")
        return
    console.print(
        f"rollout {state.rollout_id}: stage [bold]{state.stage}[/bold] ({state.mode}, "
        f"{state.weight:.0%} of callers to v{state.challenger}) since {state.since}, by {state.actor}"
    )
    step = rollout.step_of(settings.rollout, state)
    if step is None or routing.champion is None or state.challenger is None or step.kind == rollout.KIND_STANDBY:
        return
    since = rollout.parse_since(state)
    champ, chal = rollout.arms(
        rollout.live_frame(parts.log_root, since),
        routing.champion.version,
        state.challenger,
        step,
        settings.monitor.low_confidence,
        since,
    )
    table = Table(title="live numbers of this stage")
    for col in ("slot", "version", "n", "errors", "p95 ms", "low-conf", "labelled", "accuracy", "agreement"):
        table.add_column(col)

    def fmt(v: object) -> str:
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    for row in rollout.status_rows(champ, chal):
        table.add_row(*(fmt(v) for v in row.values()))
    console.print(table)
    elapsed = (datetime.now(UTC) - since).total_seconds()
    if step.kind == rollout.KIND_AB:
        preview = analysis.decide_ab(
            champ,
            chal,
            settings.rollout.ab,
            rollout.ab_baseline(settings.rollout, parts.registry.version_tags(routing.champion)),
            elapsed,
            settings.rollout.guard,
        )
    else:
        plan = rollout.plan(settings.rollout)
        preview = analysis.decide_stage(
            champ, chal, rollout.stage_spec(step), settings.rollout.guard, elapsed, step == plan[-1]
        )
    console.print(f"analysis now: [bold]{preview.action}[/bold] — {preview.reason}")


@rollout_app.command("promote")
def rollout_promote(
    reason: str = typer.Option(..., "--reason", help="Why; recorded in the history."),
    config: list[str] | None = ConfigOpt,
    who: str = WhoOpt,
) -> None:
    """Promote the challenger to 100% now, skipping the remaining stages."""
    from driftloop.adapters import wiring
    from driftloop.rollout import stages as rollout

    parts = wiring.build(_settings(config))
    target = parts.registry.challenger()
    if target is None:
        raise RunFailed("no challenger to promote (the challenger alias is not set)")
    actor = _manual_actor(parts.registry, who, "promote")
    rollout.promote(parts.registry, parts.history, target, reason=reason, actor=actor.recorded())
    console.print(f"{target} is the champion (by {actor.described()}: {reason})")


@rollout_app.command("abort")
def rollout_abort(
    reason: str = typer.Option(..., "--reason", help="Why; recorded in the history."),
    config: list[str] | None = ConfigOpt,
    who: str = WhoOpt,
) -> None:
    """Withdraw the challenger: the champion answers 100% again at once."""
    from driftloop.adapters import wiring
    from driftloop.rollout import stages as rollout

    parts = wiring.build(_settings(config))
    actor = _manual_actor(parts.registry, who, "abort")
    entry = rollout.withdraw(parts.registry, parts.history, reason=reason, actor=actor.recorded(), action="abort")
    by = f"by {actor.described()}: {reason}"
    console.print(f"withdrew v{entry.from_version} ({by})" if entry else "no rollout to abort")


@app.command()
def rollback(
    reason: str = typer.Option(..., "--reason", help="Why; recorded in the history."),
    config: list[str] | None = ConfigOpt,
    who: str = WhoOpt,
) -> None:
    """Return the champion to the last good version in the history (any rollout is withdrawn)."""
    from driftloop.adapters import wiring
    from driftloop.rollout import stages as rollout

    parts = wiring.build(_settings(config))
    actor = _manual_actor(parts.registry, who, "rollback")
    entry = rollout.rollback_champion(parts.registry, parts.history, reason=reason, actor=actor.recorded())
    if entry is None:
        raise RunFailed("the history names no earlier good champion to return to")
    console.print(f"champion: v{entry.from_version} → v{entry.to_version} (by {actor.described()}: {reason})")


@data_app.command("prepare")
def data_prepare(
    config: list[str] | None = ConfigOpt,
    out: Path = typer.Option(Path("data/prepared"), help="Where to write the splits."),
) -> None:
    """Write the configured data set's splits (train, eval, reference, traffic pools) into --out."""
    from driftloop.entry import pipeline

    prepared = pipeline.prepare(_settings(config), out)
    console.print(f"data set {prepared.name}, key {prepared.key}")
    for name, path in prepared.items():
        console.print(f"{name:12s} {path}")


@data_app.command("restore")
def data_restore(
    version: str = typer.Option(..., help="Model version whose training set to restore."),
    out: Path | None = typer.Option(None, help="Destination file."),
    config: list[str] | None = ConfigOpt,
) -> None:
    """Restore the exact training set of a registered model version (via its DVC hash)."""
    from driftloop.adapters import wiring
    from driftloop.core.types import ModelRef

    settings = _settings(config)
    parts = wiring.build(settings)
    md5 = parts.registry.version_tags(ModelRef(settings.registry.model_name, version)).get("data.md5")
    if not md5:
        raise RunFailed(f"version {version} of {settings.registry.model_name} has no data.md5 tag")
    dest = out or Path(f"restored-v{version}-{md5[:8]}.csv")
    parts.datasets.restore(md5, dest)
    console.print(f"restored the training set of v{version} (md5 {md5}) to {dest}")


@pipeline_app.command("train")
def pipeline_train(
    train_set: Path = typer.Option(Path("data/prepared/train.csv")),
    out: Path = typer.Option(Path("models/model")),
    config: list[str] | None = ConfigOpt,
) -> None:
    """DVC stage: validate and train on a prepared training set, save the model."""
    from driftloop.entry import pipeline

    console.print(f"saved {pipeline.train(_settings(config), train_set, out, progress=console.print)}")


@pipeline_app.command("evaluate")
def pipeline_evaluate(
    model_path: Path = typer.Option(Path("models/model"), "--model"),
    eval_set: Path = typer.Option(Path("data/prepared/eval.csv"), "--eval"),
    out: Path = typer.Option(Path("metrics")),
) -> None:
    """DVC stage: score the model on the held-out set; metrics for ``dvc metrics show``."""
    from driftloop.entry import pipeline

    report = pipeline.evaluate(model_path, eval_set, out)
    console.print(f"accuracy {report.accuracy:.4f}  macro-F1 {report.macro_f1:.4f}  ECE {report.ece:.4f}")


@app.command("stop-server")
def stop_server(config: list[str] | None = ConfigOpt) -> None:
    """Stop the local Prefect server that train/monitor/retrain started (it keeps running for the UI)."""
    from driftloop.ops import prefect_server

    settings = _settings(config)
    stopped = prefect_server.stop_recorded(settings.state_dir / "prefect")
    console.print("stopped the local Prefect server" if stopped else "no local Prefect server was running")


@ui_app.command("prefect")
def ui_prefect(config: list[str] | None = ConfigOpt) -> None:
    """Start the Prefect server and UI on 127.0.0.1 with this project's run history (Ctrl-C stops)."""
    from driftloop.ops import prefect_server

    settings = _settings(config)
    home = settings.state_dir / "prefect"
    env = os.environ | prefect_server.prefect_env(home)
    env.pop("PREFECT_API_URL", None)
    console.print(f"Prefect UI: http://127.0.0.1:{settings.prefect.port}")
    os.execvpe(
        str(Path(sys.executable).parent / "prefect"),
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(settings.prefect.port)],
        env,
    )


@ui_app.command("mlflow")
def ui_mlflow(config: list[str] | None = ConfigOpt, port: int = typer.Option(5000)) -> None:
    """Start the MLflow UI on 127.0.0.1 over this project's tracking store (Ctrl-C stops)."""
    settings = _settings(config)
    if settings.artifact_root is None:  # a tracking server is configured: its own UI is the one to open
        raise InputError(f"registry.tracking_uri is {settings.tracking_uri}: open that server's UI instead")
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    console.print(f"MLflow UI: http://127.0.0.1:{port}")
    os.execvpe(
        str(Path(sys.executable).parent / "mlflow"),
        [
            "mlflow",
            "server",
            "--backend-store-uri",
            settings.tracking_uri,
            "--default-artifact-root",
            settings.artifact_root.as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env,
    )


def _stack(config: list[str] | None) -> tuple[ModuleType, Stack]:
    from driftloop.ops import stack as stack_mod

    # configs/stack.yaml describes the stack; further overlays (-c) may move its ports or folder.
    return stack_mod, stack_mod.from_settings(_settings(["stack", *(config or [])]))


@stack_app.command("up")
def stack_up(
    config: list[str] | None = ConfigOpt,
    service: list[str] | None = typer.Option(None, "--service", "-s", help="Only these services (repeatable)."),
) -> None:
    """Start the stack (what is already healthy is left alone); print the URLs."""
    mod, stack = _stack(config)
    t0 = datetime.now(UTC)
    try:
        out = mod.up(stack, service or None, progress=lambda m: console.print(f"  {m}"))
    except mod.StackError as exc:
        raise RunFailed(f"stack up failed: {exc}") from exc
    took = (datetime.now(UTC) - t0).total_seconds()
    table = Table("service", "url", "state")
    for s in out:
        table.add_row(s.name, s.url, "started" if s.started_s is not None else "already running")
    console.print(table)
    console.print(
        f"stack ready in {took:.1f} s (data under {stack.root}). Use it with "
        f"[bold]-c stack[/bold] (or DRIFTLOOP_CONFIG=stack); stop it with `driftloop stack down`."
    )


@stack_app.command("down")
def stack_down(config: list[str] | None = ConfigOpt) -> None:
    """Stop every server of the stack (data is kept)."""
    mod, stack = _stack(config)
    stopped = mod.down(stack, progress=lambda m: console.print(f"  {m}"))
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@stack_app.command("status")
def stack_status(config: list[str] | None = ConfigOpt) -> None:
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
def stack_env(config: list[str] | None = ConfigOpt) -> None:
    """Print `export` lines for a shell that uses the stack: eval "$(driftloop stack env)"."""
    import shlex

    mod, stack = _stack(config)
    mod.load_secrets(stack, create=False)
    for key, value in (
        stack.client_env() | {"PREFECT_API_URL": stack.prefect_api_url, "DRIFTLOOP_CONFIG": "stack"}
    ).items():
        print(f"export {key}={shlex.quote(value)}")


# -- logs: compaction, retention, and what the logs hold on disk (docs/logs.md) ----------------------

logs_app = typer.Typer(
    help="The prediction and feedback logs: compact closed parts to Parquet, apply retention, "
    "show what each day holds.",
    no_args_is_help=True,
)
app.add_typer(logs_app, name="logs")

_LOGSTORE_LOGGER = "driftloop.adapters.logstore"


class _Collect(logging.Handler):
    """Keeps the messages of the records it sees (the log store's warnings during one run)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@logs_app.command("compact")
def logs_compact(
    config: list[str] | None = ConfigOpt,
    retention: bool = typer.Option(
        True,
        "--retention/--no-retention",
        help="After compacting, delete rows older than logs.retention_days, except those a registered "
        "model version's DVC sets hold (reads the registry and restores those sets through DVC).",
    ),
) -> None:
    """Run the compaction flow once (what compaction/daily runs): compaction, then retention.

    Closed JSON Lines parts become one Parquet file per day and log; then rows past
    logs.retention_days go. Prints what it compacted, skipped and deleted, and the flow run."""
    settings = _settings(config)
    server = _orchestrator(settings)
    from driftloop.flows.compaction import compaction

    # The log store warns when it leaves something for a later run (another run holds a log's lock,
    # a torn last line, a day past retention with parts not compacted yet): those are listed too.
    collect = _Collect()
    store_log = logging.getLogger(_LOGSTORE_LOGGER)
    store_log.addHandler(collect)
    try:
        state = compaction(retention=retention, config=split_for_flow(config), return_state=True)
        url = _flow_run_url(server, state.state_details.flow_run_id)
        outcome = state.result()
    finally:
        store_log.removeHandler(collect)
    _print_compaction(outcome, settings.logs.retention_days if retention else None, collect.messages)
    console.print(f"flow run: {url}")


def _print_compaction(outcome: CompactionOutcome, retention_days: int | None, warnings: list[str]) -> None:
    """The flow's :class:`~driftloop.flows.compaction.CompactionOutcome`, as tables and a line each."""
    compacted, retired = outcome.compacted, outcome.retired
    if compacted:
        table = Table(title="compacted")
        for col in ("log", "day", "parts", "rows now", "torn lines left out", "file"):
            table.add_column(col, overflow="fold")
        for r in compacted:
            table.add_row(r.kind, _day(r.partition), str(r.parts), str(r.rows), str(r.skipped), r.file or "-")
        console.print(table)
        parts, rows = sum(r.parts for r in compacted), sum(r.rows for r in compacted)
        console.print(f"compaction: {parts} JSON Lines parts into {len(compacted)} Parquet files ({rows} rows)")
    else:
        console.print("compaction: no closed JSON Lines part to compact")
    if retention_days is None:
        console.print("retention: not run (--no-retention)")
    elif retired:
        table = Table(title=f"retention ({retention_days} days)")
        for col in ("log", "day", "rows before", "kept", "deleted"):
            table.add_column(col)
        for t in retired:
            kept = str(t.rows_kept) if t.rows_kept else "0 (day removed)"
            table.add_row(t.kind, _day(t.partition), str(t.rows_before), kept, str(t.rows_before - t.rows_kept))
        console.print(table)
        deleted = sum(t.rows_before - t.rows_kept for t in retired)
        console.print(f"retention: {deleted} rows deleted from {len(retired)} days older than {retention_days} days")
    else:
        console.print(f"retention: no row older than {retention_days} days to delete")
    for message in warnings:
        console.print(Text(f"skipped: {message}"))


def _day(partition: str) -> str:
    return partition.removeprefix("date=")


@dataclass(frozen=True)
class _DayOnDisk:
    """One day of one log as its manifest and file sizes describe it (no row is read)."""

    log: str
    day: str
    jsonl_parts: int  # parts the manifest does not hold: fresh lines, read as JSON Lines
    jsonl_bytes: int
    parquet_rows: int
    parquet_bytes: int
    past_retention: bool
    jsonl_lines: int | None = None  # counted only with --lines (reads the parts)


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _days_on_disk(log_root: Path, retention_days: int, newest: int | None, lines: bool) -> list[_DayOnDisk]:
    """Each day of both logs, newest ``newest`` days of each (all when None), oldest first: the
    manifest, and one listing of the day's folder for the sizes. A day's Parquet rows are the
    manifest's count; its JSON Lines rows are counted only when ``lines`` asks (that reads them)."""
    from driftloop.adapters import logstore

    cutoff = datetime.now(UTC).date().toordinal() - retention_days
    out = []
    for kind in (logstore.PREDICTIONS, logstore.FEEDBACK):
        days = logstore.partitions(log_root / kind)
        for day, partition in days[-newest:] if newest else days:
            try:
                manifest = logstore.Manifest.read(partition)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise RunFailed(f"{partition / logstore.MANIFEST}: unreadable manifest ({exc})") from exc
            parts = []
            parquet_bytes = 0
            with os.scandir(partition) as entries:
                for entry in entries:
                    if entry.name == manifest.file:
                        parquet_bytes = entry.stat().st_size
                    elif (
                        entry.name.startswith("part-")
                        and entry.name.endswith(".jsonl")
                        and entry.name not in manifest.parts  # else compacted, about to be deleted
                    ):
                        parts.append((Path(entry.path), entry.stat().st_size))
            out.append(
                _DayOnDisk(
                    log=kind,
                    day=day.isoformat(),
                    jsonl_parts=len(parts),
                    jsonl_bytes=sum(size for _, size in parts),
                    parquet_rows=manifest.rows,
                    parquet_bytes=parquet_bytes,
                    past_retention=day.toordinal() < cutoff,
                    jsonl_lines=sum(_count_lines(p) for p, _ in parts) if lines else None,
                )
            )
    return out


def _size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@logs_app.command("status")
def logs_status(
    config: list[str] | None = ConfigOpt,
    days: int | None = typer.Option(None, "--days", min=1, help="Only the newest N days of each log."),
    lines: bool = typer.Option(
        False, "--lines", help="Also count the JSON Lines parts' lines (reads them; otherwise only sizes)."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per day and log."),
) -> None:
    """Per day and log: fresh JSON Lines parts and their size, compacted Parquet rows and size.

    Reads each day's manifest and lists its folder, never a row (unless --lines), so its cost
    follows the number of days, not their size."""
    from dataclasses import asdict

    settings = _settings(config)
    log_root = settings.log_dir
    rows = _days_on_disk(log_root, settings.logs.retention_days, days, lines)
    if as_json:
        for r in rows:
            typer.echo(json.dumps(asdict(r)))
        return
    if not rows:
        console.print(f"no prediction or feedback log under {log_root}")
        return
    table = Table(title=f"logs under {log_root}")
    columns = ["log", "day", "JSONL parts", "JSONL size", *(["JSONL lines"] if lines else [])]
    for col in (*columns, "Parquet rows", "Parquet size", "note"):
        table.add_column(col, justify="left" if col in ("log", "day", "note") else "right")
    for r in rows:
        note = f"past retention ({settings.logs.retention_days} d)" if r.past_retention else ""
        counted = [str(r.jsonl_lines)] if lines else []
        table.add_row(
            r.log,
            r.day,
            str(r.jsonl_parts),
            _size(r.jsonl_bytes),
            *counted,
            str(r.parquet_rows),
            _size(r.parquet_bytes),
            note,
        )
    console.print(table)
    jsonl, parquet = sum(r.jsonl_bytes for r in rows), sum(r.parquet_bytes for r in rows)
    days_shown = {r.day for r in rows}
    console.print(
        f"{len(days_shown)} day{'' if len(days_shown) == 1 else 's'}, {len(rows)} partitions: "
        f"{sum(r.jsonl_parts for r in rows)} JSON Lines parts ({_size(jsonl)}), "
        f"{sum(r.parquet_rows for r in rows)} Parquet rows ({_size(parquet)})"
    )


# -- keys: the Ed25519 key that signs model versions (docs/security.md) ---------------------------

keys_app = typer.Typer(help="The key that signs model versions: make one, show what is trusted.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("new")
def keys_new(
    private_out: Path = typer.Option(
        ..., "--private-out", help="Write the private key here (created with mode 600; must not exist)."
    ),
) -> None:
    """Make a signing key pair: the private key into a file for training's secret store, the
    public key printed (for registry.trusted_keys / DRIFTLOOP_TRUSTED_KEYS)."""
    from driftloop.core import signing

    pair = signing.generate()
    try:
        fd = os.open(private_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InputError(f"{private_out}: exists; not overwritten (a key is replaced on purpose only)") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(pair.private + "\n")
    console.print(f"private key: {private_out} (mode 600; give it to training as DRIFTLOOP_SIGNING_KEY)")
    console.print(f"public key:  {pair.public}")
    console.print(f"key id:      {pair.key_id}")


@keys_app.command("show")
def keys_show(config: list[str] | None = ConfigOpt) -> None:
    """The key this process would sign with (its id only) and the public keys it trusts."""
    from driftloop.adapters import wiring
    from driftloop.core import signing

    settings = _settings(config)
    trust = wiring.model_trust(settings)
    if trust.signing_key:
        console.print(
            f"signs with: key {signing.key_id(signing.public_of(trust.signing_key))} ($DRIFTLOOP_SIGNING_KEY)"
        )
    elif settings.key_dir is not None:
        console.print(f"signs with: {settings.key_dir}/model-signing.key (created on first registration)")
    else:
        console.print("signs with: nothing (registry.local_signing_key is false and $DRIFTLOOP_SIGNING_KEY unset)")
    trusted = trust.trusted_keys()
    if not trusted:
        console.print("trusts: nothing (no version will load)")
    for key in trusted:
        console.print(f"trusts: {signing.key_id(key)}  {key}")


from driftloop.entry import privacy_cli  # noqa: E402  (after _settings and console, which it is given)

app.add_typer(privacy_cli.build(_settings, console), name="privacy")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
