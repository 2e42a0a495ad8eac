"""`driftloop logs compact` and `driftloop logs status`, on logs written by the real writers.

`logs compact` runs as a subprocess, its flow run on the session's Prefect harness (as `driftloop
monitor` runs its flow on the configured server); `logs status` reads only manifests and sizes."""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from driftloop.adapters import logstore, predlog
from driftloop.core.types import Prediction
from driftloop.entry.cli import app
from tests.support import ROOT

RUN_URL = re.compile(r"^flow run: http://\S+/runs/flow-run/[0-9a-f-]{36}$", re.M)


def clock(start: datetime):
    """A writer's clock: ``start``, then one second later at each call."""
    first = round(start.timestamp() * 10**6) * 1000
    calls = iter(range(10**9))
    return lambda: first + next(calls) * 10**9


DRIFTLOOP = str(Path(sys.executable).parent / "driftloop")


@pytest.fixture
def compact(state, prefect_harness) -> Callable[..., subprocess.CompletedProcess]:
    """``driftloop logs compact <args>`` as a person runs it (its output piped), its flow run on
    the harness's Prefect API, its logs under ``state``."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRIFTLOOP_", "PREFECT_API_URL"))}
    env |= {"DRIFTLOOP__PROJECT__STATE_DIR": str(state), "DRIFTLOOP__PREFECT__API_URL": str(PREFECT_API_URL.value())}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [DRIFTLOOP, "logs", "compact", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    return run


def write_day(log_root: Path, day: datetime, ids: list[str]) -> None:
    """One answered prediction and one label per id on ``day``, in parts last written that day."""
    with predlog.PredictionLog(log_root, clock=clock(day)) as log:
        for i in ids:
            log.write(i, f"text of {i}", Prediction("card_arrival", 0.9), "1", 1.0, 3)
    with predlog.FeedbackLog(log_root, clock=clock(day + timedelta(minutes=5))) as fb:
        for i in ids:
            fb.write(i, "card_arrival")
    for part in log_root.rglob(f"date={day:%Y-%m-%d}/*.jsonl"):
        os.utime(part, (day.timestamp() + 600, day.timestamp() + 600))


def rows(output: str) -> list[list[str]]:
    """The body rows of the tables in ``output``, cell by cell."""
    return [[c.strip() for c in line.strip("│").split("│")] for line in output.splitlines() if line.startswith("│")]


def status() -> dict[tuple[str, str], dict]:
    done = CliRunner().invoke(app, ["logs", "status", "--json", "--lines"])
    assert done.exit_code == 0, done.output
    rows = [json.loads(line) for line in done.output.splitlines()]
    return {(r["log"], r["day"]): r for r in rows}


def test_logs_compact_then_retention_report_what_they_did(compact, settings):
    old = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=40)
    write_day(settings.log_dir, old, ["a", "b"])
    with predlog.PredictionLog(settings.log_dir) as log:  # today's part, still open: left as it is
        log.write("today", "fresh", Prediction("card_arrival", 0.9), "1", 1.0, 1)
    old_day, today = f"{old:%Y-%m-%d}", f"{datetime.now(UTC):%Y-%m-%d}"
    before = status()
    assert {k: (r["jsonl_parts"], r["jsonl_lines"], r["parquet_rows"]) for k, r in before.items()} == {
        ("predictions", old_day): (1, 2, 0),
        ("feedback", old_day): (1, 2, 0),
        ("predictions", today): (1, 1, 0),
    }

    compacted = compact("--no-retention")

    assert compacted.returncode == 0, compacted.stderr
    out = compacted.stdout
    assert rows(out) == [
        ["predictions", old_day, "1", "2", "0", "compacted-000001.parquet"],
        ["feedback", old_day, "1", "2", "0", "compacted-000001.parquet"],
    ]
    assert "compaction: 2 JSON Lines parts into 2 Parquet files (4 rows)" in out
    assert "retention: not run (--no-retention)" in out
    assert RUN_URL.search(out), out
    after = status()
    assert {k: (r["jsonl_parts"], r["parquet_rows"], r["past_retention"]) for k, r in after.items()} == {
        ("predictions", old_day): (0, 2, True),
        ("feedback", old_day): (0, 2, True),
        ("predictions", today): (1, 0, False),
    }
    assert after[("predictions", old_day)]["parquet_bytes"] > 0

    # No model version is registered, so no versioned set keeps a row: the old day goes.
    retired = compact()

    assert retired.returncode == 0, retired.stderr
    out = retired.stdout
    assert "compaction: no closed JSON Lines part to compact" in out
    assert rows(out) == [
        ["predictions", old_day, "2", "0 (day removed)", "2"],
        ["feedback", old_day, "2", "0 (day removed)", "2"],
    ]
    assert f"retention: 4 rows deleted from 2 days older than {settings.logs.retention_days} days" in out
    assert RUN_URL.search(out), out
    assert set(status()) == {("predictions", today)}
    assert predlog.read_predictions(settings.log_dir)["request_id"].tolist() == ["today"]


def test_logs_compact_names_the_log_another_run_holds(compact, settings):
    old = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=2)
    write_day(settings.log_dir, old, ["a"])
    with open(settings.log_dir / logstore.PREDICTIONS / ".compaction.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a compaction running elsewhere holds it
        done = compact("--no-retention")

    assert done.returncode == 0, done.stderr
    assert f"skipped: another compaction holds {settings.log_dir / logstore.PREDICTIONS}" in done.stdout
    assert rows(done.stdout) == [["feedback", f"{old:%Y-%m-%d}", "1", "1", "0", "compacted-000001.parquet"]]
    now = status()
    assert now[("predictions", f"{old:%Y-%m-%d}")]["jsonl_parts"] == 1
    assert now[("feedback", f"{old:%Y-%m-%d}")]["parquet_rows"] == 1


def test_logs_status_table_sums_the_days(tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFTLOOP__PROJECT__STATE_DIR", str(tmp_path))
    from driftloop.config.settings import load_settings

    log_root = load_settings().log_dir
    day = datetime.now(UTC).replace(hour=1, minute=0, second=0, microsecond=0) - timedelta(days=1)
    write_day(log_root, day, ["a", "b", "c"])
    logstore.compact(log_root, now=datetime.now(UTC))
    write_day(log_root, day + timedelta(hours=2), ["d"])  # a later part, not compacted yet
    runner = CliRunner()

    done = runner.invoke(app, ["logs", "status", "--lines"])

    assert done.exit_code == 0, done.output
    table = {(r[0], r[1]): r[2:] for r in rows(done.output)}
    parts, size, lines, parquet_rows, parquet_size, note = table[("predictions", f"{day:%Y-%m-%d}")]
    assert (parts, lines, parquet_rows, note) == ("1", "1", "3", "")
    assert re.fullmatch(r"\d+ B", size) and re.fullmatch(r"\d+(\.\d)? k?B", parquet_size), table
    feedback = table[("feedback", f"{day:%Y-%m-%d}")]
    assert (feedback[0], feedback[2], feedback[3]) == ("1", "1", "3")
    assert "1 day, 2 partitions: 2 JSON Lines parts" in done.output and "6 Parquet rows" in done.output
    newest = runner.invoke(app, ["logs", "status", "--days", "1", "--json"])
    assert newest.exit_code == 0 and len(newest.output.splitlines()) == 2  # one day of each log
    empty = runner.invoke(app, ["logs", "status"], env={"DRIFTLOOP__PROJECT__STATE_DIR": str(tmp_path / "none")})
    assert empty.exit_code == 0 and "no prediction or feedback log under" in empty.output
