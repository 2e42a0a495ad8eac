"""User text: redacted before it is written, files 0600 and folders 0700, a person's texts
forgotten from the logs (JSON Lines and Parquet) and the data versions, data versions retired
past retention. Real files, real DVC; the registry is a fake of our own Protocol."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from driftloop.adapters import logstore, predlog, privacy
from driftloop.adapters.private import private_dir, restrict_tree, write_private
from driftloop.adapters.versioning import DatasetStore
from driftloop.core.redaction import Redactor
from driftloop.core.types import ModelRef, Prediction

CARD = "4111 1111 1111 1111"
SECRET = "my name is Ada Lovelace and my card was swallowed"


def every_file(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def files_holding(root: Path, needle: str) -> list[Path]:
    """Files whose bytes hold ``needle`` in any case, as written or JSON-escaped."""
    forms = {needle.lower().encode(), json.dumps(needle.lower())[1:-1].encode()}
    return [p for p in every_file(root) if any(f in p.read_bytes().lower() for f in forms)]


def parquet_texts(root: Path) -> list[str]:
    out: list[str] = []
    for path in root.rglob("*.parquet"):
        table = pq.read_table(path)
        if "text" in table.column_names:
            out += [t for t in table.column("text").to_pylist() if t is not None]
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def clock(start: datetime):
    first = round(start.timestamp() * 10**6) * 1000
    calls = iter(range(10**9))
    return lambda: first + next(calls) * 10**9


def test_a_card_number_is_redacted_before_it_reaches_the_disk(tmp_path):
    redact = Redactor()
    with predlog.PredictionLog(tmp_path, redact=redact) as log:
        log.write("r1", f"card {CARD} lost, write to ada@example.com", Prediction("lost_card", 0.9), "1", 1.0, 5)
        log.write_errors(["r2"], [f"again {CARD}"], "1", 1.0, "champion", f"ValueError: bad text 'again {CARD}'")
    with predlog.FeedbackLog(tmp_path, redact=redact) as fb:
        fb.write("r1", f"label {CARD}")
    logstore.compact(tmp_path, now=datetime.now(UTC) + timedelta(days=1), closed_after_s=0)

    assert files_holding(tmp_path, CARD) == [] and files_holding(tmp_path, CARD.replace(" ", "")) == []
    assert files_holding(tmp_path, "ada@example.com") == []
    texts = parquet_texts(tmp_path)
    assert texts and all(CARD not in t for t in texts)
    frame = predlog.read_predictions(tmp_path, include_errors=True)
    assert frame["text"].tolist() == ["card [CARD] lost, write to [EMAIL]", "again [CARD]"]
    assert CARD not in frame["error"].iloc[1]
    assert predlog.read_feedback(tmp_path)["label"].tolist() == ["label [CARD]"]


def test_log_files_are_0600_and_their_folders_0700(tmp_path):
    root = tmp_path / "logs"
    with predlog.PredictionLog(root) as log:
        log.write("r1", "hello", Prediction("x", 0.9), "1", 1.0, 1)
    with predlog.FeedbackLog(root) as fb:
        fb.write("r1", "x")
    parts = list(root.rglob("*.jsonl"))
    assert parts and all(mode(p) == 0o600 for p in parts)
    logstore.compact(root, now=datetime.now(UTC) + timedelta(days=1), closed_after_s=0)
    written = every_file(root)
    assert any(p.suffix == ".parquet" for p in written) and any(p.name == logstore.MANIFEST for p in written)
    assert all(mode(p) == 0o600 for p in written), {str(p): oct(mode(p)) for p in written}
    assert all(mode(d) == 0o700 for d in [root, *(p for p in root.rglob("*") if p.is_dir())])


def test_private_helpers_create_owner_only_files_and_folders(tmp_path):
    folder = private_dir(tmp_path / "a" / "b" / "c")
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", folder)] == [0o700] * 3
    path = write_private(folder / "copy.jsonl", b"text\n")
    assert mode(path) == 0o600 and path.read_bytes() == b"text\n"
    loose = folder / "loose.txt"
    loose.write_text("x")
    loose.chmod(0o644)
    restrict_tree(tmp_path / "a")
    assert mode(loose) == 0o600


def test_dvc_data_files_are_owner_only(tmp_path):
    store = DatasetStore(tmp_path / "datasets")
    store.commit(pd.DataFrame({"text": [SECRET, "hello"], "label": ["a", "b"]}), "reference")
    written = every_file(tmp_path / "datasets") + every_file(tmp_path / "dvc-remote")
    holding = [p for p in written if SECRET.encode() in p.read_bytes()]
    assert len(holding) >= 3  # the folder's copy, the cache, the remote
    assert all(mode(p) & 0o077 == 0 for p in written), {str(p): oct(mode(p)) for p in written if mode(p) & 0o077}
    assert mode(tmp_path / "datasets") == 0o700


def _log_history(root: Path) -> None:
    """Two days of log: an old day compacted to Parquet, today's lines still in JSON Lines."""
    old = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=3)
    with predlog.PredictionLog(root, clock=clock(old)) as log:
        log.write("ada-1", SECRET, Prediction("card_swallowed", 0.9), "1", 1.0, 9)
        log.write("bob-1", "where is my refund", Prediction("refund", 0.8), "1", 1.0, 4)
    with predlog.FeedbackLog(root, clock=clock(old + timedelta(minutes=1))) as fb:
        fb.write("ada-1", "card_swallowed")
        fb.write("bob-1", "refund")
    for part in root.rglob("*.jsonl"):
        os.utime(part, (old.timestamp() + 600, old.timestamp() + 600))
    logstore.compact(root, now=datetime.now(UTC), closed_after_s=900)
    assert parquet_texts(root)
    with predlog.PredictionLog(root) as log:  # today's part, open: lines blanked in place
        log.write("ada-2", SECRET.upper(), Prediction("card_swallowed", 0.9), "1", 1.0, 9)
        log.write("bob-2", "hello there", Prediction("greeting", 0.8), "1", 1.0, 2)


