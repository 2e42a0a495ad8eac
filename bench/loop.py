"""Benchmark of the loop: stage times, drift confirmed → new champion serving, and how much of
that is orchestration and tracking overhead (the same steps as plain library calls).

    .venv/bin/python bench/loop.py [--serving]

Runs the demo scenario in a temporary state dir against a fresh local Prefect server, then
repeats the retrain's work as plain function calls on the same data. With ``--serving`` it also
runs bench/serving.py (throughput and latency of /predict vs ``mlflow models serve``).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _support import free_port

ROOT = Path(__file__).resolve().parents[1]


def plain_retrain(settings, parts) -> dict[str, float]:
    """The retrain's work without Prefect and without MLflow tracking: restore the champion's
    set, add labelled rows, validate, version, train, evaluate candidate and champion."""
    from driftloop.adapters import predlog
    from driftloop.core.types import ModelRef
    from driftloop.data import curation, dataset, validation
    from driftloop.data.dataset import LABEL, TEXT
    from driftloop.models import evaluation, families as modelling

    times: dict[str, float] = {}

    def timed(name, fn, *a, **k):
        t = time.perf_counter()
        out = fn(*a, **k)
        times[name] = time.perf_counter() - t
        return out

    prep = parts.prepared()  # the configured data set's keyed splits (the demo built them)
    eval_set = dataset.read_labelled(prep["eval"], TEXT, LABEL)
    labels = dataset.read_labels(prep["labels"])
    v1 = ModelRef(settings.registry.model_name, "1")
    md5 = parts.registry.version_tags(v1)["data.md5"]
    out = Path(tempfile.mkdtemp()) / "previous.csv"
    timed("restore previous set (DVC)", parts.datasets.restore, md5, out)
    previous = dataset.read_labelled(out, TEXT, LABEL)
    labelled = timed(
        "read logs + labelled rows",
        lambda: curation.labelled_rows(
            predlog.read_predictions(parts.log_root), predlog.read_feedback(parts.log_root), labels
        ),
    )
    merged = curation.merge_training_set(previous, labelled.rows, eval_set[TEXT])
    timed(
        "validate",
        lambda: validation.require_valid(
            validation.validate_training_set(
                merged, source="bench", known_labels=labels, eval_texts=list(eval_set[TEXT])
            )
        ),
    )
    timed("version (DVC add + push)", parts.datasets.commit, merged, "bench-training")

    def refresh_reference():
        recent = curation.select_window(
            predlog.read_predictions(parts.log_root), v1.version, settings.retrain.reference_size
        )
        reference = curation.production_reference(recent, merged[TEXT], eval_set[TEXT])
        return parts.datasets.commit(reference, "bench-reference")

    timed("reference refresh (logs + DVC)", refresh_reference)
    model = timed(
        "train",
        modelling.get_family(settings.model.family).fit,
        merged,
        dict(settings.model.params),
        seed=settings.data.seed,
    )
    report, rows = timed("evaluate candidate", evaluation.evaluate, model, eval_set)
    champion = timed("load champion", parts.registry.load, v1)
    timed("evaluate champion", evaluation.evaluate, champion, eval_set)
    timed("evaluation plots", evaluation.write_eval_artifacts, report, rows, Path(tempfile.mkdtemp()))
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serving", action="store_true", help="also run bench/serving.py")
    args = parser.parse_args()
    os.chdir(ROOT)
    state = Path(tempfile.mkdtemp(prefix="driftloop-bench-"))
    os.environ["DRIFTLOOP__PROJECT__STATE_DIR"] = str(state)
    os.environ["DRIFTLOOP__SERVING__PORT"] = str(free_port())
    os.environ["DRIFTLOOP__PREFECT__PORT"] = str(free_port())

    from rich.console import Console

    from driftloop.adapters import wiring
    from driftloop.config.settings import load_settings
    from driftloop.ops import prefect_server

    settings = load_settings()
    t = time.perf_counter()
    server = prefect_server.ensure_server(state / "prefect", settings.prefect.port)
    server_start = time.perf_counter() - t
    prefect_server.use_server(server, state / "prefect")
    try:
        from driftloop.entry.demo import run_demo

        console = Console(quiet=True)
        t = time.perf_counter()
        out = run_demo(settings, [], console, server)
        total = time.perf_counter() - t
        plain = plain_retrain(settings, wiring.build(settings))
    finally:
        prefect_server.stop_server(server)

    print(f"\n== driftloop loop benchmark ({os.cpu_count()} CPUs) ==")
    print(f"Prefect server start (once)                 {server_start:7.2f} s")
    for name, sec in out["stages"].items():
        print(f"{name:44s}{sec:7.2f} s")
    print(f"whole demo scenario                         {total:7.2f} s")
    swap = out["serving_at"] - out["confirmed_at"]
    flow = out["retrained_at"] - out["confirmed_at"]
    pickup = out["serving_at"] - out["retrained_at"]
    work = sum(plain.values())
    print("\n-- drift confirmed -> new champion answering requests --")
    print(f"total                                       {swap:7.2f} s   (target < 60 s)")
    print(f"  retraining flow (incl. training subflow)  {flow:7.2f} s")
    print(
        f"  serving notices the alias and swaps       {pickup:7.2f} s   "
        f"(poll every {settings.serving.reload_interval_s} s)"
    )
    print("-- the same work as plain function calls --")
    for name, sec in plain.items():
        print(f"  {name:42s}{sec:7.2f} s")
    print(f"  sum                                       {work:7.2f} s")
    overhead = max(flow - work, 0.0)
    print(
        f"orchestration + tracking overhead           {overhead:7.2f} s = {overhead / swap:.0%} of drift->champion "
        f"(target < 25%)"
    )
    acc = out["accuracy"].set_index("model_version")["accuracy"]
    print("\n-- accuracy on drifted traffic, from /feedback labels --")
    for version, value in acc.items():
        print(f"  v{version}: {value:.3f}")
    print(f"failed requests during the scenario: {out['failed']}")

    if args.serving:
        subprocess.run([sys.executable, str(ROOT / "bench" / "serving.py")], check=False)


if __name__ == "__main__":
    main()
