"""Production scale: the log readers at a month of traffic (issue "Production scale", item 5).

Synthesises prediction and feedback logs in the project's own format (the exact lines
``PredictionLog`` and ``FeedbackLog`` write, checked against the real writer at start) at
``--rate`` requests a day for ``--days`` days, ending at ``--end-hour`` UTC of the newest day past
that hour (default 23:45: the newest partition, still JSON Lines, then holds nearly a day, the
readers' worst case), one data set per history (1 day, ``--old-days``, ``--days``), then
measures at each history, each measurement in a fresh process (time of the call, and the
process's peak resident set, VmHWM, imports included):

- a monitoring run's data read: ``tasks.monitor.load_window`` as a plain function (no Prefect),
  window 400 (the default ``monitor.window_size``) and 10,000;
- a rollout poll: ``rollout.stages.live_frame`` for a stage that began 10 minutes ago (a
  watch's first poll), and the next poll of the same ``live_log`` after 2 s of new lines;
- a retrain's labelled-row join: the first poll of ``logstore.LabelFeed`` (the labels, then only
  the predictions they label) and ``curation.labelled_rows``, as the retrain's
  ``wait_for_labels`` does (before the log store: ``read_predictions`` + ``read_feedback``):
  every label the log holds (a first retrain, or a champion without ``data.labels_until``), and
  only the labels of the last day (the champion's training set built a day ago);
- compacting one closed day, when the log store has a compaction function;
- one prediction-log line written in process with the real ``PredictionLog``.

    .venv/bin/python bench/scale.py --quick                 # 50k requests/day x 3 days
    .venv/bin/python bench/scale.py [--keep] [--dir /tmp/driftloop-scale]   # 1M/day x 30 days
    .venv/bin/python bench/scale.py --data-only     # synthesise and keep the data; a later --keep run reuses it
    .venv/bin/python bench/scale.py --rate 1000000 --days 30 --old-days 3 --workers 2

Traffic: texts drawn from the BANKING77 CSVs, a day-night rate curve (peak 14:00 UTC), two
serving replicas each writing its own files, champion versions 1 → 2 → 3 over the history with
a canary slot (10% of traffic) for the next version before each promotion, ~5% of requests
labelled in the feedback log (same request ids, labels arriving minutes to hours later).
Closed partitions (every date before the newest) are compacted as the deployment would, when
the log store can; the newest date stays JSON Lines.

Old vs new: the "old" columns run the same reads with the full-history reader
(``predlog.read_predictions`` + pandas selection, as of commit ebe8d17, before the log store;
taken from git) on the uncompacted JSON Lines. It reads every
line into memory, so it only runs at 1 day and at ``--old-days`` days (default 3), and is
skipped where its memory, extrapolated from the 1-day run, would not fit. Data goes under
``--dir``; ``--keep`` keeps it and reuses it on the next run with the same rate and days.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAY_S = 86_400
FORMAT = 1  # bump when the synthesised data changes, so --keep regenerates it
REPLICAS = 2  # serving processes, each writing its own file per partition
LABELLED = 0.05
CANARY_SHARE = 0.1
LINE_BYTES = 280  # about one prediction line; for the disk estimate
POLL_SINCE_S = 600  # a rollout stage that began 10 minutes ago
# The last commit before adapters.logstore: predlog's own full-history readers, the "old" columns.
OLD_READER = "ebe8d17"
POLL_S = 2.0  # rollout.poll_s: the next poll reads this long's lines
WINDOWS = (400, 10_000)
CHAMPION_NOW = "3"
TARGETS = {
    "monitor": "<= 10 s, <= 1 GB",
    "poll": "<= 0.5 s",
    "compact": "<= 60 s",
    "write": "<= 15 us",
}


# -- synthesis -----------------------------------------------------------------------------------


def _corpus() -> tuple[list[str], list[str], list[str], list[int], list[int]]:
    """JSON-quoted texts, their label index, the labels JSON-quoted and plain, tokens per text."""
    texts: list[str] = []
    label_of: list[str] = []
    for name in ("train.csv", "test.csv"):
        with open(ROOT / "data/raw/banking77" / name, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                texts.append(row["text"])
                label_of.append(row["category"])
    labels = sorted(set(label_of))
    index = {label: i for i, label in enumerate(labels)}
    quoted = [json.dumps(t) for t in texts]
    tokens = [len(t.split()) + 2 for t in texts]
    return quoted, [json.dumps(label) for label in labels], labels, [index[x] for x in label_of], tokens


def _rate_weights(start_s: int, end_s: int):
    """Relative request rate of each minute in [start_s, end_s): a day-night curve."""
    import numpy as np

    minutes = np.arange(start_s, end_s, 60, dtype=np.int64)
    hour = (minutes % DAY_S) / 3600.0
    return minutes, 1.0 + 0.6 * np.sin((hour - 8.0) / 24.0 * 2.0 * np.pi)


@dataclass(frozen=True)
class DayPlan:
    index: int
    day: str  # YYYY-MM-DD, the partition
    lo_s: int  # this partition's share of the history: [lo_s, hi_s)
    hi_s: int
    rows: int
    start_s: int  # the whole history: [start_s, end_s)
    end_s: int
    seed: int


def _plan(days: int, rate: int, end_s: int, seed: int) -> list[DayPlan]:
    start_s = end_s - days * DAY_S
    minutes, weights = _rate_weights(start_s, end_s)
    total = rate * days
    plans = []
    lo = start_s
    index = 0
    while lo < end_s:
        hi = min((lo // DAY_S + 1) * DAY_S, end_s)
        share = weights[(minutes >= lo) & (minutes < hi)].sum() / weights.sum()
        day = datetime.fromtimestamp(lo, UTC).date().isoformat()
        plans.append(DayPlan(index, day, lo, hi, round(total * share), start_s, end_s, seed * 1000 + index))
        lo, index = hi, index + 1
    return plans


def _versions(t_us, plan: DayPlan, rng):
    """Champion 1 → 2 → 3 over the history; before each promotion a canary of the next version."""
    import numpy as np

    span = (plan.end_s - plan.start_s) * 1e6
    f = (t_us - plan.start_s * 1e6) / span
    version = np.where(f < 1 / 3, 1, np.where(f < 2 / 3, 2, 3))
    canary_window = 1 / 60  # of the history: 12 hours of a month
    before_promotion = ((f >= 1 / 3 - canary_window) & (f < 1 / 3)) | ((f >= 2 / 3 - canary_window) & (f < 2 / 3))
    canary = before_promotion & (rng.random(len(t_us)) < CANARY_SHARE)
    return version + canary, canary


def _stamp_mtime(path: Path, last_us: int) -> None:
    """A part's mtime is its last line's time, as a writer leaves it (compaction reads the age)."""
    os.utime(path, (last_us / 1e6, last_us / 1e6))


def _stamps(t_us) -> list[str]:
    import numpy as np

    return np.datetime_as_string(t_us.astype("datetime64[us]"), unit="us").tolist()


def _synth_day(root: str, plan: DayPlan) -> tuple[int, int, int]:
    """Write one partition's prediction lines (and the feedback they get, wherever it lands)."""
    import numpy as np

    quoted, quoted_labels, _, label_index, tokens = _corpus()
    rng = np.random.default_rng(plan.seed)
    n = plan.rows
    minutes, weights = _rate_weights(plan.lo_s, plan.hi_s)
    pick = rng.choice(len(minutes), size=n, p=weights / weights.sum())
    t_us = minutes[pick] * 1_000_000 + rng.integers(0, 60_000_000, size=n)
    t_us = np.sort(np.minimum(t_us, plan.hi_s * 1_000_000 - 1))
    text = rng.integers(0, len(quoted), size=n)
    truth = np.asarray(label_index)[text]
    intent = np.where(rng.random(n) < 0.9, truth, rng.integers(0, len(quoted_labels), size=n))
    confidence = rng.beta(8.0, 2.0, size=n).tolist()
    latency = rng.gamma(2.0, 1.5, size=n).tolist()
    version, canary = _versions(t_us, plan, rng)
    replica = rng.integers(0, REPLICAS, size=n)
    raw = rng.bytes(16 * n).hex()
    ids = [raw[i : i + 32] for i in range(0, 32 * n, 32)]
    stamps = _stamps(t_us)
    slots = np.where(canary, 1, 0).tolist()
    slot_names = ('"champion"', '"canary"')
    lines = [
        f'{{"request_id":"{rid}","time":"{ts}+00:00","text":{quoted[ti]},"intent":{quoted_labels[ii]},'
        f'"confidence":{c!r},"model_version":"{v}","latency_ms":{lat:.3f},"slot":{slot_names[s]},'
        f'"tokens":{tokens[ti]}}}\n'
        for rid, ts, ti, ii, c, v, lat, s in zip(
            ids, stamps, text.tolist(), intent.tolist(), confidence, version.tolist(), latency, slots, strict=True
        )
    ]
    written = 0
    part = Path(root) / "predictions" / f"date={plan.day}"
    part.mkdir(parents=True, exist_ok=True)
    for r in range(REPLICAS):
        # part-<pid>-<start>.jsonl, as each serving process names its own file
        name = part / f"part-{10_000 + r}-{plan.day.replace('-', '')}T000000000000Z.jsonl"
        mine = np.flatnonzero(replica == r)
        data = "".join([lines[i] for i in mine.tolist()]).encode("ascii")
        name.write_bytes(data)
        _stamp_mtime(name, t_us[mine[-1]] if len(mine) else plan.lo_s * 1_000_000)
        written += len(data)
    del lines

    # Feedback: ~5% of the requests, labelled 1 minute to ~8 hours later (annotators), written by
    # the replica that took /feedback; labels not yet given by the end of the history are left out.
    chosen = np.flatnonzero(rng.random(n) < LABELLED)
    f_us = t_us[chosen] + (60e6 + rng.exponential(2 * 3600e6, size=len(chosen))).astype(np.int64)
    keep = f_us < plan.end_s * 1_000_000
    chosen, f_us = chosen[keep], f_us[keep]
    order = np.argsort(f_us, kind="stable")
    chosen, f_us = chosen[order], f_us[order]
    f_stamps = _stamps(f_us)
    f_days = (f_us // (DAY_S * 1_000_000)).tolist()
    by_day: dict[int, list[str]] = {}
    f_last = dict(zip(f_days, f_us.tolist(), strict=True))  # the last label's time in each partition
    for i, ts, d in zip(chosen.tolist(), f_stamps, f_days, strict=True):
        by_day.setdefault(d, []).append(
            f'{{"request_id":"{ids[i]}","time":"{ts}+00:00","label":{quoted_labels[truth[i]]}}}\n'
        )
    for d, f_lines in by_day.items():
        day = datetime.fromtimestamp(d * DAY_S, UTC).date().isoformat()
        fpart = Path(root) / "feedback" / f"date={day}"
        fpart.mkdir(parents=True, exist_ok=True)
        data = "".join(f_lines).encode("ascii")
        name = fpart / f"part-{20_000 + plan.index}-{plan.day.replace('-', '')}T000000000000Z.jsonl"
        name.write_bytes(data)
        _stamp_mtime(name, f_last[d])
        written += len(data)
    return n, len(chosen), written


def _epoch_ns(stamp: str) -> int:
    t = datetime.fromisoformat(stamp) - datetime(1970, 1, 1, tzinfo=UTC)
    return (t.days * DAY_S + t.seconds) * 1_000_000_000 + t.microseconds * 1000


def check_format() -> None:
    """The synthesised lines are byte for byte what the real writers write for the same values."""
    from driftloop.adapters.predlog import FeedbackLog, PredictionLog
    from driftloop.core.types import Prediction

    with tempfile.TemporaryDirectory() as tmp:
        plan = _plan(1, 20_000, (int(time.time()) // DAY_S) * DAY_S + 7200, 7)[0]
        _synth_day(tmp, plan)
        ours = sorted((Path(tmp) / "predictions").rglob("*.jsonl"))[0].read_text().splitlines()[0]
        rec = json.loads(ours)
        ns = _epoch_ns(rec["time"])
        real_root = Path(tmp) / "real"
        with PredictionLog(real_root, clock=lambda: ns) as log:
            p = Prediction(rec["intent"], rec["confidence"])
            log.write(
                rec["request_id"], rec["text"], p, rec["model_version"], rec["latency_ms"], rec["tokens"], rec["slot"]
            )
            real = log.path.read_text().splitlines()[0]  # type: ignore[union-attr]
        fb = sorted((Path(tmp) / "feedback").rglob("*.jsonl"))[0].read_text().splitlines()[0]
        frec = json.loads(fb)
        fns = _epoch_ns(frec["time"])
        with FeedbackLog(real_root, clock=lambda: fns) as flog:
            flog.write(frec["request_id"], frec["label"])
            freal = flog.path.read_text().splitlines()[0]  # type: ignore[union-attr]
    if ours != real or fb != freal:
        raise SystemExit(f"synthesised lines differ from the writers':\n{ours}\n{real}\n{fb}\n{freal}")


def synthesise(root: Path, days: int, rate: int, end_s: int, seed: int, workers: int) -> dict:
    plans = _plan(days, rate, end_s, seed)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_synth_day, [str(root)] * len(plans), plans))
    return {
        "rows": sum(r[0] for r in results),
        "feedback_rows": sum(r[1] for r in results),
        "bytes": sum(r[2] for r in results),
        "seconds": time.perf_counter() - started,
        "partitions": [p.day for p in plans],
    }


# -- the log store's new API (bounded readers, compaction), where it exists ------------------------


def _logstore():
    """driftloop.adapters.logstore when it has the bounded readers and compaction, else None."""
    try:
        from driftloop.adapters import logstore
    except ImportError:
        return None
    needed = ("compact_partition", "read_window", "LiveLog", "LabelFeed")
    return logstore if all(hasattr(logstore, name) for name in needed) else None


def compact_day(root: str, day: str, end_s: int) -> float:
    """Compact one partition of both logs as the compaction flow does, at ``end_s`` + 2 minutes
    (the newest partition's parts are still open then; an earlier day's are closed)."""
    logstore = _logstore()
    now = datetime.fromtimestamp(end_s + 120, UTC)
    started = time.perf_counter()
    for kind in (logstore.PREDICTIONS, logstore.FEEDBACK):
        partition = Path(root) / kind / f"date={day}"
        if partition.is_dir():
            logstore.compact_partition(partition, kind, now=now)
    return time.perf_counter() - started


def _linked_copy(src: Path, dest: Path) -> None:
    """``dest`` as a tree of hard links to ``src``'s files (a compaction may replace them)."""
    for path in src.rglob("*"):
        target = dest / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)


