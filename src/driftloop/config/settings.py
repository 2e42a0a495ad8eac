"""One typed settings object, loaded from ``configs/*.yaml`` and overridable from the environment.

Sources, strongest first: keyword arguments, environment variables
(``DRIFTLOOP__MONITOR__WINDOW_SIZE=300``), then the YAML files (``configs/base.yaml`` and any
overlays named in ``DRIFTLOOP_CONFIG`` or passed to :func:`load_settings`, later files win).
Every model is frozen and forbids unknown keys, so a typo fails at start with the key's name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from driftloop.config.transformer import TransformerParams

DEFAULT_CONFIG_DIR = Path("configs")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProjectSettings(_Section):
    name: str = "driftloop"
    # Everything the loop writes at run time lives here (MLflow db, logs, reports, data sets).
    state_dir: Path = Path(".driftloop")


class DataSettings(_Section):
    """The labelled text set the loop runs on; configs/base.yaml names the demo's, an overlay
    another (see configs/hwu64.yaml). Nothing in the code knows which one it is."""

    # A name for people: run titles, the prepared folder, the model version's `data.name` tag.
    name: str = Field("dataset", min_length=1)
    # The raw files (CSV, JSON or JSON Lines), immutable: prepared splits are keyed by their hashes.
    train_path: Path | None = None
    test_path: Path | None = None
    text_field: str = Field("text", min_length=1)
    label_field: str = Field("label", min_length=1)
    # Labels withheld from the first model: they appear later in production (the drift scenario).
    new_labels: tuple[str, ...] = ()
    # Share of the test split kept as the held-out evaluation set (stratified, never trained on).
    eval_fraction: float = Field(0.5, gt=0, lt=1)
    # Share of the rest of the test split used as the production-like monitoring reference.
    reference_fraction: float = Field(0.4, gt=0, lt=1)
    seed: int = 42


class ModelSettings(_Section):
    family: str = "tfidf"
    params: dict[str, Any] = Field(default_factory=dict)


_DASK_SCHEMES = ("tcp://", "tls://", "ucx://", "ws://", "wss://", "inproc://")


class DaskSettings(_Section):
    # null: a temporary LocalCluster on this machine for the run, listening on 127.0.0.1 only.
    # Set a running scheduler's address (tcp://host:8786) to score candidates on its workers,
    # which need driftloop installed.
    address: str | None = None
    n_workers: int = Field(2, ge=1)
    # One thread per worker process: fitting holds the GIL, so threads would not add speed.
    threads_per_worker: int = Field(1, ge=1)

    @field_validator("address")
    @classmethod
    def _scheduler_address(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(_DASK_SCHEMES):
            raise ValueError(
                f"selection.dask.address: expected a Dask scheduler address such as tcp://host:8786, got {value!r}"
            )
        return value


class SelectionSettings(_Section):
    """Model selection before training: every combination of `grid` is scored by k-fold
    cross-validation on the training set (never the shared evaluation set) and the best one is
    trained and registered. An empty grid trains `model` as configured, with no search.
    `folds: 1` scores each candidate once on a stratified holdout of `validation_fraction` of the
    training set instead: the sensible mode for families that take minutes to fit (transformer).
    With `folds: 1`, `refit: false` registers the chosen candidate as it was trained for the
    holdout (on the other rows) instead of fitting it again on the whole training set: one
    fine-tuning instead of two, for a model that saw `validation_fraction` fewer rows."""

    # Parameter name (a key of model.params, or `family`) -> the values to try.
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    metric: Literal["accuracy", "macro_f1"] = "accuracy"
    folds: int = Field(3, ge=1, le=20)
    validation_fraction: float = Field(0.2, gt=0, le=0.5)  # the holdout when folds is 1
    runner: Literal["sequential", "dask"] = "sequential"
    dask: DaskSettings = DaskSettings()
    refit: bool = True

    @model_validator(mode="after")
    def _refit(self) -> SelectionSettings:
        if not self.refit and self.folds != 1:
            raise ValueError(
                f"selection.refit: false needs folds: 1 (got folds: {self.folds}; "
                "k folds train k models, none of them on the whole split)"
            )
        return self

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"selection.grid.{key}: give at least one value")
            seen = [json.dumps(v, sort_keys=True, default=str) for v in values]
            if len(set(seen)) != len(seen):
                raise ValueError(f"selection.grid.{key}: values repeat, got {values}")
        return value


class RegistrySettings(_Section):
    # None means the embedded default: SQLite under the state dir.
    tracking_uri: str | None = None
    experiment: str = "driftloop"
    model_name: str = "intent-router"
    # Where users open the MLflow UI (`make ui-mlflow`); Prefect artifacts link runs there.
    ui_url: str = "http://127.0.0.1:5000"
    # Public Ed25519 keys (base64) whose signatures make a version loadable, besides
    # DRIFTLOOP_TRUSTED_KEYS and the key training signs with (docs/security.md). Public: fine in
    # a config file; the private key only ever comes from DRIFTLOOP_SIGNING_KEY or the state dir.
    trusted_keys: list[str] = []
    # The embedded default signs with <state_dir>/keys/model-signing.key, created on first use,
    # and trusts its public half. false (the k8s manifests): only DRIFTLOOP_SIGNING_KEY signs and
    # only the configured keys are trusted, so a pod's own fresh key cannot make a version loadable.
    local_signing_key: bool = True


class PromotionPolicy(_Section):
    metric: Literal["accuracy", "macro_f1"] = "accuracy"
    # A candidate below this never serves, even as the first model.
    min_score: float = Field(0.5, ge=0, le=1)
    # How much worse than the champion on the shared evaluation set a candidate may be.
    max_regression: float = Field(0.0, ge=0, le=1)
    # How much better it must be to replace a champion (0: no regression beyond the tolerance).
    min_improvement: float = Field(0.0, ge=0, le=1)


class MonitorSettings(_Section):
    # The newest N distinct predictions form the window.
    window_size: int = Field(400, gt=0)
    min_window: int = Field(150, gt=0)
    # Thresholds are calibrated from the reference's own variation (drift.calibrate): window-sized
    # samples of the reference are compared with it `calibration_rounds` times and the threshold
    # is the worst value seen plus `margin` (text AUC never below `text_auc_floor`).
    calibration_rounds: int = Field(20, gt=1)
    margin: float = Field(0.02, ge=0)
    text_auc_floor: float = Field(0.55, ge=0.5, le=1)
    # Drift when at least this many of the signals fire.
    min_signals: int = Field(2, ge=1)
    low_confidence: float = Field(0.5, gt=0, lt=1)
    seed: int = 7


class RetrainPolicy(_Section):
    cooldown_s: float = Field(600, ge=0)
    # Live quality: retrain when the accuracy on labelled window rows falls below this (null:
    # off), once at least `min_labelled` rows of the window carry a label.
    min_live_accuracy: float | None = Field(None, ge=0, le=1)
    min_labelled: int = Field(50, ge=1)
    min_new_labels: int = Field(100, ge=1)
    label_wait_timeout_s: float = Field(180, ge=0)
    label_poll_s: float = Field(1.0, gt=0)
    # After a drift-triggered retrain, monitor the new champion against recent production texts
    # it never trained on (unlabelled ones among the newest `reference_size` distinct texts the
    # old champion answered), when there are at least 2 x monitor.min_window of them (what
    # calibration needs); otherwise it inherits the previous reference.
    refresh_reference: bool = True
    reference_size: int = Field(800, gt=0)
    # How a monitoring run that decides to retrain starts the retrain. inline: it runs the
    # retraining flow itself, as a subflow (one process, no deployments needed). event: it emits
    # `driftloop.drift.detected` and returns; the deployment trigger in prefect.yaml starts the
    # retrain run on a worker, deduplicated by the window's hash.
    dispatch: Literal["inline", "event"] = "inline"
    # `driftloop retrain` creates a run of this deployment ("flow/deployment", e.g.
    # "retraining/retrain") on the Prefect server instead of running in process (null: in process).
    via_deployment: str | None = None


class LogSettings(_Section):
    """The prediction and feedback logs after they are written: compaction of closed JSON Lines
    parts to Parquet and retention (the `compaction/daily` deployment, docs/logs.md)."""

    # Rows older than this many days are deleted, except those a versioned training or
    # reference set (a model version's data.md5 / reference.md5 in DVC) holds.
    retention_days: int = Field(30, ge=1)
    # A part not written for this long is closed and may be compacted. Writers move to a new part
    # after 300 s without a line (predlog.IDLE_ROTATE_S), so this must stay well above that.
    closed_after_s: float = Field(900, ge=600)
    # A label is joined to its prediction when it arrives at most this many days after it; a
    # later one stays in the log but is not trained on. Bounds a retrain's search for the
    # predictions its labels name (an unknown request id costs this many days of reads).
    label_max_lag_days: float = Field(7, gt=0)
    # Where the logs live. local: <state_dir>/logs (the embedded default). s3: the bucket and
    # prefix of s3_url on the server storage.s3_endpoint_url, keys from AWS_ACCESS_KEY_ID and
    # AWS_SECRET_ACCESS_KEY; each writing process spools to <state_dir>/logs and ships its parts
    # every ship_every_s, readers mirror what they read into <state_dir>/log-cache (docs/logs.md).
    backend: Literal["local", "s3"] = "local"
    s3_url: str | None = None
    ship_every_s: float = Field(10, gt=0, le=300)

    @model_validator(mode="after")
    def _s3_needs_url(self) -> LogSettings:
        if self.backend == "s3":
            url = self.s3_url or ""
            bucket = url.removeprefix("s3://").split("/", 1)[0]
            if not url.startswith("s3://") or not bucket:
                raise ValueError(f"logs.s3_url: backend s3 needs s3://bucket/prefix, got {self.s3_url!r}")
        return self


_REDACTION_KINDS = ("card", "iban", "email", "phone")


class PrivacySettings(_Section):
    """User text: redacted before anything is written, kept no longer than the logs
    (docs/security.md, "User text")."""

    # Replace what the rules find in texts, labels and error messages before the prediction
    # and feedback logs are written (driftloop.core.redaction): [CARD], [IBAN], [EMAIL], ...
    redact: bool = True
    kinds: tuple[str, ...] = _REDACTION_KINDS
    # More rules: a name and a regular expression; a match becomes [NAME].
    patterns: dict[str, str] = Field(default_factory=dict)

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(_REDACTION_KINDS))
        if unknown:
            raise ValueError(f"privacy.kinds: unknown {unknown} (known: {', '.join(_REDACTION_KINDS)})")
        return value

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: dict[str, str]) -> dict[str, str]:
        for name, pattern in value.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise ValueError(f"privacy.patterns: name {name!r} must be a word (it becomes [{name.upper()}])")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"privacy.patterns.{name}: {exc}") from None
        return value


class StageSpec(_Section):
    """One step of a progressive rollout."""

    name: str
    # shadow: the challenger answers a mirrored copy of live traffic, users only see the champion;
    # canary: a sticky share `weight` of callers is answered by the challenger.
    kind: Literal["shadow", "canary"]
    weight: float = Field(0.0, ge=0, le=1)
    # Predictions per arm (champion, challenger) before the stage may decide.
    min_samples: int = Field(200, gt=0)
    # Without enough samples by then, the stage rolls the challenger back (a rollout never hangs).
    max_duration_s: float = Field(600, gt=0)

    @model_validator(mode="after")
    def _weight_fits_kind(self) -> StageSpec:
        if self.kind == "canary" and not 0 < self.weight < 1:
            raise ValueError(
                f"rollout stage {self.name!r}: a canary weight must be between 0 and 1 (exclusive), got {self.weight}"
            )
        if self.kind == "shadow" and self.weight != 0:
            raise ValueError(
                f"rollout stage {self.name!r}: a shadow stage sends no users to the challenger; leave weight at 0"
            )
        return self


class GuardSettings(_Section):
    """How much worse than the champion a challenger may look on live traffic before it is
    withdrawn. Each limit is tested statistically at level `alpha`: a challenger is rolled back
    only when the data show it is worse by more than the tolerance, not on one noisy number."""

    alpha: float = Field(0.05, gt=0, lt=0.5)
    max_error_rate_increase: float = Field(0.005, ge=0, le=1)
    # p95 latency: worse when challenger p95 > champion p95 * max_p95_ratio + latency_slack_ms
    # and a one-sided Mann-Whitney U test says its latencies are stochastically larger.
    max_p95_ratio: float = Field(1.5, ge=1)
    latency_slack_ms: float = Field(2.0, ge=0)
    max_low_confidence_increase: float = Field(0.05, ge=0, le=1)
    # Shadow stage: share of requests where the challenger gives the champion's answer.
    min_agreement: float = Field(0.5, ge=0, le=1)
    max_accuracy_drop: float = Field(0.02, ge=0, le=1)
    # Labelled feedback rows per arm before accuracy is tested at all.
    min_labelled: int = Field(30, gt=0)


class ABSettings(_Section):
    """A fixed split until a statistical decision on accuracy from feedback labels."""

    weight: float = Field(0.5, gt=0, lt=1)
    # Baseline accuracy for the sample size (null: the champion's evaluation accuracy).
    baseline_accuracy: float | None = Field(None, gt=0, lt=1)
    min_detectable_effect: float = Field(0.05, gt=0, lt=1)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    power: float = Field(0.8, gt=0.5, lt=1)
    max_duration_s: float = Field(3600, gt=0)
    # No significant difference at the planned sample size: promote (true) or keep the champion.
    promote_on_tie: bool = False


class BakeSettings(_Section):
    """After a promotion: the new champion is watched against the previous champion's baseline
    and rolled back to the last good version if it regresses."""

    min_samples: int = Field(200, gt=0)
    max_duration_s: float = Field(600, gt=0)
    # The previous champion's newest this-many answered predictions form the baseline.
    baseline_samples: int = Field(500, gt=0)
    # A regression also opens a retrain run with the evidence attached.
    retrain_on_regression: bool = True
    # Each monitoring run keeps checking a promoted champion against its predecessor's baseline
    # for this long after the promotion (however it was promoted: a rollout, a retrain without
    # a rollout policy, or by hand).
    watch_s: float = Field(86_400, ge=0)


class RolloutSettings(_Section):
    # false: a candidate that passes the offline gate is promoted at once (the embedded default);
    # true: it becomes the challenger and the rollout flow carries it through `strategy`.
    enabled: bool = False
    strategy: Literal["progressive", "bluegreen", "ab"] = "progressive"
    stages: tuple[StageSpec, ...] = (
        StageSpec(name="shadow", kind="shadow"),
        StageSpec(name="canary-10", kind="canary", weight=0.1),
        StageSpec(name="canary-50", kind="canary", weight=0.5),
    )
    guard: GuardSettings = GuardSettings()
    ab: ABSettings = ABSettings()
    bake: BakeSettings = BakeSettings()
    # How often the rollout flow re-reads the logs while a stage waits for samples.
    poll_s: float = Field(2.0, gt=0)

    @field_validator("stages")
    @classmethod
    def _stages(cls, value: tuple[StageSpec, ...]) -> tuple[StageSpec, ...]:
        if not value:
            raise ValueError("rollout.stages: at least one stage")
        names = [s.name for s in value]
        if len(set(names)) != len(names):
            raise ValueError(f"rollout.stages: stage names must be unique, got {names}")
        weights = [s.weight for s in value if s.kind == "canary"]
        if weights != sorted(weights):
            raise ValueError(f"rollout.stages: canary weights must not decrease, got {weights}")
        return value


class ServingSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    # Serving processes on host:port (`driftloop serve --workers N`): one per core the model may use.
    workers: int = Field(1, ge=1)
    reload_interval_s: float = Field(1.0, gt=0)
    max_text_chars: int = Field(2000, gt=0)
    max_batch: int = Field(256, gt=0)
    # Requests not answered inline (a transformer's, or many texts) that arrive while the model
    # is busy are predicted together, up to this many texts a forward pass (0: one call each).
    micro_batch_texts: int = Field(64, ge=0)
    # The prediction log is fsynced at least this often (bounds the loss on a machine crash;
    # a crash of the server process itself loses nothing, each line is written at once).
    fsync_interval_s: float = Field(1.0, gt=0)
    # Newest answers remembered by request id, to score feedback labels in /metrics.
    feedback_memory: int = Field(50_000, ge=0)
    # Mirrored requests waiting for the shadow model; beyond it they are not mirrored (counted).
    shadow_queue: int = Field(256, gt=0)
    # The shadow model yields to user requests, but answers at least this many mirrored requests
    # a second even under full load (so a shadow stage still gathers its samples).
    shadow_min_rate: float = Field(50.0, ge=0)
    # /feedback writes the labels retraining learns from, so it takes a bearer token, read from
    # the environment variable named here (a Secret in Kubernetes), never from a file in git.
    api_token_env: str = Field("DRIFTLOOP_API_TOKEN", min_length=1)
    # true: the app refuses to start while that variable is unset or empty (safe by default:
    # a forgotten Secret cannot silently open /feedback). false: /feedback is open when no token
    # is set (a trusted loopback only); a token that is set is always enforced.
    require_token: bool = True
    # Bounded under abuse (docs/security.md): past these limits /predict answers 503 or 429 with
    # Retry-After at once, and nothing waits without bound.
    # Texts being predicted or waiting for the model in one serving process; a request that
    # would pass it is refused (503). A request of any size is taken when nothing is in flight.
    max_in_flight: int = Field(512, gt=0)
    # Texts waiting for a busy model's micro-batcher (a transformer's); past it, 503.
    max_queued_texts: int = Field(256, gt=0)
    # The Retry-After (whole seconds) of a 503 for an overloaded server.
    retry_after_s: int = Field(1, ge=1)
    # A /predict body must have arrived within this many seconds of its headers (else 408): a
    # client dripping its body holds a connection no longer than this.
    body_timeout_s: float = Field(10.0, gt=0)
    # Per-caller rate limit in texts a second (a batch of n costs n); 0 turns it off. A caller is
    # the holder of the API token when it sends it, else the client address. rate_burst: the
    # texts a caller may send at once after a quiet spell (the bucket's size).
    rate_limit_per_s: float = Field(0.0, ge=0)
    rate_burst: int = Field(256, gt=0)

    @field_validator("host")
    @classmethod
    def _loopback_by_default(cls, value: str) -> str:
        # the check that refuses every-interface binds unless asked
        if value in {"0.0.0.0", "::"} and os.environ.get("DRIFTLOOP_ALLOW_PUBLIC_BIND") != "1":  # noqa: S104
            raise ValueError("serving.host: binding every interface needs DRIFTLOOP_ALLOW_PUBLIC_BIND=1")
        return value


class StorageSettings(_Section):
    """Where data versions go. Embedded: a local DVC remote beside the datasets. At scale: an
    S3-compatible store; credentials come from the environment (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY), never from configuration files."""

    dvc_remote: str | None = None  # None: <state_dir>/dvc-remote; or s3://bucket/prefix
    s3_endpoint_url: str | None = None  # an S3-compatible server (SeaweedFS, MinIO); None: AWS


class HistorySettings(_Section):
    """Where the champion history and the retrain-trigger ledger live. ``file``: JSON Lines under
    ``project.state_dir`` (the embedded default: one machine, or a volume every process mounts).
    ``postgres``: two tables in a PostgreSQL database that every serving replica, worker and
    flow-run Job reaches (configs/stack.yaml). The password never comes from a file in git: it is
    read from the variable ``password_env`` names (else libpq's own ``PGPASSWORD`` / ``~/.pgpass``)."""

    backend: Literal["file", "postgres"] = "file"
    # postgres: a libpq URL without a password, e.g. postgresql://driftloop@127.0.0.1:5433/driftloop
    dsn: str | None = None
    password_env: str = Field("DRIFTLOOP_PG_PASSWORD", min_length=1)
    # postgres: the schema that holds the two tables (created when missing), so that several
    # projects (or test runs) can share one database without sharing a history.
    db_schema: str = Field("driftloop", pattern=r"^[a-z_][a-z0-9_]{0,62}$")

    @field_validator("dsn")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("postgresql://", "postgres://")):
            # Never echoes the value: a mistyped URL may still hold a password.
            scheme = value.partition("://")[0] if "://" in value else "none"
            raise ValueError(f"history.dsn: expected a postgresql:// URL, got scheme {scheme[:20]!r}")
        # userinfo is everything between the scheme and the first '@' before the host.
        userinfo = value.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0]
        if ":" in userinfo or "password=" in value:
            raise ValueError(
                "history.dsn: holds a password; put it in the environment variable history.password_env "
                "names (DRIFTLOOP_PG_PASSWORD), never in a configuration file"
            )
        return value

    @model_validator(mode="after")
    def _postgres_needs_dsn(self) -> HistorySettings:
        if self.backend == "postgres" and not self.dsn:
            raise ValueError("history.dsn: required with history.backend: postgres")
        return self


