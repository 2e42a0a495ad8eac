"""The rollout flow end to end: a real serving app on loopback answering real HTTP traffic while
the flow moves a challenger through shadow and canary stages, promotes or rolls it back, and
undoes a promotion that regresses. Registry on SQLite, Prefect under the test harness."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from driftloop.adapters import predlog, wiring
from driftloop.config.settings import ServingSettings, load_settings
from driftloop.core.actors import os_user
from driftloop.flows.retraining import retrain_after_regression
from driftloop.flows.rollout import PROMOTED, REGRESSED, ROLLED_BACK, rollout
from driftloop.models.families import TfidfFamily
from driftloop.rollout import champion
from driftloop.serving.app import create_app
from tests.support import AUTH
from tests.support.rollout_models import DegradingClassifier, SlowClassifier
from tests.support.servers import serve_in_thread

PARAMS = {"char_min_df": 1}


@dataclass
class Traffic:
    """Steady traffic from one client thread: every response recorded, a share labelled."""

    url: str
    rows: pd.DataFrame
    label_share: float = 0.6
    callers: int = 300
    seed: int = 0
    responses: list[tuple[float, str, int, str]] = field(default_factory=list)  # (time, caller, status, version)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        rng = random.Random(self.seed)
        texts, labels = self.rows["text"].tolist(), self.rows["label"].tolist()
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                i = rng.randrange(len(texts))
                caller = f"c{rng.randrange(self.callers)}"
                try:
                    r = client.post("/predict", json={"text": texts[i]}, headers={"X-Caller-Id": caller})
                except httpx.HTTPError as exc:
                    self.responses.append((time.time(), caller, -1, type(exc).__name__))
                    continue
                version = r.json().get("model_version", "") if r.status_code == 200 else ""
                self.responses.append((time.time(), caller, r.status_code, version))
                if r.status_code == 200 and rng.random() < self.label_share:
                    rid = r.json()["predictions"][0]["request_id"]
                    client.post("/feedback", json={"request_id": rid, "label": labels[i]}, headers=AUTH)

    @property
    def failures(self) -> list[tuple[float, str, int, str]]:
        return [r for r in self.responses if r[2] != 200]


def overlay(tmp_path, **rollout) -> list[str]:
    """A config overlay: the rollout policy with test-sized stages. The bake holds a new champion
    to the old one's latency measured *earlier*, and a busy 2-core machine (the suite's server
    tests run beside these) has moved p95 from 3 ms to 28 ms between the two: 40 ms of slack, half
    the 80 ms the slow test models add."""
    body = {
        "rollout": {
            "enabled": True,
            "poll_s": 0.2,
            "bake": {"min_samples": 120, "max_duration_s": 60, "baseline_samples": 300},
            "guard": {"latency_slack_ms": 40.0},
            **rollout,
        }
    }
    path = tmp_path / "rollout-test.yaml"
    path.write_text(yaml.safe_dump(body))
    # A file outside configs/ is no flow parameter (driftloop.core.overlays): it reaches the flows
    # and the CLI of this process through DRIFTLOOP_CONFIG, as the CLI hands a path on.
    _env.setenv("DRIFTLOOP_CONFIG", str(path))
    return []


_env = pytest.MonkeyPatch()


@pytest.fixture(autouse=True)
def _undo_env():
    yield
    _env.undo()


@pytest.fixture
def loop(settings, banking_train):
    """Six intents: a mediocre champion (v1), and the data for challengers and traffic."""
    labels = sorted(banking_train["label"].unique())[:6]
    rows = banking_train[banking_train["label"].isin(labels)]
    parts = wiring.build(settings)
    small = rows.groupby("label").head(6)
    v1 = parts.registry.register_model(
        TfidfFamily().fit(small, PARAMS), run_name="v1", input_example=["where is my card"]
    )
    champion.move_alias(parts.registry, parts.history, "champion", v1, action="promote", reason="first", actor="test")
    return parts, v1, rows.groupby("label").head(60), rows.groupby("label").tail(40)


def register(parts, model):
    return parts.registry.register_model(model, run_name="challenger", input_example=["where is my card"])


def serve(parts):
    cfg = ServingSettings(reload_interval_s=0.2, fsync_interval_s=0.2)
    return serve_in_thread(create_app(cfg, parts.registry, parts.log_root, low_confidence=0.5))


def test_a_good_challenger_goes_through_shadow_and_canaries_and_is_promoted(loop, tmp_path):
    parts, _v1, big, traffic_rows = loop
    v2 = register(parts, TfidfFamily().fit(big, PARAMS))
    config = overlay(
        tmp_path,
        stages=[
            {"name": "shadow", "kind": "shadow", "min_samples": 100},
            {"name": "canary-10", "kind": "canary", "weight": 0.1, "min_samples": 60},
            {"name": "canary-50", "kind": "canary", "weight": 0.5, "min_samples": 100},
        ],
    )
    with serve(parts) as url, Traffic(url, traffic_rows) as traffic:
        out = rollout(challenger=v2.version, requested_by="test", config=config)
    assert out.result == PROMOTED, out.reason
    assert parts.registry.champion() == v2 and parts.registry.challenger() is None
    assert not parts.registry.rollout_state().active
    assert traffic.failures == [] and len(traffic.responses) > 300
    actions = [e.action for e in parts.history.entries()]
    assert actions[1:] == ["stage:shadow", "stage:canary-10", "stage:canary-50", "promote"]
    # Sticky routing: as the canary grows and v2 is promoted, a caller may move from v1 to v2,
    # never back.
    by_caller: dict[str, list[str]] = {}
    for _, caller, _, version in traffic.responses:
        by_caller.setdefault(caller, []).append(version)
    back = [c for c, seen in by_caller.items() if "2" in seen and "1" in seen[seen.index("2") :]]
    assert back == []
    logged = predlog.read_predictions(parts.log_root, include_shadow=True)
    slots = logged.groupby(["slot", "model_version"]).size().to_dict()
    assert slots[("shadow", "2")] >= 100 and slots[("canary", "2")] >= 60 and slots[("champion", "1")] > 0
    # shadow answers were never returned: every response during the shadow stage came from v1
    shadow_lines = logged[logged["slot"] == "shadow"]
    assert set(
        logged[logged["request_id"].isin(shadow_lines["request_id"]) & (logged["slot"] != "shadow")]["model_version"]
    ) == {"1"}
    reports = sorted((parts.reports_dir / "rollouts").glob(f"rollout-{out.rollout_id}-*.md"))
    assert reports and all(r.read_text() for r in reports)


def test_a_challenger_trained_on_shuffled_labels_is_rolled_back_in_shadow(loop, tmp_path):
    parts, v1, big, traffic_rows = loop
    shuffled = big.copy()
    shuffled["label"] = shuffled["label"].sample(frac=1.0, random_state=3).to_numpy()
    v2 = register(parts, TfidfFamily().fit(shuffled, PARAMS))
    config = overlay(
        tmp_path,
        stages=[
            {"name": "shadow", "kind": "shadow", "min_samples": 150},
            {"name": "canary-10", "kind": "canary", "weight": 0.1, "min_samples": 100},
        ],
    )
    with serve(parts) as url, Traffic(url, traffic_rows) as traffic:
        out = rollout(challenger=v2.version, config=config)
    assert out.result == ROLLED_BACK and out.stage == "shadow", out.reason
    assert "agreement" in out.reason or "accuracy" in out.reason
    assert parts.registry.champion() == v1 and parts.registry.challenger() is None
    assert not parts.registry.rollout_state().active
    last = parts.history.entries()[-1]
    assert (last.alias, last.action, last.from_version, last.to_version) == ("challenger", "rollback", "2", None)
    assert last.report.endswith("-shadow.md") and "agreement" in Path(last.report).read_text()
    # the registry shows how the version fared, and the rollout is an MLflow run with its analysis
    assert parts.registry.version_tags(v2)["rollout.result"].startswith("rolled back at shadow")
    [run] = [r for r in parts.registry.recent_runs(10) if r["kind"] == "rollout"]
    assert run["name"] == f"rollout-{out.rollout_id}" and run["status"] == "FINISHED"
    assert traffic.failures == []
    assert {r[3] for r in traffic.responses} == {"1"}, "no user ever got the shuffled model's answer"


def test_a_much_slower_challenger_is_rolled_back_at_the_first_canary(loop, tmp_path):
    parts, v1, big, traffic_rows = loop
    v2 = register(parts, SlowClassifier(TfidfFamily().fit(big, PARAMS), delay_s=0.08))
    config = overlay(
        tmp_path,
        stages=[
            {"name": "canary-10", "kind": "canary", "weight": 0.1, "min_samples": 200},
            {"name": "canary-50", "kind": "canary", "weight": 0.5, "min_samples": 200},
        ],
    )
    with serve(parts) as url, Traffic(url, traffic_rows) as traffic:
        out = rollout(challenger=v2.version, config=config)
    assert out.result == ROLLED_BACK and out.stage == "canary-10", out.reason
    assert "p95_latency_ms" in out.reason and "Mann-Whitney" in out.reason
    assert parts.registry.champion() == v1
    assert traffic.failures == []
    versions = [r[3] for r in traffic.responses]
    assert "2" in versions, "the canary did answer some callers before it was withdrawn"
    assert versions[-1] == "1"


def test_a_promotion_that_regresses_is_undone_and_a_retrain_opened(loop, tmp_path):
    parts, v1, big, traffic_rows = loop
    # Healthy through its canary, then 80 ms slower per call under full traffic.
    v2 = register(parts, DegradingClassifier(TfidfFamily().fit(big, PARAMS), healthy_calls=250, delay_s=0.08))
    config = overlay(
        tmp_path,
        stages=[{"name": "canary-50", "kind": "canary", "weight": 0.5, "min_samples": 30}],
        bake={"min_samples": 400, "max_duration_s": 90, "baseline_samples": 300},
    )
    with serve(parts) as url, Traffic(url, traffic_rows) as traffic:
        out = rollout(challenger=v2.version, config=config, on_regression=retrain_after_regression)
    assert out.result == REGRESSED, out.reason
    assert "p95_latency_ms" in out.reason
    assert parts.registry.champion() == v1, "rolled back to the last good version"
    entries = parts.history.entries()
    promote = next(e for e in entries if e.action == "promote" and e.to_version == "2")
    undo = entries[entries.index(promote) + 1]
    assert (undo.alias, undo.action, undo.from_version, undo.to_version) == ("champion", "rollback", "2", "1")
    assert undo.report.endswith("-bake.md")
    assert traffic.failures == []
    # the retrain run was opened with the evidence, and left its candidate as the challenger
    assert out.retrain is not None and out.retrain.candidate.version == "3"
    tags = parts.registry.version_tags(out.retrain.candidate)
    assert tags["trigger"] == "rollout-guard" and tags["report"] == undo.report
    assert any(r.window_id.startswith("regression-") for r in parts.ledger.records())
    settings = load_settings(config)
    assert settings.rollout.enabled and parts.registry.champion() == v1


def test_blue_green_switches_at_once_after_the_new_version_is_warm(loop, tmp_path):
    parts, _v1, big, traffic_rows = loop
    v2 = register(parts, TfidfFamily().fit(big, PARAMS))
    config = overlay(tmp_path, strategy="bluegreen")
    with serve(parts) as url, Traffic(url, traffic_rows) as traffic:
        out = rollout(challenger=v2.version, config=config)
    assert out.result == PROMOTED, out.reason
    assert parts.registry.champion() == v2
    assert [e.action for e in parts.history.entries()][1:] == ["stage:standby", "promote"]
    assert traffic.failures == []
    versions = [r[3] for r in traffic.responses]
    # one atomic switch: once v2 answers, v1 never does again
    assert "1" in versions and "2" in versions and "1" not in versions[versions.index("2") :]
    logged = predlog.read_predictions(parts.log_root, include_shadow=True)
    assert set(logged["slot"]) == {"champion"}, "no canary or shadow traffic in blue-green"


def test_an_ab_test_runs_to_its_planned_sample_size_and_promotes_the_better_model(loop, tmp_path):
    parts, _, big, traffic_rows = loop
    # a champion trained on two rows per intent, against a challenger trained on sixty
    weak = register(parts, TfidfFamily().fit(big.groupby("label").head(2), PARAMS))
    champion.move_alias(parts.registry, parts.history, "champion", weak, action="promote", reason="weak", actor="test")
    v2 = register(parts, TfidfFamily().fit(big, PARAMS))
    config = overlay(
        tmp_path,
        strategy="ab",
        ab={"weight": 0.5, "baseline_accuracy": 0.6, "min_detectable_effect": 0.25, "max_duration_s": 120},
    )
    with serve(parts) as url, Traffic(url, traffic_rows, label_share=0.8) as traffic:
        out = rollout(challenger=v2.version, config=config)
    assert out.result == PROMOTED, out.reason
    assert "z-test" in out.reason
    report = (parts.reports_dir / "rollouts" / f"rollout-{out.rollout_id}-ab.md").read_text()
    assert "two-proportion z-test, two-sided" in report
    logged = predlog.join_feedback(predlog.read_predictions(parts.log_root), predlog.read_feedback(parts.log_root))
    labelled = logged[logged["label"].notna()].groupby("slot").size().to_dict()
    from driftloop.core.analysis import required_sample_size

    planned = required_sample_size(0.6, 0.25, 0.05, 0.8)
    assert labelled["champion"] >= planned and labelled["canary"] >= planned
    assert traffic.failures == []


def test_manual_abort_promote_and_rollback_are_recorded_and_a_running_rollout_stops(loop, tmp_path):
    """What an operator types; each move is a history line with who and why, and the rollout
    flow that was waiting for traffic notices the abort and ends."""
    from typer.testing import CliRunner

    from driftloop.entry.cli import app
    from driftloop.flows.rollout import ENDED_BY_HAND

    parts, v1, big, _ = loop
    v2 = register(parts, TfidfFamily().fit(big, PARAMS))
    config = overlay(tmp_path)
    runner = CliRunner()
    outcome: list = []
    flow_thread = threading.Thread(target=lambda: outcome.append(rollout(challenger=v2.version, config=config)))
    flow_thread.start()  # no traffic: the shadow stage waits for samples
    deadline = time.monotonic() + 60
    while not parts.registry.rollout_state().active:
        assert time.monotonic() < deadline, "the rollout never published its first stage"
        time.sleep(0.1)
    status = runner.invoke(app, ["rollout", "status"])
    assert status.exit_code == 0, status.output
    assert "stage shadow" in status.output and "analysis now: wait" in status.output
    aborted = runner.invoke(app, ["rollout", "abort", "--reason", "saw odd answers", "--by", "alice"])
    assert aborted.exit_code == 0, aborted.output
    flow_thread.join(timeout=60)
    assert outcome and outcome[0].result == ENDED_BY_HAND
    last = parts.history.entries()[-1]
    # The actor is who the registry authenticates (nobody, on the local store: the OS user,
    # marked so); --by is only the note of whom it was for.
    local = f"manual:local:{os_user()} (unauthenticated)"
    assert (last.action, last.actor, last.from_version) == ("abort", f"{local} on behalf of alice", "2")
    assert "saw odd answers" in last.reason
    assert parts.registry.champion() == v1 and not parts.registry.rollout_state().active

    parts.registry.set_alias("challenger", v2)
    promoted = runner.invoke(app, ["rollout", "promote", "--reason", "hotfix", "--by", "bob"])
    assert promoted.exit_code == 0, promoted.output
    assert parts.registry.champion() == v2 and parts.registry.challenger() is None
    back = runner.invoke(app, ["rollback", "--reason", "complaints", "--by", "carol"])
    assert back.exit_code == 0, back.output
    assert parts.registry.champion() == v1
    moves = [(e.action, e.actor, e.to_version) for e in parts.history.entries() if e.alias == "champion"]
    assert moves[-2:] == [
        ("promote", f"{local} on behalf of bob", "2"),
        ("rollback", f"{local} on behalf of carol", "1"),
    ]
    assert "not authenticated" in back.output
    claim = json.loads(parts.registry.client.get_registered_model(v1.name).tags["driftloop.manual_move"])
    assert claim["actor"] == f"local:{os_user()}" and claim["authenticated"] is False
    assert (claim["action"], claim["on_behalf_of"]) == ("rollback", "carol")