# -- measurements, each in a fresh process -------------------------------------------------------


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _fresh_part(root: Path, lines: int) -> Path:
    """A new part in the newest partition with ``lines`` lines (copies of the newest ones): what
    the replicas write between two polls."""
    partition = sorted((root / "predictions").glob("date=*"))[-1]
    newest = sorted(partition.glob("part-*.jsonl"))[-1]
    with open(newest, "rb") as f:
        f.seek(max(0, newest.stat().st_size - 4096 * max(lines, 1)))
        tail = f.read().split(b"\n")[1:-1][-lines:]
    path = partition / f"part-99999-{datetime.now(UTC):%Y%m%dT%H%M%S%f}Z.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in tail))
    return path


def _old_predlog():
    """``adapters.predlog`` as it was before the log store (commit :data:`OLD_READER`): its readers
    parse every line of every partition they touch. The module as it is now if git cannot say."""
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{OLD_READER}:src/driftloop/adapters/predlog.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        from driftloop.adapters import predlog

        return predlog
    module = types.ModuleType("driftloop_predlog_old")
    sys.modules[module.__name__] = module
    exec(compile(source, f"{OLD_READER}:predlog.py", "exec"), module.__dict__)  # noqa: S102
    return module


def _labels() -> list[str]:
    return _corpus()[2]


