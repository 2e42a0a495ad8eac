"""The command's output when it is not a terminal (a CI log, ``| tee``): plain text, and every
line whole, however long; a table's ids never fold. Run as a subprocess with its output piped."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from driftloop.adapters.history import FileChampionHistory
from driftloop.core.types import HistoryEntry
from tests.support import ROOT

DRIFTLOOP = str(Path(sys.executable).parent / "driftloop")


def piped(*args: str, state: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP__") and k != "DRIFTLOOP_CONFIG"}
    # What a CI runner often sets: neither may bring back wrapping or colour in a pipe.
    env |= {"DRIFTLOOP__PROJECT__STATE_DIR": str(state), "COLUMNS": "80", "FORCE_COLOR": "1"}
    return subprocess.run(
        [DRIFTLOOP, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_a_table_row_comes_out_whole(tmp_path):
    reason = (
        "drift in text (0.8123 vs threshold 0.6500) and intent (0.4100 vs threshold 0.2000) "
        "over window 0a1b2c3d4e5f of 400 requests; challenger v7 beat the champion on the eval set"
    )
    actor = f"monitor:flow-run-{uuid.uuid4()}"
    FileChampionHistory(tmp_path / "champion_history.jsonl").append(
        HistoryEntry(
            time="2026-01-02T03:04:05.678+00:00",
            model="intent-router",
            alias="champion",
            from_version="6",
            to_version="7",
            action="promote",
            reason=reason,
            actor=actor,
        )
    )
    done = piped("history", state=tmp_path)
    assert done.returncode == 0, done.stderr
    row = [line for line in done.stdout.splitlines() if "promote" in line]
    assert len(row) == 1 and reason in row[0] and actor in row[0], done.stdout
    assert "\x1b[" not in done.stdout


def test_status_keeps_flow_run_ids_on_one_line(tmp_path, monkeypatch):
    from driftloop.adapters.registry import Registry
    from driftloop.config.settings import load_settings

    monkeypatch.setenv("DRIFTLOOP__PROJECT__STATE_DIR", str(tmp_path))
    settings = load_settings()
    flow_run = str(uuid.uuid4())
    name = "retrain (drift): window 0a1b2c3d4e5f drifted, text 0.8123 > 0.6500, intent 0.4100 > 0.2000"
    Registry(
        settings.tracking_uri, settings.registry.model_name, settings.registry.experiment, settings.artifact_root
    ).log_run(name, tags={"prefect.flow_run_id": flow_run, "driftloop.kind": "train"})
    done = piped("status", state=tmp_path)
    assert done.returncode == 0, done.stderr
    row = [line for line in done.stdout.splitlines() if flow_run in line]
    assert len(row) == 1 and name in row[0], done.stdout
    assert "\x1b[" not in done.stdout


def test_an_error_line_comes_out_whole(tmp_path):
    deep = tmp_path / ("a-folder-with-a-name-long-enough-to-pass-eighty-columns-on-its-own-" * 2)
    deep.mkdir()
    config = deep / "overlay.yaml"
    config.write_text("monitor:\n  window_size: abc\n")
    done = piped("status", "-c", str(config), state=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: configuration: monitor.window_size = 'abc' (in {config}): Input should be a valid integer, "
        "unable to parse string as an integer"
    ]


def test_a_bug_is_reported_with_its_traceback(capsys):
    """Not a project error: the traceback a bug report needs, once, and the exit status 1."""
    from driftloop.entry import cli

    def buggy():
        return {}["missing"]

    try:
        buggy()
    except KeyError as exc:
        code = cli._report(exc)
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback (most recent call last)" in err and "in buggy" in err
    assert err.rstrip().endswith(
        "unexpected error (KeyError: 'missing'); this is a bug, please report it with the traceback above"
    )


def test_a_refused_history_dsn_is_named_but_never_echoed(monkeypatch):
    """A DSN with a password is refused (the password belongs in the environment), and the error
    line does not repeat the password to a terminal or a CI log."""
    import pydantic

    from driftloop.config.settings import load_settings
    from driftloop.entry import cli

    monkeypatch.setenv("DRIFTLOOP__HISTORY__DSN", "postgresql://driftloop:s3cr3t-value@db:5432/driftloop")
    with pytest.raises(pydantic.ValidationError) as err:
        load_settings()
    line = cli._settings_problems(err.value, None, {})
    assert line.startswith("configuration: history.dsn (from $DRIFTLOOP__HISTORY__DSN): holds a password"), line
    assert "s3cr3t-value" not in line