class Versions:
    """A registry of our own Protocol (privacy.VersionTags): versions with tags and aliases."""

    model_name = "intent-router"

    def __init__(self, versions: list[dict]):
        self._versions = versions

    def versions(self) -> list[dict]:
        return self._versions

    def set_version_tag(self, ref: ModelRef, key: str, value: str) -> None:
        for v in self._versions:
            if v["version"] == ref.version:
                v["tags"][key] = value


def test_forget_by_request_id_leaves_no_trace_in_logs_or_data_versions(tmp_path):
    logs, state = tmp_path / "logs", tmp_path
    _log_history(logs)
    store = DatasetStore(state / "datasets")
    ref = store.commit(pd.DataFrame({"text": [SECRET, "hello"], "label": ["card_swallowed", "greeting"]}), "reference")
    registry = Versions([{"version": "1", "aliases": ["champion"], "created": 0, "tags": {"reference.md5": ref.md5}}])
    report = private_dir(state / "reports") / "drift-1.html"
    report.write_text(f"<script>var data = {json.dumps({'rows': [SECRET]})};</script>")
    ledger = privacy.Ledger(state / "privacy")
    target = privacy.Target.of(["ada-1"])

    dry = privacy.forget(
        target,
        log_root=logs,
        datasets=store,
        registry=registry,
        folders=[state / "reports"],
        scratch=state / "privacy" / "scratch",
        ledger=ledger,
        dry_run=True,
    )
    assert dry.removed >= 5 and files_holding(state, SECRET) and not ledger.path.exists()

    out = privacy.forget(
        privacy.Target.of(["ada-1"]),
        log_root=logs,
        datasets=store,
        registry=registry,
        folders=[state / "reports"],
        scratch=state / "privacy" / "scratch",
        ledger=ledger,
    )

    # Both of Ada's predictions (the second under another id, the same text), her label, the
    # set's row, the report's copy; nothing else.
    assert out.skipped == []
    assert files_holding(state, SECRET) == [], files_holding(state, SECRET)
    assert all(SECRET.lower() not in t.lower() for t in parquet_texts(logs))
    assert predlog.read_predictions(logs)["request_id"].tolist() == ["bob-1", "bob-2"]
    assert predlog.read_feedback(logs)["request_id"].tolist() == ["bob-1"]
    new_md5 = registry.versions()[0]["tags"]["reference.md5"]
    assert new_md5 != ref.md5 and registry.versions()[0]["tags"]["privacy.replaced.reference.md5"] == ref.md5
    restored = store.restore(new_md5, tmp_path / "check.csv")
    assert pd.read_csv(restored)["text"].tolist() == ["hello"]
    with pytest.raises(Exception):  # noqa: B017,PT011  the old version's bytes are gone
        store.restore(ref.md5, tmp_path / "old.csv")
    assert "[FORGOTTEN]" in report.read_text()
    # The ledger is the owner's, and holds hashes only.
    entry = ledger.entries()[-1]
    assert mode(ledger.path) == 0o600 and mode(state / "privacy" / "ledger.key") == 0o600
    assert entry["action"] == "forget" and entry["texts"] and entry["request_ids"][0].startswith("hmac-sha256:")
    assert "ada-1" not in ledger.path.read_text() and "lovelace" not in ledger.path.read_text().lower()