def child(spec: dict) -> dict:
    """One measurement; runs in its own process (``--child``)."""
    import pandas as pd  # noqa: F401  (imported before the baseline, as every caller has it)

    from driftloop.data import curation

    predlog = _old_predlog()  # the "old" ops' reader; the "new" ones call the project's code

    root = Path(spec.get("root", "."))
    op = spec["op"]
    since = datetime.fromtimestamp(spec.get("end_s", 0) - POLL_SINCE_S, UTC)
    call = None
    if op == "monitor-new":
        from driftloop.tasks import monitor

        def call():
            return monitor.load_window.fn(root, CHAMPION_NOW, spec["size"])
    elif op == "monitor-old":

        def call():
            window = curation.select_window(predlog.read_predictions(root), CHAMPION_NOW, spec["size"])
            return predlog.join_feedback(window, predlog.read_feedback(root))
    elif op == "poll-new":
        from driftloop.rollout import stages

        def call():
            return stages.live_frame(root, since)
    elif op == "poll-next":
        from driftloop.rollout import stages

        live = stages.live_log(root, since)
        live.frame()
        fresh = _fresh_part(root, spec["lines"])

        def call():
            try:
                return live.frame()
            finally:
                fresh.unlink()
    elif op == "poll-old":

        def call():
            preds = predlog.read_predictions(root, since=since, include_shadow=True, include_errors=True)
            return predlog.join_feedback(preds, predlog.read_feedback(root))
    elif op in ("retrain-new", "retrain1d-new") and _logstore() is not None:
        labels = _labels()
        # retrain1d: the champion's training set was built a day ago (its data.labels_until)
        cut_off = datetime.fromtimestamp(spec["end_s"] - DAY_S, UTC) if op == "retrain1d-new" else None
        store = _logstore()
        feed = store.LabelFeed(root, cut_off) if "since" in _params(store.LabelFeed) else store.LabelFeed(root)

        def call():
            return curation.labelled_rows(*feed.poll(), labels).rows
    elif op in ("retrain-new", "retrain-old", "retrain1d-new", "retrain1d-old"):
        labels = _labels()

        def call():
            return curation.labelled_rows(predlog.read_predictions(root), predlog.read_feedback(root), labels).rows
    elif op == "compact":

        def call():
            compact_day(str(root), spec["day"], spec["end_s"])
    elif op == "write":
        from driftloop.adapters.predlog import PredictionLog
        from driftloop.core.types import Prediction

        texts = [json.loads(q) for q in _corpus()[0][:2000]]
        one = Prediction("card_arrival", 0.8734512)
        n = spec["n"]

        def call():
            with PredictionLog(root) as log:
                started = time.perf_counter()
                for i in range(n):
                    log.write("0123456789abcdef0123456789abcdef", texts[i % len(texts)], one, "3", 0.42, 12)
                return (time.perf_counter() - started) / n * 1e6

    if call is None:
        raise SystemExit(f"unknown op {op}")
    base_kb = _rss_kb("VmRSS")
    started = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - started
    result = {"seconds": seconds, "peak_mb": _rss_kb("VmHWM") / 1024, "base_mb": base_kb / 1024}
    if op == "write":
        result["us_per_line"] = out
    elif out is not None and hasattr(out, "__len__"):
        result["rows"] = len(out)
    return result


