"""Typed values passed between the loop's steps.

Every step of the loop hands the next one a frozen value from this module, never a dict or a
tuple, so a flow reads like a table of contents and a wrong field fails loudly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class ModelRef:
    """One registered model version (MLflow's name + version)."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


@dataclass(frozen=True)
class Prediction:
    """What the model answers for one text."""

    intent: str
    confidence: float


@dataclass(frozen=True)
class DataVersion:
    """A DVC-tracked data set: the md5 DVC computed and where the file was written."""

    md5: str
    path: str
    size: int
    rows: int


@dataclass(frozen=True)
class ValidationIssue:
    """One failed check: which check, a message, and the offending rows (0-based data rows)."""

    check: str
    message: str
    rows: tuple[int, ...] = ()


@dataclass(frozen=True)
class ValidationReport:
    source: str
    rows: int
    issues: tuple[ValidationIssue, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.issues

    def summary(self) -> str:
        if self.ok:
            return f"{self.source}: {self.rows} rows passed validation"
        lines = [f"{self.source}: {len(self.issues)} validation problem(s) in {self.rows} rows"]
        for issue in self.issues:
            shown = ", ".join(str(r) for r in issue.rows[:10])
            more = f" (+{len(issue.rows) - 10} more)" if len(issue.rows) > 10 else ""
            where = f" rows [{shown}{more}]" if issue.rows else ""
            lines.append(f"  - {issue.check}: {issue.message}{where}")
        return "\n".join(lines)


@dataclass(frozen=True)
class EvalReport:
    """Scores of one model on one evaluation set."""

    accuracy: float
    macro_f1: float
    n: int
    ece: float
    per_intent_f1: dict[str, float] = field(default_factory=dict)
    eval_md5: str = ""

    def metrics(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "ece": self.ece}


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


@dataclass(frozen=True)
class SignalResult:
    """One drift signal: its value, the threshold it was compared with, and the verdict."""

    name: str
    value: float
    threshold: float
    drifted: bool
    detail: str = ""


@dataclass(frozen=True)
class DriftResult:
    """Evidently's verdict on one window, already typed.

    ``window_id`` is a hash of the window's request ids: the same window always gets the same id,
    which is what deduplicates retrain triggers.
    """

    window_id: str
    window_start: datetime | None
    window_end: datetime | None
    n_reference: int
    n_current: int
    signals: tuple[SignalResult, ...]
    drift_detected: bool
    share_drifted: float
    report_path: str = ""
    accuracy: float | None = None
    n_labelled: int = 0

    def signal(self, name: str) -> SignalResult | None:
        return next((s for s in self.signals if s.name == name), None)

    def summary(self) -> str:
        fired = [s.name for s in self.signals if s.drifted]
        verdict = "DRIFT" if self.drift_detected else "no drift"
        return f"{verdict}: {len(fired)}/{len(self.signals)} signals fired ({', '.join(fired) or 'none'})"


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reason: str


@dataclass(frozen=True)
class HistoryEntry:
    """One alias move in the champion history (append-only)."""

    time: str
    model: str
    alias: str
    from_version: str | None
    to_version: str | None
    action: str
    reason: str
    actor: str
    report: str = ""


# Which part of a rollout answered a prediction (a column of the prediction log, a metric label).
SLOT_CHAMPION = "champion"
SLOT_CANARY = "canary"  # the challenger answering users: a canary stage or the B arm of an A/B test
SLOT_SHADOW = "shadow"  # the challenger answering a mirrored copy; never returned to the caller
SLOTS = (SLOT_CHAMPION, SLOT_CANARY, SLOT_SHADOW)

# Rollout modes of the desired routing state.
MODE_NONE = "none"  # champion only
MODE_SHADOW = "shadow"  # challenger mirrored
MODE_CANARY = "canary"  # `weight` of callers to the challenger
MODE_AB = "ab"  # a fixed split until a statistical decision
MODE_BLUEGREEN = "bluegreen"  # challenger loaded and warm, no traffic: the switch is one alias move
MODES = (MODE_NONE, MODE_SHADOW, MODE_CANARY, MODE_AB, MODE_BLUEGREEN)


@dataclass(frozen=True)
class RolloutState:
    """The traffic split every serving replica converges to, kept with the registry.

    ``weight`` is the share of callers the challenger answers (canary and A/B); a caller key
    hashed with ``rollout_id`` makes the choice sticky for the rollout's whole life.
    """

    rollout_id: str = ""
    mode: str = MODE_NONE
    challenger: str | None = None
    weight: float = 0.0
    stage: str = ""
    since: str = ""  # when this stage began (ISO 8601, UTC)
    actor: str = ""

    @property
    def fingerprint(self) -> str:
        """What serving shows of ``rollout_id`` (``/routing``, ``driftloop_rollout_info``): a hash
        that tells two replicas' states apart without giving the id away. The id salts the canary
        hash: a caller that knew it could compute its own arm and pick it."""
        if not self.rollout_id:
            return ""
        return hashlib.sha256(f"driftloop-rollout:{self.rollout_id}".encode()).hexdigest()[:12]

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"rollout mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"rollout weight {self.weight}: expected a share between 0 and 1")
        if self.mode != MODE_NONE and not self.challenger:
            raise ValueError(f"rollout mode {self.mode!r} needs a challenger version")

    @property
    def active(self) -> bool:
        return self.mode != MODE_NONE


@dataclass(frozen=True)
class MonitorStatus:
    """The monitoring flow's latest drift verdict, as replicas export it (``driftloop_drift_*``)."""

    model_version: str
    drift_detected: bool
    share_drifted: float
    checked_at: str  # ISO time


@dataclass(frozen=True)
class Routing:
    """What a replica should serve: the champion alias, and the rollout state beside it; with the
    monitoring flow's latest verdict, which travels in the same registry call (no shared file)."""

    champion: ModelRef | None
    state: RolloutState = RolloutState()
    monitor: MonitorStatus | None = None

    @property
    def challenger(self) -> ModelRef | None:
        if self.champion is None or not self.state.active or not self.state.challenger:
            return None
        return ModelRef(self.champion.name, self.state.challenger)