def test_forget_by_text_match_finds_texts_no_log_holds(tmp_path):
    logs = tmp_path / "logs"
    _log_history(logs)
    store = DatasetStore(tmp_path / "datasets")
    data = store.commit(pd.DataFrame({"text": ["Ada Lovelace here, old text", "hi"], "label": ["a", "b"]}), "training")
    registry = Versions([{"version": "1", "aliases": [], "created": 0, "tags": {"data.md5": data.md5}}])

    privacy.forget(
        privacy.Target.of(text_match=r"(?i)ada\s+lovelace"),
        log_root=logs,
        datasets=store,
        registry=registry,
        folders=[],
        scratch=tmp_path / "privacy" / "scratch",
        ledger=privacy.Ledger(tmp_path / "privacy"),
    )

    assert files_holding(tmp_path, "Ada Lovelace") == [] and files_holding(tmp_path, "ADA LOVELACE") == []
    assert predlog.read_predictions(logs)["request_id"].tolist() == ["bob-1", "bob-2"]
    assert (tmp_path / "datasets" / "training.csv").read_text().splitlines() == ["text,label", "hi,b"]


def test_retention_deletes_old_unused_versions_and_redacts_the_champions(tmp_path):
    store = DatasetStore(tmp_path / "datasets")
    old = store.commit(pd.DataFrame({"text": ["an old text", "x"], "label": ["a", "b"]}), "training")
    raw = store.commit(pd.DataFrame({"text": [f"card {CARD}", "y"], "label": ["a", "b"]}), "reference")
    fresh = store.commit(pd.DataFrame({"text": ["new", "z"], "label": ["a", "b"]}), "training")
    now = datetime.now(UTC)
    long_ago = (now - timedelta(days=60)).timestamp() * 1000
    registry = Versions(
        [
            {"version": "2", "aliases": ["champion"], "created": long_ago, "tags": {"reference.md5": raw.md5}},
            {"version": "1", "aliases": [], "created": long_ago, "tags": {"data.md5": old.md5}},
            {"version": "3", "aliases": [], "created": now.timestamp() * 1000, "tags": {"data.md5": fresh.md5}},
        ]
    )
    ledger = privacy.Ledger(tmp_path / "privacy")

    done = privacy.retire_data_versions(
        store, registry, retention_days=30, redact=Redactor(), scratch=tmp_path / "scratch", ledger=ledger
    )

    assert {(r.md5, r.action) for r in done} == {(old.md5, "deleted"), (raw.md5, "redacted")}
    tags = {v["version"]: v["tags"] for v in registry.versions()}
    assert tags["1"]["data.md5"] == "" and tags["1"]["privacy.retired.data.md5"] == old.md5
    assert tags["2"]["privacy.replaced.reference.md5"] == raw.md5
    assert pd.read_csv(store.restore(tags["2"]["reference.md5"], tmp_path / "r.csv"))["text"][0] == "card [CARD]"
    assert store.object_paths(old.md5) == [] and store.object_paths(raw.md5) == []
    assert store.object_paths(fresh.md5)  # within retention: untouched
    assert files_holding(tmp_path / "datasets", CARD) == [] and files_holding(tmp_path / "dvc-remote", CARD) == []
    assert [e["action"] for e in ledger.entries()] == ["retention:redacted", "retention:deleted"] or sorted(
        e["action"] for e in ledger.entries()
    ) == ["retention:deleted", "retention:redacted"]


def test_the_cli_forgets_and_says_what_it_removed(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from driftloop.entry.cli import app

    monkeypatch.setenv("DRIFTLOOP__PROJECT__STATE_DIR", str(tmp_path))
    _log_history(tmp_path / "logs")
    runner = CliRunner()
    assert runner.invoke(app, ["privacy", "forget"]).exit_code != 0  # nothing named: refused
    dry = runner.invoke(app, ["privacy", "forget", "--text-match", "Lovelace", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would remove" in dry.output and files_holding(tmp_path / "logs", SECRET)
    done = runner.invoke(app, ["privacy", "forget", "--request-id", "ada-1"])
    assert done.exit_code == 0, done.output
    assert files_holding(tmp_path, SECRET) == [] and "ledger.jsonl" in done.output