def _params(fn) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


def measure(spec: dict, repeat: int) -> dict:
    """The fastest of ``repeat`` fresh-process runs (and the highest peak)."""
    best: dict | None = None
    for _ in range(repeat):
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:80]}
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        if best is None or got["seconds"] < best["seconds"]:
            got["peak_mb"] = max(got["peak_mb"], best["peak_mb"] if best else 0)
            best = got
        else:
            best["peak_mb"] = max(best["peak_mb"], got["peak_mb"])
    return best or {"error": "no run"}


# -- the run -------------------------------------------------------------------------------------


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def prepare(base: Path, days: int, args, end_s: int) -> tuple[dict, Path, Path]:
    """The history of ``days`` days: its JSON Lines root and the root the new readers read."""
    home = base / f"{args.rate}-per-day-{days}d"  # a quick run and a full one keep their own data
    manifest_path = home / "manifest.json"
    want = {
        "format": FORMAT,
        "days": days,
        "rate": args.rate,
        "seed": args.seed,
        "end_hour": args.end_hour,
        "compacted": _logstore() is not None,
    }
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if {k: manifest.get(k) for k in want} == want:
            print(f"  {days} d: reusing {home} (made {manifest['made']})", flush=True)
            return manifest | {"reused": True}, home / "jsonl", Path(manifest["new_root"])
        shutil.rmtree(home)
    shutil.rmtree(home, ignore_errors=True)
    jsonl = home / "jsonl"
    made = synthesise(jsonl, days, args.rate, end_s, args.seed, args.workers)
    print(
        f"  {days} d: {made['rows']:,} predictions + {made['feedback_rows']:,} labels, "
        f"{made['bytes'] / 1e9:.2f} GB of JSON Lines in {made['seconds']:.1f} s "
        f"({made['rows'] / made['seconds'] / 1e6:.2f} M lines/s, {args.workers} processes)",
        flush=True,
    )
    manifest = want | made | {"end_s": end_s, "made": datetime.now(UTC).isoformat(timespec="seconds")}
    new_root = jsonl
    if _logstore() is not None:
        new_root = home / "compacted"
        _linked_copy(jsonl, new_root)
        started = time.perf_counter()
        closed = made["partitions"][:-1]
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            list(pool.map(compact_day, [str(new_root)] * len(closed), closed, [end_s] * len(closed)))
        manifest["compact_seconds"] = time.perf_counter() - started
        manifest["compacted_bytes"] = _dir_bytes(new_root)
        print(
            f"  {days} d: compacted {len(closed)} closed partitions in {manifest['compact_seconds']:.1f} s; "
            f"that root holds {manifest['compacted_bytes'] / 1e9:.2f} GB",
            flush=True,
        )
    manifest["new_root"] = str(new_root)
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest, jsonl, new_root