class StackSettings(_Section):
    """The real stack started by `driftloop stack up`, every server on 127.0.0.1 (configs/stack.yaml
    points the loop at it). Every server asks who you are; the secrets (passwords, keys, the Prefect
    auth string) come from the environment, else are generated once into ``<dir>/secrets.env``
    (mode 600, outside git). docs/security.md says who holds which."""

    dir: Path = Path(".driftloop/stack")
    postgres_port: int = Field(5433, gt=0, lt=65536)
    # The login role of the `driftloop` database (the history's); `mlflow` and `prefect` have
    # roles of those names. The superuser logs in over the data folder's socket only (set-up).
    postgres_user: str = "driftloop"
    postgres_superuser: str = "postgres"
    s3_port: int = Field(8333, gt=0, lt=65536)
    bucket: str = "driftloop"
    mlflow_port: int = Field(5000, gt=0, lt=65536)
    prefect_port: int = Field(4300, gt=0, lt=65536)
    prometheus_port: int = Field(9090, gt=0, lt=65536)
    work_pool: str = "driftloop"
    # Which parts `stack up` starts; the serving app is started by `driftloop serve -c stack`.
    services: list[str] = ["postgres", "s3", "mlflow", "prefect", "worker", "prometheus"]
    # After the worker is up, `prefect deploy --all` (prefect.yaml): the schedules and the drift
    # trigger are live on the stack's server.
    deploy: bool = True
    start_timeout_s: float = Field(120.0, gt=0)

    @field_validator("services")
    @classmethod
    def _known_services(cls, value: list[str]) -> list[str]:
        known = ["postgres", "s3", "mlflow", "prefect", "worker", "prometheus"]
        unknown = [v for v in value if v not in known]
        if unknown:
            raise ValueError(f"stack.services: unknown {unknown}; known: {known}")
        return value