def _fmt(result: dict | None, what: str = "s") -> tuple[str, str]:
    if result is None:
        return "", ""
    if "skipped" in result:
        return result["skipped"], ""
    if "error" in result:
        return f"failed: {result['error']}", ""
    peak = f"{result['peak_mb']:.0f} ({result['base_mb']:.0f})"
    if what == "us":
        return f"{result['us_per_line']:.1f} us", peak
    return f"{result['seconds']:.2f} s", peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50k requests a day for 3 days")
    parser.add_argument("--rate", type=int, default=None, help="requests a day (default 1,000,000)")
    parser.add_argument("--days", type=int, default=None, help="days of history (default 30)")
    parser.add_argument("--old-days", type=int, default=3, help="the longest history the old reader reads")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "driftloop-scale")
    parser.add_argument("--keep", action="store_true", help="keep the data for the next run (and reuse it)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeat", type=int, default=1, help="fresh-process runs per figure (fastest kept)")
    parser.add_argument(
        "--end-hour",
        type=float,
        default=23.75,
        help="the history ends at this UTC hour of the newest day past it (default 23.75: the open, "
        "uncompacted partition then holds nearly a full day, the readers' worst case)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data-only", action="store_true", help="synthesise (and compact) the histories, keep them, measure nothing"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    args.rate = args.rate or (50_000 if args.quick else 1_000_000)
    args.days = args.days or (3 if args.quick else 30)
    histories = sorted({1, min(args.old_days, args.days), args.days})
    old_at = sorted({1, min(args.old_days, args.days)})

    base = args.dir
    base.mkdir(parents=True, exist_ok=True)
    kept = [base / f"{args.rate}-per-day-{h}d" / "manifest.json" for h in histories]
    existing = sum(json.loads(m.read_text()).get("bytes", 0) for m in kept if args.keep and m.exists())
    need = int(sum(h * args.rate for h in histories) * LINE_BYTES * (1 + LABELLED) * 1.6) - existing
    free = shutil.disk_usage(base).free
    if need > free:
        raise SystemExit(
            f"{base} has {free / 1e9:.1f} GB free; {sum(histories) * args.rate:,} synthesised lines and their "
            f"compacted copies need about {need / 1e9:.1f} GB. Pass --dir on a larger disk, or a smaller --rate/--days."
        )

    check_format()
    now = time.time()
    end_s = int(now // DAY_S) * DAY_S + round(args.end_hour * 3600)
    if end_s > now:
        end_s -= DAY_S
    store = _logstore() is not None
    print(
        f"driftloop log readers at scale: {args.rate:,} requests/day, histories {histories} days ending "
        f"{datetime.fromtimestamp(end_s, UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, data in {base}",
        flush=True,
    )
    if not store:
        print("compaction: n/a (no compaction yet): the new readers read JSON Lines")
    roots = {}
    synth_s = 0.0
    rows: list[tuple[str, str, dict, dict | None, str, str]] = []  # what, history, new, old, unit, target
    try:
        for days in histories:
            manifest, jsonl, new_root = prepare(base, days, args, end_s)
            synth_s += 0.0 if manifest.get("reused") else manifest["seconds"] + manifest.get("compact_seconds", 0.0)
            roots[days] = (manifest, jsonl, new_root)
        disk = _dir_bytes(base)
        print(f"synthesis (and compaction): {synth_s:.1f} s; {disk / 1e9:.2f} GB on disk under {base}\n", flush=True)
        if args.data_only:
            return

        slope_mb_per_row: float | None = None
        for days in histories:
            manifest, jsonl, new_root = roots[days]
            n_rows = manifest["rows"]
            hist = f"{days} d ({n_rows / 1e6:.2f} M)"
            old_note: dict | None = None
            if days not in old_at:
                old_note = {"skipped": f"not run (only at {' and '.join(map(str, old_at))} d)"}
            elif slope_mb_per_row is not None and slope_mb_per_row * n_rows > 0.6 * _mem_available_mb():
                old_note = {"skipped": f"skipped (would need ~{slope_mb_per_row * n_rows / 1024:.0f} GB)"}
            common = {"end_s": manifest["end_s"], "lines": max(1, round(args.rate * POLL_S / DAY_S))}
            reads = [
                (f"monitoring read, window {size:,}", "monitor", {"size": size}, TARGETS["monitor"]) for size in WINDOWS
            ]
            reads.append((f"rollout poll, stage began {POLL_SINCE_S // 60} min ago", "poll", {}, TARGETS["poll"]))
            if store:
                reads.append((f"rollout poll, next ({POLL_S:.0f} s of lines)", "poll-next", {}, TARGETS["poll"]))
            reads.append(("retrain labelled-row join, every label (no cut-off)", "retrain", {}, ""))
            reads.append(("retrain labelled-row join, labels of the last day", "retrain1d", {}, ""))
            for what, op, extra, target in reads:
                spec = common | extra
                if op == "poll-next":
                    new, old = measure({"op": op, "root": str(new_root)} | spec, args.repeat), None
                else:
                    new = measure({"op": f"{op}-new", "root": str(new_root)} | spec, args.repeat)
                    old = old_note or measure({"op": f"{op}-old", "root": str(jsonl)} | spec, args.repeat)
                if days == 1 and "peak_mb" in (old or {}):
                    slope = max(old["peak_mb"] - old["base_mb"], 1.0) / n_rows  # type: ignore[index]
                    slope_mb_per_row = max(slope_mb_per_row or 0.0, slope)
                rows.append((what, hist, new, old, "s", target))
                print(f"  {what}, {hist}: new {_fmt(new)[0]}, old {_fmt(old)[0]}", flush=True)

        manifest, jsonl, _ = roots[args.days]
        full_days = manifest["partitions"][1:-1] or manifest["partitions"][:1]
        day = full_days[len(full_days) // 2]
        if store:
            scratch = base / "compact-one-day"
            shutil.rmtree(scratch, ignore_errors=True)
            for kind in ("predictions", "feedback"):
                src = jsonl / kind / f"date={day}"
                if src.is_dir():
                    _linked_copy(src, scratch / kind / f"date={day}")
            compact = measure({"op": "compact", "root": str(scratch), "day": day, "end_s": manifest["end_s"]}, 1)
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            compact = {"skipped": "n/a (no compaction yet)"}
        day_rows = f"{day} ({args.rate / 1e6:.2f} M)" if len(manifest["partitions"]) > 2 else day
        rows.append(("compact one closed day", day_rows, compact, None, "s", TARGETS["compact"]))
        with tempfile.TemporaryDirectory(dir=base) as tmp:
            write = measure({"op": "write", "root": tmp, "n": 50_000}, args.repeat)
        rows.append(("prediction-log line write", "in process", write, None, "us", TARGETS["write"]))
    finally:
        if not (args.keep or args.data_only):
            # Only what this run made or reused: a --keep run's other data sets stay.
            for days in histories:
                shutil.rmtree(base / f"{args.rate}-per-day-{days}d", ignore_errors=True)
            with contextlib.suppress(OSError):
                base.rmdir()

    header = ("measurement", "history", "new", "peak MB", "old (full-history reader)", "peak MB", "target", "new meets")
    table = [
        (what, hist, *_fmt(new, unit), *_fmt(old, unit), target, _meets(new, target))
        for what, hist, new, old, unit, target in rows
    ]
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
    print(
        f"\n{args.rate:,} requests/day, {args.days} days; each figure one fresh process (fastest of {args.repeat}); "
        "peak MB: its VmHWM, imports included\n(in brackets: its resident set after the imports, before the call); "
        f"old: predlog.read_predictions + pandas selection as of {OLD_READER}, on the uncompacted JSON Lines"
    )
    for r in [header, tuple("-" * w for w in widths), *table]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    one = {r[0]: r[2] for r in rows if r[1].startswith("1 d")}
    full = {r[0]: r[2] for r in rows if r[1].startswith(f"{args.days} d")}
    ratios = []
    for size in WINDOWS:
        key = f"monitoring read, window {size:,}"
        a, b = one.get(key, {}), full.get(key, {})
        ratio = f"{b['seconds'] / a['seconds']:.2f}x" if "seconds" in a and "seconds" in b else "n/a"
        ratios.append(f"window {size:,} {ratio}")
    print(f"\nmonitoring run, {args.days}-day / 1-day time: {', '.join(ratios)} (target <= 1.5x)")


def _meets(result: dict, target: str) -> str:
    if not target or "seconds" not in result:
        return ""
    limits = {"s": result["seconds"], "us": result.get("us_per_line", 0.0), "GB": result["peak_mb"] / 1024}
    misses = []
    for term in target.split(","):
        limit, unit = term.replace("<=", "").split()
        if limits[unit] > float(limit):
            misses.append(unit)
    return (
        "yes"
        if not misses
        else "NO (" + ", ".join({"s": "time", "us": "time", "GB": "memory"}[m] for m in misses) + ")"
    )


if __name__ == "__main__":
    main()