class TracingSettings(_Section):
    """OpenTelemetry traces of serving requests and flow runs, exported over OTLP (http/protobuf)."""

    # A collector's base URL (http://collector:4318; a URL ending in /v1/traces is used as it
    # is). null: the standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT
    # variables when set, else tracing is off (no provider, no cost). Collector credentials go in
    # OTEL_EXPORTER_OTLP_HEADERS, which the exporter reads itself, never in this file.
    otlp_endpoint: str | None = None
    service_name: str = Field("driftloop", min_length=1)

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(
                f"tracing.otlp_endpoint: expected an http(s) URL such as http://collector:4318, got {value!r}"
            )
        return value


class PrefectSettings(_Section):
    # None: start (or reuse) a local Prefect server on 127.0.0.1:port, with its data under the
    # state dir. Set a URL to use an existing server.
    api_url: str | None = None
    port: int = Field(4200, gt=0, lt=65536)


class DemoSettings(_Section):
    quiet_requests: int = Field(400, gt=0)
    drift_requests: int = Field(800, gt=0)
    after_requests: int = Field(400, gt=0)
    new_share: float = Field(0.35, ge=0, le=1)
    label_share: float = Field(0.5, ge=0, le=1)
    label_delay_s: float = Field(0.5, ge=0)
    concurrency: int = Field(8, gt=0)
    seed: int = 1


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], files: list[Path]):
        super().__init__(settings_cls)
        self.files = files

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        # Unused by __call__, which reads the files itself.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for path in self.files:
            try:
                loaded = yaml.safe_load(path.read_text()) or {}
            except FileNotFoundError:
                raise FileNotFoundError(f"config file not found: {path}") from None
            except yaml.YAMLError as exc:
                raise ValueError(f"{path}: not valid YAML: {exc}") from None
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: the top level must be a mapping of sections")
            merged = _deep_merge(merged, loaded)
        return merged


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="DRIFTLOOP__",
        env_nested_delimiter="__",
    )

    project: ProjectSettings = ProjectSettings()
    data: DataSettings = DataSettings()
    model: ModelSettings = ModelSettings()
    selection: SelectionSettings = SelectionSettings()
    registry: RegistrySettings = RegistrySettings()
    promotion: PromotionPolicy = PromotionPolicy()
    monitor: MonitorSettings = MonitorSettings()
    retrain: RetrainPolicy = RetrainPolicy()
    logs: LogSettings = LogSettings()
    privacy: PrivacySettings = PrivacySettings()
    rollout: RolloutSettings = RolloutSettings()
    serving: ServingSettings = ServingSettings()
    tracing: TracingSettings = TracingSettings()
    prefect: PrefectSettings = PrefectSettings()
    storage: StorageSettings = StorageSettings()
    history: HistorySettings = HistorySettings()
    stack: StackSettings = StackSettings()
    demo: DemoSettings = DemoSettings()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.monitor.min_window > self.monitor.window_size:
            raise ValueError("monitor.min_window must not exceed monitor.window_size")
        # A family ignores parameters it does not know, so a misspelt grid key would search
        # nothing; the grid may only vary parameters the base model names.
        for key in self.selection.grid:
            if key != "family" and key not in self.model.params:
                raise ValueError(
                    f"selection.grid.{key}: not a parameter in model.params "
                    f"(known: {', '.join(sorted(self.model.params)) or 'none'}, family)"
                )
        families = {self.model.family, *self.selection.grid.get("family", [])}
        if families & {"transformer", "ensemble"}:
            # A misspelt mode would otherwise surface only when training starts, minutes in.
            TransformerParams.from_params(self.model.params)
        return self

    # Derived locations: one place decides where each thing lives under the state dir.
    @property
    def state_dir(self) -> Path:
        return self.project.state_dir

    @property
    def tracking_uri(self) -> str:
        if self.registry.tracking_uri:
            return self.registry.tracking_uri
        return f"sqlite:///{(self.state_dir / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path | None:
        """Local artifacts for the embedded SQLite store; a tracking server decides its own."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return None
        return (self.state_dir / "mlartifacts").resolve()

    @property
    def log_dir(self) -> Path:
        """The logs (local backend), or each writing process's spool of them (s3)."""
        return self.state_dir / "logs"

    @property
    def key_dir(self) -> Path | None:
        """The embedded default's model-signing key folder (None: keys from the environment only)."""
        return self.state_dir / "keys" if self.registry.local_signing_key else None

    @property
    def log_cache_dir(self) -> Path:
        """The s3 backend's local copy of the partitions a reader touched."""
        return self.state_dir / "log-cache"

    @property
    def privacy_dir(self) -> Path:
        """The privacy ledger and its key (``driftloop privacy``)."""
        return self.state_dir / "privacy"

    @property
    def datasets_dir(self) -> Path:
        return self.state_dir / "datasets"

    @property
    def reports_dir(self) -> Path:
        return self.state_dir / "reports"

    @property
    def checkpoints_dir(self) -> Path:
        """Resumable training checkpoints, one folder per (training-set hash, settings hash)."""
        return self.state_dir / "checkpoints"

    @property
    def history_path(self) -> Path:
        """The champion history's file (``history.backend: file``)."""
        return self.state_dir / "champion_history.jsonl"

    @property
    def trigger_state_path(self) -> Path:
        """The retrain-trigger ledger's file (``history.backend: file``)."""
        return self.state_dir / "retrain_triggers.jsonl"

    def config_hash(self) -> str:
        """A stable hash of the effective configuration, recorded on every model version."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def config_files(overlays: list[str] | None = None, config_dir: Path = DEFAULT_CONFIG_DIR) -> list[Path]:
    """base.yaml, then each overlay (a name in ``configs/`` or a path), then ``DRIFTLOOP_CONFIG``."""
    names = list(overlays or [])
    env = os.environ.get("DRIFTLOOP_CONFIG", "")
    names += [n for n in env.split(",") if n.strip()]
    files = [config_dir / "base.yaml"] if (config_dir / "base.yaml").exists() else []
    for entry in names:
        name = entry.strip()
        path = Path(name)
        if not path.suffix:
            path = config_dir / f"{name}.yaml"
        files.append(path)
    return files


def load_settings(
    overlays: list[str] | None = None, config_dir: Path | str = DEFAULT_CONFIG_DIR, **overrides: Any
) -> Settings:
    """Build the settings once, at a flow's or command's entry."""
    files = config_files(overlays, Path(config_dir))

    class _FromFiles(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _YamlSource(settings_cls, files))

    return _FromFiles(**overrides)
